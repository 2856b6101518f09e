// A pod whose certificate fetch failed: it takes the certificate another pod of its identity gets as
// soon as that one does, brings its backed-off retry forward when connections wait for it, and lets
// only so many connections wait (beyond that they are closed at once: a CA outage cannot pin the
// node's fds). Real pods (topology), in-pod rules, ZDS over a unix seqpacket socket, TLS.
import type * as net from 'node:net';
import { connectTcp } from '@weir/netns';
import type { LocalCa } from '@weir/pki';
import type { TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CertificateSource, WorkloadCertificate } from '../src/identity.js';
import { CertWorld, type LogRecord } from './cert-support.js';
import { type EchoApp, tryConnect, waitFor, zdsAddPod } from './support.js';

const CONNECT_TIMEOUT_MS = 5000;
const MAX_WAITERS = 3;

/** The test CA, refusing the service accounts in `down` (istiod unreachable); asks counted per service account. */
class FlakyCa implements CertificateSource {
  readonly down = new Set(['sa-flaky', 'sa-wait', 'sa-cap']);
  readonly asks = new Map<string, number>();
  constructor(readonly ca: LocalCa) {}

  async issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    const sa = o.identity.slice(o.identity.lastIndexOf('/') + 1);
    this.asks.set(sa, (this.asks.get(sa) ?? 0) + 1);
    if (this.down.has(sa)) throw new Error('UNAVAILABLE: istiod CA is unreachable');
    return this.ca.issueWorkloadCertificate(o);
  }
}

describe('pod certificate retries after a failed fetch (real pods, ZDS, TLS)', () => {
  const world = new CertWorld({
    tag: 'r',
    // raw is not in the mesh: reaches a pod's 15008 as another node's ztunnel would.
    pods: { b: 'sa-b', f1: 'sa-flaky', f2: 'sa-flaky', w: 'sa-wait', c: 'sa-cap', raw: null },
    ca: (local) => new FlakyCa(local),
    proxy: {
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      // As far backed off as production gets after a few failures (15-30 s).
      certificateRetry: { initialMs: 20_000, maxMs: 30_000 },
      maxCertificateWaiters: MAX_WAITERS,
    },
  });
  let appB: EchoApp;
  let b: TopologyPod, f1: TopologyPod, f2: TopologyPod, w: TopologyPod, c: TopologyPod, raw: TopologyPod;
  const sockets: net.Socket[] = [];
  const asks = (sa: string): number => world.ca.asks.get(sa) ?? 0;
  const logged = (msg: string, pod: TopologyPod): LogRecord[] => world.log.filter((r) => r.msg === msg && r.uid === pod.uid);
  /** Adds the pod and waits for its first fetch to fail; returns the retry delay it logged. */
  const addFailing = async (pod: TopologyPod, sa: string): Promise<number> => {
    await zdsAddPod(world.zds, pod, sa);
    const failed = await waitFor(`${pod.name}'s first fetch failed`, async () => logged('failed to fetch certificate, retrying', pod)[0]);
    return Number(failed.retry_ms);
  };

  beforeAll(async () => {
    await world.start();
    ({ b, f1, f2, w, c, raw } = world.pods);
    appB = await world.echo(b, 8080);
    await zdsAddPod(world.zds, b, 'sa-b');
  }, 180_000);

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await world.close();
  }, 60_000);

  it('takes the certificate another pod of its identity gets, without waiting for its own retry', async () => {
    expect(await addFailing(f1, 'sa-flaky')).toBeGreaterThanOrEqual(10_000);
    world.ca.down.delete('sa-flaky');
    await zdsAddPod(world.zds, f2, 'sa-flaky');
    // Far sooner than f1's own retry (10-20 s from its failure), and from what IdentityManager holds.
    await waitFor('f1 certified', async () => logged('certificate ready', f1).length > 0, 5000);
    expect(asks('sa-flaky')).toBe(2);
    expect(await tryConnect(world.ns(f1), b.ip, 8080, 10_000)).toBe('ok');
    expect(appB.clients).toContain(f1.ip);
  });

  it('brings a backed-off retry forward when a connection waits for the certificate', async () => {
    expect(await addFailing(w, 'sa-wait')).toBeGreaterThanOrEqual(10_000);
    const t0 = Date.now();
    const conn = tryConnect(world.ns(w), b.ip, 8080, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    world.ca.down.delete('sa-wait');
    expect(await conn).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(CONNECT_TIMEOUT_MS);
    // One failed ask, then the retry the connection brought forward.
    expect(asks('sa-wait')).toBe(2);
    expect(appB.clients).toContain(w.ip);
  });

  it('closes connections beyond maxCertificateWaiters at once, logging that once per wait period', async () => {
    await addFailing(c, 'sa-cap');
    const closedAt: number[] = [];
    // Before the first connection: each waiter's connect timeout starts after this.
    const t0 = Date.now();
    for (let i = 0; i < MAX_WAITERS; i++) {
      const s = await connectTcp({ netns: world.ns(c), family: 4, host: b.ip, port: 8080, timeoutMs: 5000 });
      s.on('error', () => {});
      s.on('close', () => closedAt.push(Date.now()));
      sockets.push(s);
    }
    await waitFor('the waiting connections taken', async () => (world.m.pods().find((p) => p.uid === c.uid)?.proxy?.connections ?? 0) >= MAX_WAITERS);
    await new Promise((r) => setTimeout(r, 200));
    // Outbound and inbound alike, refused without waiting for the connect timeout.
    for (let i = 0; i < 3; i++) {
      const t = Date.now();
      expect(await tryConnect(world.ns(c), b.ip, 8080, 10_000)).not.toBe('ok');
      expect(Date.now() - t).toBeLessThan(CONNECT_TIMEOUT_MS / 2);
    }
    const inbound = await connectTcp({ netns: world.ns(raw), family: 4, host: c.ip, port: 15008, timeoutMs: 5000 });
    sockets.push(inbound);
    const t1 = Date.now();
    await new Promise<void>((resolve) => {
      inbound.on('error', () => {});
      inbound.on('close', () => resolve());
      inbound.resume();
    });
    expect(Date.now() - t1).toBeLessThan(CONNECT_TIMEOUT_MS / 2);
    expect(logged('connections closed: too many waiting for the certificate', c)).toHaveLength(1);
    expect(logged('connections closed: too many waiting for the certificate', c)[0]).toMatchObject({
      identity: 'spiffe://cluster.local/ns/ns1/sa/sa-cap',
      waiting: MAX_WAITERS,
      refused: 1,
    });
    // The ones that waited fail closed at the connect timeout; none reached b.
    await waitFor('the waiting connections closed', async () => closedAt.length === MAX_WAITERS, 10_000);
    for (const at of closedAt) expect(at - t0).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    expect(appB.clients).not.toContain(c.ip);
    // Room again: a new connection waits (and is served once the CA is back).
    const conn = tryConnect(world.ns(c), b.ip, 8080, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    world.ca.down.delete('sa-cap');
    expect(await conn).toBe('ok');
  });
});
