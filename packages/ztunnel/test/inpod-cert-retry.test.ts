// A pod whose certificate fetch failed: it takes the certificate another pod of its identity gets as
// soon as that one does, brings its backed-off retry forward when connections wait for it, and lets
// only so many connections wait (beyond that they are closed at once: a CA outage cannot pin the
// node's fds). Real pods (topology), in-pod rules, ZDS over a unix seqpacket socket, TLS.
import { mkdtemp, rm } from 'node:fs/promises';
import type * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsClient, ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityManager, type CertificateSource, type WorkloadCertificate } from '../src/identity.js';
import { InpodManager } from '../src/inpod-manager.js';
import { parseLocalConfig } from '../src/local-config.js';
import { createLogger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { EchoApp, capturePod, localConfigYaml, requireRoot, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

const CONNECT_TIMEOUT_MS = 3000;
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

interface LogRecord {
  msg: string;
  uid?: string;
  [k: string]: unknown;
}

describe('pod certificate retries after a failed fetch (real pods, ZDS, TLS)', () => {
  let topo: Topology;
  let dir: string;
  let ca: FlakyCa;
  let identities: IdentityManager;
  let m: InpodManager;
  let zds: ZdsServer;
  let client: ZdsClient;
  let appB: EchoApp;
  const log: LogRecord[] = [];
  let b: TopologyPod, f1: TopologyPod, f2: TopologyPod, w: TopologyPod, c: TopologyPod, raw: TopologyPod;
  const handles: Netns[] = [];
  const sockets: net.Socket[] = [];
  const ns = (pod: TopologyPod): Netns => {
    const h = openNetns(pod.netnsPath);
    handles.push(h);
    return h;
  };
  const asks = (sa: string): number => ca.asks.get(sa) ?? 0;
  const logged = (msg: string, pod: TopologyPod): LogRecord[] => log.filter((r) => r.msg === msg && r.uid === pod.uid);
  /** Adds the pod and waits for its first fetch to fail; returns the retry delay it logged. */
  const addFailing = async (pod: TopologyPod, sa: string): Promise<number> => {
    await zdsAddPod(zds, pod, sa);
    const failed = await waitFor(`${pod.name}'s first fetch failed`, async () => logged('failed to fetch certificate, retrying', pod)[0]);
    return Number(failed.retry_ms);
  };

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-retry-'));
    topo = await Topology.create({ name: uniqueName('r') });
    const n1 = await topo.addNode({ name: 'n1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns1' });
    f1 = await n1.addPod({ name: 'f1', namespace: 'ns1' });
    f2 = await n1.addPod({ name: 'f2', namespace: 'ns1' });
    w = await n1.addPod({ name: 'w', namespace: 'ns1' });
    c = await n1.addPod({ name: 'c', namespace: 'ns1' });
    // Not in the mesh: reaches a pod's 15008 as another node's ztunnel would.
    raw = await n1.addPod({ name: 'raw', namespace: 'ns1' });
    for (const p of [b, f1, f2, w, c]) await capturePod(p);
    ca = new FlakyCa(await LocalCa.create({ trustDomain: 'cluster.local' }));
    identities = new IdentityManager(ca);
    const store = new WorkloadStore({
      trustDomain: 'cluster.local',
      config: parseLocalConfig(
        localConfigYaml([
          { pod: b, serviceAccount: 'sa-b', node: 'n1' },
          { pod: f1, serviceAccount: 'sa-flaky', node: 'n1' },
          { pod: f2, serviceAccount: 'sa-flaky', node: 'n1' },
          { pod: w, serviceAccount: 'sa-wait', node: 'n1' },
          { pod: c, serviceAccount: 'sa-cap', node: 'n1' },
        ]),
      ),
    });
    const { logger } = createLogger({ level: 'debug', format: 'json', write: (l) => log.push(JSON.parse(l) as LogRecord) });
    m = new InpodManager({
      proxy: {
        store,
        identities,
        trustBundle: ca.ca.rootPem,
        trustDomain: 'cluster.local',
        mark: 1337,
        reusePort: true,
        origSrc: 'auto',
        ipv6: false,
        connectTimeoutMs: CONNECT_TIMEOUT_MS,
        // As far backed off as production gets after a few failures (15-30 s).
        certificateRetry: { initialMs: 20_000, maxMs: 30_000 },
        maxCertificateWaiters: MAX_WAITERS,
      },
      metrics: new ZtunnelMetrics(),
      logger,
      retryMs: 300,
    });
    zds = new ZdsServer({ path: join(dir, 'zds.sock'), ackTimeoutMs: 5000 });
    await zds.start();
    client = new ZdsClient({ path: zds.path, backoff: { initialMs: 10, maxMs: 100 } });
    client.start(m);
    await waitFor('ztunnel connected, snapshot acked', async () => zds.connected && m.pending().length === 0);
    appB = await EchoApp.start(b, 8080);
    await zdsAddPod(zds, b, 'sa-b');
  }, 180_000);

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await appB?.close();
    for (const h of handles) h.close();
    await client?.close();
    await zds?.close();
    await m?.close({ deadlineMs: 0 });
    identities?.close();
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('takes the certificate another pod of its identity gets, without waiting for its own retry', async () => {
    expect(await addFailing(f1, 'sa-flaky')).toBeGreaterThanOrEqual(10_000);
    ca.down.delete('sa-flaky');
    await zdsAddPod(zds, f2, 'sa-flaky');
    // Far sooner than f1's own retry (10-20 s from its failure), and from what IdentityManager holds.
    await waitFor('f1 certified', async () => logged('certificate ready', f1).length > 0, 5000);
    expect(asks('sa-flaky')).toBe(2);
    expect(await tryConnect(ns(f1), b.ip, 8080, 10_000)).toBe('ok');
    expect(appB.clients).toContain(f1.ip);
  });

  it('brings a backed-off retry forward when a connection waits for the certificate', async () => {
    expect(await addFailing(w, 'sa-wait')).toBeGreaterThanOrEqual(10_000);
    const t0 = Date.now();
    const conn = tryConnect(ns(w), b.ip, 8080, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    ca.down.delete('sa-wait');
    expect(await conn).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(CONNECT_TIMEOUT_MS);
    // One failed ask, then the retry the connection brought forward.
    expect(asks('sa-wait')).toBe(2);
    expect(appB.clients).toContain(w.ip);
  });

  it('closes connections beyond maxCertificateWaiters at once, logging that once per wait period', async () => {
    await addFailing(c, 'sa-cap');
    const closedAt: number[] = [];
    for (let i = 0; i < MAX_WAITERS; i++) {
      const s = await connectTcp({ netns: ns(c), family: 4, host: b.ip, port: 8080, timeoutMs: 5000 });
      s.on('error', () => {});
      s.on('close', () => closedAt.push(Date.now()));
      sockets.push(s);
    }
    const t0 = Date.now();
    await waitFor('the waiting connections taken', async () => (m.pods().find((p) => p.uid === c.uid)?.proxy?.connections ?? 0) >= MAX_WAITERS);
    await new Promise((r) => setTimeout(r, 200));
    // Outbound and inbound alike, refused without waiting for the connect timeout.
    for (let i = 0; i < 3; i++) {
      const t = Date.now();
      expect(await tryConnect(ns(c), b.ip, 8080, 10_000)).not.toBe('ok');
      expect(Date.now() - t).toBeLessThan(CONNECT_TIMEOUT_MS / 2);
    }
    const inbound = await connectTcp({ netns: ns(raw), family: 4, host: c.ip, port: 15008, timeoutMs: 5000 });
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
    for (const at of closedAt) expect(at - t0).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 1000);
    expect(appB.clients).not.toContain(c.ip);
    // Room again: a new connection waits (and is served once the CA is back).
    const conn = tryConnect(ns(c), b.ip, 8080, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    ca.down.delete('sa-cap');
    expect(await conn).toBe('ok');
  });
});
