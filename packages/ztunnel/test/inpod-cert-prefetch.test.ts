// Enrollment acks come before certificate prefetches: in a burst of ZDS Adds the pods' certificate
// fetches (key generation, signing or CSR + CA call) wait until no Add is being worked on (at most
// ~1 s), so they do not delay the next pods' acks, which the node agent's CNI ADDs wait for. A
// connection that needs a certificate before its prefetch ran starts the fetch itself; a proxy
// stopped before it ran fetches nothing.
// Real pods (topology), in-pod rules, ZDS over a unix seqpacket socket, TLS.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsClient, ZdsServer, type ZdsHandler } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityManager, type CertificateSource, type WorkloadCertificate } from '../src/identity.js';
import { InpodManager } from '../src/inpod-manager.js';
import { InpodProxy } from '../src/inpod-proxy.js';
import { parseLocalConfig } from '../src/local-config.js';
import { createLogger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { EchoApp, capturePod, localConfigYaml, podListeners, requireRoot, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

/** The test CA, noting every ask (by service account) in the shared event list, in order. */
class RecordingCa implements CertificateSource {
  constructor(
    readonly ca: LocalCa,
    readonly events: string[],
  ) {}

  asks(sa: string): number {
    return this.events.filter((e) => e === `ca:${sa}`).length;
  }

  issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    this.events.push(`ca:${o.identity.slice(o.identity.lastIndexOf('/') + 1)}`);
    return this.ca.issueWorkloadCertificate(o);
  }
}

describe('certificate prefetches wait for the ZDS acks (real pods, ZDS, TLS)', () => {
  let topo: Topology;
  let dir: string;
  let ca: RecordingCa;
  let identities: IdentityManager;
  let store: WorkloadStore;
  let metrics: ZtunnelMetrics;
  let m: InpodManager;
  let zds: ZdsServer;
  let client: ZdsClient;
  const events: string[] = [];
  /** When each Add's answer was given (the ack goes out in the microtasks right after). */
  const ackedAt = new Map<string, number>();
  let burst: TopologyPod[];
  let early: TopologyPod, stopped: TopologyPod;
  const apps: EchoApp[] = [];
  const proxies: InpodProxy[] = [];
  const handles: Netns[] = [];
  const ns = (pod: TopologyPod): Netns => {
    const h = openNetns(pod.netnsPath);
    handles.push(h);
    return h;
  };
  const certOf = (sa: string) => identities.certificates().find((c) => c.identity.endsWith(`/sa/${sa}`));
  const { logger } = createLogger({ write: () => {} });

  /** A pod proxy outside the manager whose prefetch runs only when the test says. */
  const heldProxy = (pod: TopologyPod, sa: string): { proxy: InpodProxy; held: (() => void)[] } => {
    const held: (() => void)[] = [];
    const proxy = new InpodProxy({
      uid: pod.uid,
      workloadInfo: { name: pod.name, namespace: pod.namespace, serviceAccount: sa },
      netns: ns(pod),
      store,
      identities,
      trustBundle: ca.ca.rootPem,
      trustDomain: 'cluster.local',
      mark: 1337,
      reusePort: true,
      origSrc: 'auto',
      ipv6: false,
      connectTimeoutMs: 5000,
      metrics,
      logger,
      prefetch: (fetch) => held.push(fetch),
    });
    proxies.push(proxy);
    return { proxy, held };
  };

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-pref-'));
    topo = await Topology.create({ name: uniqueName('f') });
    const n1 = await topo.addNode({ name: 'n1' });
    burst = [];
    for (let i = 1; i <= 5; i++) burst.push(await n1.addPod({ name: `p${i}`, namespace: 'ns1' }));
    early = await n1.addPod({ name: 'early', namespace: 'ns1' });
    stopped = await n1.addPod({ name: 'stopped', namespace: 'ns1' });
    for (const p of [...burst, early, stopped]) await capturePod(p);
    ca = new RecordingCa(await LocalCa.create({ trustDomain: 'cluster.local' }), events);
    identities = new IdentityManager(ca);
    store = new WorkloadStore({
      trustDomain: 'cluster.local',
      config: parseLocalConfig(
        localConfigYaml([
          ...burst.map((pod) => ({ pod, serviceAccount: `sa-${pod.name}`, node: 'n1' })),
          { pod: early, serviceAccount: 'sa-early', node: 'n1' },
          { pod: stopped, serviceAccount: 'sa-stopped', node: 'n1' },
        ]),
      ),
    });
    metrics = new ZtunnelMetrics();
    m = new InpodManager({
      proxy: { store, identities, trustBundle: ca.ca.rootPem, trustDomain: 'cluster.local', mark: 1337, reusePort: true, origSrc: 'auto', ipv6: false },
      metrics,
      logger,
      retryMs: 300,
    });
    // The manager, noting when it answered each Add.
    const handler: ZdsHandler = {
      onConnected: () => m.onConnected(),
      onDisconnected: (err) => m.onDisconnected(err),
      onAdd: (ev) =>
        m.onAdd(ev).then(() => {
          events.push(`ack:${ev.uid}`);
          ackedAt.set(ev.uid, Date.now());
        }),
      onKeep: (uid) => m.onKeep(uid),
      onDel: (uid) => m.onDel(uid),
      onSnapshotSent: () => m.onSnapshotSent(),
    };
    zds = new ZdsServer({ path: join(dir, 'zds.sock'), ackTimeoutMs: 5000 });
    await zds.start();
    client = new ZdsClient({ path: zds.path, backoff: { initialMs: 10, maxMs: 100 } });
    client.start(handler);
    await waitFor('ztunnel connected, snapshot acked', async () => zds.connected && m.pending().length === 0);
    apps.push(await EchoApp.start(early, 8080), await EchoApp.start(burst[1]!, 8080));
  }, 180_000);

  afterAll(async () => {
    for (const p of proxies) await p.stop({ deadlineMs: 0 });
    for (const app of apps) await app.close();
    for (const h of handles) h.close();
    await client?.close();
    await zds?.close();
    await m?.close({ deadlineMs: 0 });
    identities?.close();
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('pipelined Adds: every ack goes out before the first CA request, and the certificates follow within ~1 s', async () => {
    const added = Promise.all(burst.map((pod) => zdsAddPod(zds, pod, `sa-${pod.name}`)));
    await added;
    expect(m.pods().filter((p) => p.state === 'Up')).toHaveLength(burst.length);
    const firstAsk = events.findIndex((e) => e.startsWith('ca:'));
    const acks = burst.map((pod) => events.indexOf(`ack:${pod.uid}`));
    expect(acks.every((i) => i >= 0)).toBe(true);
    // Only after the last ack (or not yet at all).
    if (firstAsk >= 0) expect(firstAsk, events.join(' ')).toBeGreaterThan(Math.max(...acks));
    const lastAck = Math.max(...burst.map((pod) => ackedAt.get(pod.uid)!));
    await waitFor('every burst pod certified', async () => burst.every((pod) => certOf(`sa-${pod.name}`)?.state === 'Available'), 5000);
    // Within the bounded delay (1 s), plus signing five certificates on a loaded machine.
    expect(Date.now() - lastAck).toBeLessThan(2500);
    for (const pod of burst) expect(ca.asks(`sa-${pod.name}`), pod.name).toBe(1);
    // And they work: p1 → p2 over mTLS.
    expect(await tryConnect(ns(burst[0]!), burst[1]!.ip, 8080, 10_000)).toBe('ok');
  });

  it('a connection that comes before the prefetch ran starts the fetch at once and is served', async () => {
    const { proxy, held } = heldProxy(early, 'sa-early');
    await proxy.start();
    expect(held).toHaveLength(1);
    expect(ca.asks('sa-early')).toBe(0);
    // p1 → early: p1's tunnel reaches early's 15008, whose handshake needs early's certificate.
    const t0 = Date.now();
    expect(await tryConnect(ns(burst[0]!), early.ip, 8080, 10_000)).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(ca.asks('sa-early')).toBe(1);
    expect(apps[0]!.clients).toContain(burst[0]!.ip);
    // The scheduler runs the prefetch late: nothing more is asked.
    held[0]!();
    await new Promise((r) => setTimeout(r, 200));
    expect(ca.asks('sa-early')).toBe(1);
    expect(certOf('sa-early')?.state).toBe('Available');
  });

  it('a proxy stopped before its prefetch ran asks the CA for nothing and holds nothing', async () => {
    const { proxy, held } = heldProxy(stopped, 'sa-stopped');
    await proxy.start();
    expect(held).toHaveLength(1);
    await proxy.stop({ deadlineMs: 0 });
    held[0]!();
    await new Promise((r) => setTimeout(r, 300));
    expect(ca.asks('sa-stopped')).toBe(0);
    expect(certOf('sa-stopped')).toBeUndefined();
    const listeners = await podListeners(stopped);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `stopped:${port}`).toBeUndefined();
  });

  it('a Del pipelined behind the Adds: the removed pod is never asked for, the others are', async () => {
    const [p3, p4] = [burst[2]!, burst[3]!];
    await Promise.all([zds.removeWorkload(p3.uid), zds.removeWorkload(p4.uid)]);
    await waitFor('p3, p4 certificates released', async () => certOf('sa-p3') === undefined && certOf('sa-p4') === undefined);
    const before = events.length;
    // Added again and removed at once: the Del reaches ztunnel while (or right after) the Add is worked on.
    const added = zdsAddPod(zds, p3, 'sa-p3').then(
      () => 'acked',
      () => 'nacked',
    );
    const readded = zdsAddPod(zds, p4, 'sa-p4');
    const removed = zds.removeWorkload(p3.uid);
    await Promise.all([added, readded, removed]);
    await waitFor('p4 certified again', async () => certOf('sa-p4')?.state === 'Available', 5000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(events.slice(before).filter((e) => e.startsWith('ca:'))).toEqual(['ca:sa-p4']);
    expect(certOf('sa-p3')).toBeUndefined();
    expect(m.pods().find((p) => p.uid === p3.uid)).toBeUndefined();
    const listeners = await podListeners(p3);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `p3:${port}`).toBeUndefined();
  });
});
