import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HboneAuthorizeResult, HboneLogger } from '../src/index.js';
import { type HboneEcho, hboneEcho, roundTrip } from './helpers.js';
import { Peers } from './peers.js';

// What `authorize` answers, as a real client sees it: HboneClient's ERR_HBONE_STATUS, and python3-h2's
// :status (Debian's, under /usr/bin/python3).
const PYTHON = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('./peers/h2client.py', import.meta.url));
const UNKNOWN_PORT = 9;

const peers = new Peers();
let bed: HboneEcho;
const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];

function recorder(level: string): (obj: object, msg?: string) => void {
  return (obj, msg) => lines.push({ level, obj: obj as Record<string, unknown>, msg: msg ?? '' });
}
const logger: HboneLogger = { debug: () => {}, info: recorder('info'), warn: recorder('warn'), error: recorder('error'), child: () => logger };

/** The verdict named by the request's `x-verdict` header; the unknown port is refused with 503 as ztunnel does. */
function verdictOf(name: string | undefined, targetPort: number): HboneAuthorizeResult | Promise<HboneAuthorizeResult> {
  if (targetPort === UNKNOWN_PORT) return { allow: false, status: 503, reason: `unknown destination 127.0.0.1:${targetPort}` };
  switch (name) {
    case 'false':
      return false;
    case 'object-deny':
      return { allow: false, reason: 'deny-matched ns/deny-all' };
    case 'object-allow':
      return { allow: true };
    case 'async-403':
      return new Promise((r) => setTimeout(() => r({ allow: false, status: 403, reason: 'forbidden later' }), 20));
    case 'bad-status':
      return { allow: false, status: 200, reason: 'not a refusal status' };
    case 'throw':
      throw new Error('policy store broken');
    default:
      return true;
  }
}

beforeAll(async () => {
  bed = await hboneEcho({ logger, authorize: (_peer, target, headers) => verdictOf(headers.raw['x-verdict'] as string | undefined, target.port) });
});

afterAll(async () => {
  await peers.stopAll();
  await bed?.close();
});

function open(verdict: string | undefined, targetPort?: number): Promise<unknown> {
  return bed.open({ targetPort, ...(verdict === undefined ? {} : { headers: { 'x-verdict': verdict } }) });
}

describe('authorize verdicts as statuses', () => {
  it('answers 401 for false and { allow: false }, the refusal status for { allow: false, status }, 401 for a throw or a status outside 400-599', async () => {
    const before = bed.connects;
    await expect(open('false')).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
    await expect(open('object-deny')).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
    await expect(open(undefined, UNKNOWN_PORT)).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 503 });
    await expect(open('async-403')).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 403 });
    await expect(open('bad-status')).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
    await expect(open('throw')).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
    // Refused before the upstream: connect was never called.
    expect(bed.connects).toBe(before);
    // The session survives refusals, and { allow: true } admits.
    const t = (await open('object-allow')) as Duplex;
    expect((await roundTrip(t, Buffer.from('allowed'))).toString()).toBe('allowed');
    expect(bed.client.stats().sessions).toBe(1);
  });

  it('logs a denial as "denied by policy" and another status as "refused by authorize", with the reason', () => {
    const denied = lines.filter((l) => l.msg === 'connection failed: denied by policy');
    expect(denied.map((l) => l.obj.reason)).toEqual([undefined, 'deny-matched ns/deny-all', 'not a refusal status', undefined]);
    const refused = lines.filter((l) => l.msg === 'connection failed: refused by authorize');
    expect(refused.map((l) => [l.obj.status, l.obj.reason])).toEqual([
      [503, `unknown destination 127.0.0.1:${UNKNOWN_PORT}`],
      [403, 'forbidden later'],
    ]);
    expect(lines.some((l) => l.level === 'error' && l.msg.includes('status 200, not 400-599'))).toBe(true);
    expect(lines.filter((l) => l.msg === 'connection failed: upstream connect')).toEqual([]);
  });

  it('python3-h2 sees the same statuses: 503 for the refusal, 200 when admitted', async () => {
    const dir = await peers.tmp('py');
    const f = await peers.files(dir, { 'client.key': bed.pki.client.keyPem, 'client.crt': bed.pki.client.chainPem, 'root.crt': bed.pki.ca.rootPem });
    const py = (authority: string): Promise<{ out: string }> =>
      peers.run(PYTHON, [SCRIPT, '127.0.0.1', String(bed.port), authority, f['client.crt']!, f['client.key']!, f['root.crt']!, '10']);
    expect((await py(`127.0.0.1:${UNKNOWN_PORT}`)).out).toContain('"status": 503');
    expect((await py(`127.0.0.1:${bed.echo.port}`)).out).toContain('"status": 200');
  });
});
