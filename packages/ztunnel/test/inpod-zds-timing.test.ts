// What a ZDS ack means, when proxy starts are slow or overlap: an ack only ever says "this pod's
// traffic is proxied now", every record is answered (ack or nack) within the manager's record bound
// so the node agent can retry, and a replaced sandbox's proxy never outlives the replacement.
// Real netns (`ip netns`), real listeners, and for the agent side the real ZDS server and client
// over a unix seqpacket socket.
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { listenTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsClient, ZdsNackError, ZdsServer } from '@weir/redirect-protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityManager } from '../src/identity.js';
import { InpodManager } from '../src/inpod-manager.js';
import { createLogger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { requireRoot, uniqueName, waitFor } from './support.js';

const run = promisify(execFile);
const names: string[] = [];
let ca: LocalCa;
let dir: string;

/** A pod netns: lo, and with `ip` an interface holding that address (what the primary CNI plugin gives a sandbox). */
async function makeNetns(ip?: string): Promise<string> {
  const name = uniqueName('t');
  await run('ip', ['netns', 'add', name]);
  names.push(name);
  await run('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  if (ip !== undefined) {
    await run('ip', ['-n', name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
    await run('ip', ['-n', name, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    await run('ip', ['-n', name, 'link', 'set', 'eth0', 'up']);
  }
  return name;
}

const open = (name: string): Netns => openNetns(`/var/run/netns/${name}`);
const info = (sa = 'sa') => ({ name: 'p', namespace: 'ns', serviceAccount: sa });

/** Our TCP ports listening in the netns. Synchronous: nothing in this process can change them while `ss` runs. */
function listening(name: string): number[] {
  const out = execFileSync('ip', ['netns', 'exec', name, 'ss', '-Htln'], { encoding: 'utf8' });
  return [...out.matchAll(/:(\d+)\s/g)].map((x) => Number(x[1])).filter((p) => p >= 15000 && p < 16000).sort();
}

/** Certificates for identities containing `slow` are issued only after release(). */
function gated(): { identities: IdentityManager; release: () => void } {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const identities = new IdentityManager({
    issueWorkloadCertificate: async (o) => {
      if (o.identity.includes('slow')) await gate;
      return ca.issueWorkloadCertificate(o);
    },
  });
  return { identities, release };
}

function manager(identities: IdentityManager, o: { retryMs?: number; recordTimeoutMs?: number; sandboxCheckMs?: number } = {}): { m: InpodManager; lines: string[] } {
  const lines: string[] = [];
  const { logger } = createLogger({ write: (l) => lines.push(l) });
  const m = new InpodManager({
    // Certificate first: the gated CA is what makes a proxy start slow here.
    proxy: { store: new WorkloadStore(), identities, trustBundle: ca.rootPem, trustDomain: 'cluster.local', mark: 1337, reusePort: false, origSrc: 'auto', ipv6: false, awaitCertificate: true },
    metrics: new ZtunnelMetrics(),
    logger,
    retryMs: o.retryMs ?? 200,
    ...(o.recordTimeoutMs !== undefined ? { recordTimeoutMs: o.recordTimeoutMs } : {}),
    ...(o.sandboxCheckMs !== undefined ? { sandboxCheckMs: o.sandboxCheckMs } : {}),
  });
  return { m, lines };
}

/** 'pending' when p has not settled within ms, else how it settled. */
/**
 * Adds pod u1 in netns `first`, then (the agent's ack deadline passed and it reconnected; the new
 * connection's snapshot names the pod again) adds u1 again in netns `second`.
 */
function addAcrossReconnect(m: InpodManager, first: string, second: string = first): { first: Promise<void>; second: Promise<void> } {
  m.onConnected();
  const one = m.onAdd({ uid: 'u1', workloadInfo: info('slow'), netns: open(first) });
  one.catch(() => {});
  m.onDisconnected();
  m.onConnected();
  return { first: one, second: m.onAdd({ uid: 'u1', workloadInfo: info('slow'), netns: open(second) }) };
}

async function within(p: Promise<unknown>, ms: number): Promise<string> {
  const t = new Promise<string>((r) => setTimeout(() => r('pending'), ms));
  return Promise.race([p.then(() => 'acked', (err: Error) => `nacked: ${err.message}`), t]);
}

/** Something else holds the port in the pod (no SO_REUSEPORT), so a proxy start there fails. */
async function block(name: string, port: number): Promise<() => Promise<void>> {
  const server = net.createServer();
  const ns = open(name);
  try {
    await listenTcp({ netns: ns, host: '0.0.0.0', port }, server);
  } finally {
    ns.close();
  }
  return () => new Promise<void>((r) => server.close(() => r()));
}

beforeAll(() => {
  requireRoot();
  dir = mkdtempSync(join(tmpdir(), 'wz-zds-'));
  return LocalCa.create({ trustDomain: 'cluster.local' }).then((c) => void (ca = c));
});

afterAll(async () => {
  for (const n of names) await run('ip', ['netns', 'del', n]).catch(() => {});
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('InpodManager: an ack means the pod is proxied', () => {
  it('a second Add (after a reconnect) for a netns whose proxy is still starting waits for that start and acks only once it listens', async () => {
    const { identities, release } = gated();
    const { m } = manager(identities, { recordTimeoutMs: 20_000 });
    const ns = await makeNetns();
    try {
      const { first, second } = addAcrossReconnect(m, ns);
      expect(await within(second, 300)).toBe('pending');
      expect(listening(ns)).toEqual([]);
      release();
      await second;
      // Acked: the listeners are up at that moment.
      expect(listening(ns)).toEqual([15001, 15006, 15008]);
      await first;
      expect(m.pods().map((p) => [p.uid, p.state])).toEqual([['u1', 'Up']]);
    } finally {
      release();
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });

  it('a second Add for a netns whose proxy start then fails is nacked with that failure, not acked', async () => {
    const { identities, release } = gated();
    const { m } = manager(identities, { recordTimeoutMs: 20_000, retryMs: 60_000 });
    const ns = await makeNetns();
    const unblock = await block(ns, 15006);
    try {
      const { first, second } = addAcrossReconnect(m, ns);
      expect(await within(second, 300)).toBe('pending');
      release();
      expect(await within(second, 10_000)).toMatch(/^nacked: pod u1: cannot listen on 0\.0\.0\.0:15006/);
      expect(await within(first, 10_000)).toMatch(/^nacked: pod u1: cannot listen/);
      expect(m.pods()[0]).toMatchObject({ uid: 'u1', state: 'Pending' });
      // The agent's retry is the next attempt: once the port is free it is acked with the proxy up.
      await unblock();
      await m.onAdd({ uid: 'u1', workloadInfo: info('slow'), netns: open(ns) });
      expect(listening(ns)).toEqual([15001, 15006, 15008]);
    } finally {
      release();
      await unblock().catch(() => {});
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });
});

describe('ZDS records are answered within the record bound', () => {
  it('an Add whose proxy cannot start in time is nacked (connection kept), the records behind it are answered, and the retry is acked once it is up', async () => {
    const { identities, release } = gated();
    const { m } = manager(identities, { recordTimeoutMs: 800 });
    const [nsSlow, nsFast] = [await makeNetns(), await makeNetns()];
    const server = new ZdsServer({ path: join(dir, `a${uniqueName('s')}.sock`), ackTimeoutMs: 3000 });
    const disconnects: unknown[] = [];
    server.on('disconnect', (_c, err) => disconnects.push(err));
    await server.start();
    const client = new ZdsClient({ path: server.path, backoff: { initialMs: 10, maxMs: 100 } });
    client.start(m);
    const slow = open(nsSlow);
    const fast = open(nsFast);
    try {
      await waitFor('ztunnel connected', async () => server.connected);
      await waitFor('snapshot done', async () => m.pending().length === 0);
      const t0 = Date.now();
      // Pipelined: the fast pod's Add is queued in ztunnel behind the slow one.
      const a = server.addWorkload('u-slow', info('slow'), slow);
      const b = server.addWorkload('u-fast', info('fast'), fast);
      const ra = await a.then(() => 'acked', (e: Error) => e);
      expect(ra).toBeInstanceOf(ZdsNackError);
      expect((ra as Error).message).toMatch(/pod u-slow: proxy not up within 800 ms/);
      await b;
      expect(Date.now() - t0).toBeLessThan(2500);
      expect(listening(nsFast)).toEqual([15001, 15006, 15008]);
      expect(listening(nsSlow)).toEqual([]);
      expect(m.pending()).toEqual(['pod u-slow']);
      // The start goes on; the agent's retry is acked once the proxy listens.
      release();
      await waitFor('slow pod up', async () => m.pods().find((p) => p.uid === 'u-slow')?.state === 'Up', 10_000);
      await server.addWorkload('u-slow', info('slow'), slow);
      expect(listening(nsSlow)).toEqual([15001, 15006, 15008]);
      expect(disconnects).toEqual([]);
    } finally {
      release();
      slow.close();
      fast.close();
      await client.close();
      await server.close();
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });
});

describe('a replaced sandbox', () => {
  it('the old sandbox proxy is gone even when the new netns cannot be served, and the new one comes up on retry', async () => {
    const { identities } = gated();
    const { m } = manager(identities, { retryMs: 200 });
    const [oldNs, newNs] = [await makeNetns(), await makeNetns()];
    const unblock = await block(newNs, 15008);
    try {
      m.onConnected();
      await m.onAdd({ uid: 'u1', workloadInfo: info(), netns: open(oldNs) });
      expect(listening(oldNs)).toEqual([15001, 15006, 15008]);
      await expect(m.onAdd({ uid: 'u1', workloadInfo: info(), netns: open(newNs) })).rejects.toThrow(/cannot listen on 0\.0\.0\.0:15008/);
      expect(listening(oldNs)).toEqual([]);
      await unblock();
      await waitFor('new sandbox proxied', async () => m.pods()[0]?.state === 'Up', 5000);
      expect(listening(newNs)).toEqual([15001, 15006, 15008]);
      expect(m.pods()).toHaveLength(1);
    } finally {
      await unblock().catch(() => {});
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });

  it('an Add for the new sandbox while the old one is still starting (on the previous connection) keeps only the new one, and closes the old netns only after its start gave up', async () => {
    const { identities, release } = gated();
    const { m } = manager(identities, { recordTimeoutMs: 20_000 });
    const [oldNs, newNs] = [await makeNetns(), await makeNetns()];
    const fdsBefore = readdirSync('/proc/self/fd').length;
    try {
      const { first: old, second: repl } = addAcrossReconnect(m, oldNs, newNs);
      release();
      await repl;
      expect(await within(old, 5000)).toMatch(/^nacked: /);
      expect(listening(newNs)).toEqual([15001, 15006, 15008]);
      expect(listening(oldNs)).toEqual([]);
      expect(m.pods().map((p) => [p.uid, p.state])).toEqual([['u1', 'Up']]);
      await m.close({ deadlineMs: 0 });
      await new Promise((r) => setTimeout(r, 100));
      expect(readdirSync('/proc/self/fd').length).toBe(fdsBefore);
    } finally {
      release();
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });

  it('a sandbox torn down (its pod address gone with the CNI DEL) whose replacement never reaches ztunnel: the stale proxy is drained, live pods are kept, a replay of the dead netns is nacked, the new sandbox is served', async () => {
    const { identities } = gated();
    const { m, lines } = manager(identities, { sandboxCheckMs: 150 });
    const [oldNs, liveNs, loOnlyNs, newNs] = [await makeNetns('10.254.9.2'), await makeNetns('10.254.9.3'), await makeNetns(), await makeNetns('10.254.9.4')];
    try {
      m.onConnected();
      await m.onAdd({ uid: 'u1', workloadInfo: info(), netns: open(oldNs) });
      await m.onAdd({ uid: 'u2', workloadInfo: info(), netns: open(liveNs) });
      await m.onAdd({ uid: 'u3', workloadInfo: info(), netns: open(loOnlyNs) });
      await m.onSnapshotSent();
      // The runtime replaces u1's sandbox: CNI DEL removes the old one's interface; the agent never
      // manages to capture the new one, so no Add for it (nor a Del) ever comes.
      await run('ip', ['-n', oldNs, 'link', 'del', 'eth0']);
      await waitFor('stale proxy drained', async () => listening(oldNs).length === 0 && !m.pods().some((p) => p.uid === 'u1'), 5000);
      expect(lines.join('')).toMatch(/pod netns has no pod address left \(sandbox torn down\), draining proxy/);
      // Several more checks: the live pods stay (one that never had a pod address included).
      await new Promise((r) => setTimeout(r, 600));
      expect(m.pods().map((p) => [p.uid, p.state]).sort()).toEqual([['u2', 'Up'], ['u3', 'Up']]);
      expect(listening(liveNs)).toEqual([15001, 15006, 15008]);
      expect(listening(loOnlyNs)).toEqual([15001, 15006, 15008]);
      expect(m.pending()).toEqual([]);
      // An agent replaying the dead netns (a snapshot after a reconnect) is told so.
      await expect(m.onAdd({ uid: 'u1', workloadInfo: info(), netns: open(oldNs) })).rejects.toThrow(/uid=u1: its netns .* is a torn-down sandbox/);
      expect(listening(oldNs)).toEqual([]);
      // The new sandbox, once captured, is served.
      await m.onAdd({ uid: 'u1', workloadInfo: info(), netns: open(newNs) });
      expect(listening(newNs)).toEqual([15001, 15006, 15008]);
    } finally {
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });
});

describe('shutdown', () => {
  it('after closeListeners() (SIGTERM) a proxy start still in flight binds nothing and no retry runs; a later Add is nacked', async () => {
    const { identities, release } = gated();
    const { m } = manager(identities, { retryMs: 100, recordTimeoutMs: 20_000 });
    const [slowNs, upNs] = [await makeNetns(), await makeNetns()];
    try {
      m.onConnected();
      await m.onAdd({ uid: 'u-up', workloadInfo: info(), netns: open(upNs) });
      const starting = m.onAdd({ uid: 'u-slow', workloadInfo: info('slow'), netns: open(slowNs) });
      starting.catch(() => {});
      m.closeListeners();
      expect(listening(upNs)).toEqual([]);
      release();
      expect(await within(starting, 5000)).toMatch(/^nacked: /);
      await new Promise((r) => setTimeout(r, 400));
      expect(listening(slowNs)).toEqual([]);
      await expect(m.onAdd({ uid: 'u-new', workloadInfo: info(), netns: open(await makeNetns()) })).rejects.toThrow(/shutting down/);
    } finally {
      release();
      await m.close({ deadlineMs: 0 });
      identities.close();
    }
  });
});
