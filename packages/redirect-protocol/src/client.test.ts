import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ZdsClient } from './client.js';
import type { ZdsLogger } from './logger.js';
import { ZdsServer } from './server.js';
import { until } from './test-support/peers.js';

/** Collects the times of the client's failed connect attempts from its debug log. */
function attemptLogger(times: number[]): ZdsLogger {
  const log: ZdsLogger = {
    debug: (_o, msg) => {
      if (msg === 'zds connect failed, retrying') times.push(performance.now());
    },
    info: () => {},
    warn: () => {},
    error: () => {},
    child: () => log,
  };
  return log;
}

const handler = {
  onAdd: async () => {},
  onKeep: async () => {},
  onDel: async () => {},
  onSnapshotSent: async () => {},
};

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'zds-client-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('ZdsClient', () => {
  it('retries with a doubling delay capped at maxMs, then connects once the agent listens', async () => {
    const path = join(dir, 'ztunnel.sock');
    const times: number[] = [];
    // The delays the client arms, exactly: a wall-clock upper bound on each gap cannot tell a
    // capped 160 ms from an uncapped 320 ms once a loaded machine runs timers 200 ms late.
    const armed: number[] = [];
    const realSetTimeout = globalThis.setTimeout;
    vi.spyOn(globalThis, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => {
      if (new Error().stack?.includes('/client.ts')) armed.push(ms ?? 0);
      return realSetTimeout(fn, ms);
    }) as typeof setTimeout);
    const client = new ZdsClient({ path, logger: attemptLogger(times), backoff: { initialMs: 20, maxMs: 160 } });
    let connected = 0;
    client.start({ ...handler, onConnected: () => connected++ });
    try {
      await until(() => times.length >= 7, 'seven failed attempts', 10_000);
      expect(armed.slice(0, 6)).toEqual([20, 40, 80, 160, 160, 160]);
      // ...and they are waited out between attempts (timers only fire late, never early).
      const gaps = times.slice(1, 7).map((t, i) => t - times[i]!);
      [20, 40, 80, 160, 160, 160].forEach((want, i) => expect(gaps[i]).toBeGreaterThanOrEqual(want - 2));
      expect(client.connected).toBe(false);
      const server = new ZdsServer({ path });
      await server.start();
      try {
        await until(() => connected === 1 && server.connected, 'the client to connect', 10_000);
        expect(client.connected).toBe(true);
      } finally {
        await server.close();
      }
    } finally {
      vi.restoreAllMocks();
      await client.close();
    }
  });

  it('close() ends a pending backoff at once, and start() twice is refused', async () => {
    const client = new ZdsClient({ path: join(dir, 'none.sock'), backoff: { initialMs: 60_000, maxMs: 60_000 } });
    client.start(handler);
    expect(() => client.start(handler)).toThrow(/already started/);
    await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    await client.close();
    // Far below the 60 s wait, so scheduling delay under load cannot blur the two.
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  it('defaults to 10 ms doubling to 15 s', async () => {
    const times: number[] = [];
    const client = new ZdsClient({ path: join(dir, 'none.sock'), logger: attemptLogger(times) });
    client.start(handler);
    try {
      await until(() => times.length >= 4, 'four failed attempts');
      const gaps = times.slice(1, 4).map((t, i) => t - times[i]!);
      [10, 20, 40].forEach((want, i) => expect(gaps[i]).toBeGreaterThanOrEqual(want - 2));
    } finally {
      await client.close();
    }
  });
});
