import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HboneLogger } from '../src/index.js';
import { type HboneEcho, dial, hboneEcho, roundTrip } from './helpers.js';

// Hooks written in plain JS (or typed `any`) can answer shapes the types forbid: a missing `return`
// in an async branch, `{ allow: 'yes' }`, `{ allow: decision }`, a connect that resolves to nothing.
// Each must be refused (fail closed), answered, and never become an unhandled rejection (on Node 20
// that exits the process).

const THROWING_TARGET_PORT = 7;
const EMPTY_UPSTREAM_PORT = 11;

/** Verdicts by the request's `x-verdict` header, as untyped hooks might answer them. */
const verdicts: Record<string, () => unknown> = {
  'async-undefined': async () => undefined,
  'async-null': async () => null,
  'sync-undefined': () => undefined,
  'sync-null': () => null,
  'allow-yes': () => ({ allow: 'yes' }),
  'allow-1': () => ({ allow: 1 }),
  'async-allow-1': async () => ({ allow: 1 }),
  'allow-decision': () => ({ allow: { allow: true } }),
  'status-without-allow-false': () => ({ allow: 1, status: 503 }),
  string: () => 'true',
  number: () => 1,
  'async-true': async () => true,
  'object-allow': () => ({ allow: true }),
};

let bed: HboneEcho;
const unhandled: unknown[] = [];
const onUnhandled = (r: unknown): void => void unhandled.push(r);
const errors: string[] = [];
const noop = (): void => {};
const logger: HboneLogger = { debug: noop, info: noop, warn: noop, error: (_obj, msg) => void errors.push(msg ?? ''), child: () => logger };

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  bed = await hboneEcho({
    logger,
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the point is shapes the types forbid
    authorize: ((_peer: unknown, _target: unknown, headers: { raw: Record<string, unknown> }) => verdicts[headers.raw['x-verdict'] as string]!()) as any,
    validateTarget: (t) => {
      if (t.port === THROWING_TARGET_PORT) throw new Error('target table broken');
      return true;
    },
    connect: (t) => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JS connect with a missing return
      if (t.port === EMPTY_UPSTREAM_PORT) return Promise.resolve(undefined as any);
      return dial(t.port, t.host);
    },
  });
});

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await bed?.close();
});

function open(verdict: string, targetPort?: number): Promise<unknown> {
  return bed.open({ targetPort, headers: { 'x-verdict': verdict }, signal: AbortSignal.timeout(5000) });
}

/** Lets a rejection that nobody handles reach the process's 'unhandledRejection'. */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

describe('authorize answers the types forbid', () => {
  it.each(['async-undefined', 'async-null', 'sync-undefined', 'sync-null'])('%s is a 401, not an unhandled rejection', async (v) => {
    const before = bed.connects;
    await expect(open(v)).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
    await settle();
    expect(unhandled).toEqual([]);
    expect(bed.connects).toBe(before);
  });

  it.each(['allow-yes', 'allow-1', 'async-allow-1', 'allow-decision', 'status-without-allow-false', 'string', 'number'])(
    '%s is refused with 401 (only allow === true admits)',
    async (v) => {
      const before = bed.connects;
      await expect(open(v)).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
      await settle();
      expect(unhandled).toEqual([]);
      expect(bed.connects).toBe(before);
    },
  );

  it('logs an unrecognised verdict as an error naming what it was', () => {
    expect(errors).toContain('authorize hook answered undefined, not true, false or { allow: true | false }; denying (401)');
    expect(errors).toContain('authorize hook answered { allow: "yes" }, not true, false or { allow: true | false }; denying (401)');
    expect(errors).toContain('authorize hook answered { allow: an object }, not true, false or { allow: true | false }; denying (401)');
  });

  it('true, async true and { allow: true } still admit, on the same session', async () => {
    for (const v of ['async-true', 'object-allow']) {
      const t = (await open(v)) as Duplex;
      expect((await roundTrip(t, Buffer.from(v))).toString()).toBe(v);
    }
    expect(bed.client.stats().sessions).toBe(1);
  });
});

describe('other hooks that throw or answer nothing', () => {
  it('a throwing validateTarget is a 400, not an unhandled rejection', async () => {
    const before = bed.connects;
    await expect(open('object-allow', THROWING_TARGET_PORT)).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 400 });
    await settle();
    expect(unhandled).toEqual([]);
    expect(bed.connects).toBe(before);
    expect(errors.some((m) => m.includes('validateTarget hook threw'))).toBe(true);
  });

  it('a connect resolving to undefined is a 500, not an unhandled rejection', async () => {
    await expect(open('object-allow', EMPTY_UPSTREAM_PORT)).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 500 });
    await settle();
    expect(unhandled).toEqual([]);
    expect(errors.some((m) => m.includes('admitting the stream threw'))).toBe(true);
    // Nothing half-started stays behind: no tunnel, and the session carries on.
    expect(bed.server.stats()).toEqual({ sessions: 1, tunnels: 0 });
  });
});
