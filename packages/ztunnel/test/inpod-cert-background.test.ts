// A pod's listeners come first, its certificate after: ZDS Adds are acked once the proxy listens, with
// the certificate fetched in the background (as ztunnel prefetches it). mTLS connections that come
// before it wait for it and are served once it arrives, or fail closed when the CA keeps failing.
// Real pods (topology), in-pod rules, ZDS over a unix seqpacket socket, TLS.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
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
import { EchoApp, capturePod, localConfigYaml, podListeners, requireRoot, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

/** Bounds a connection's wait for its pod's first certificate (the proxies' connect timeout). */
const CONNECT_TIMEOUT_MS = 3000;

/**
 * The test CA, except that `sa-slow` is issued only once open() is called (istiod slow to sign) and
 * `sa-fail` never (istiod refusing or unreachable); every ask is counted per service account.
 */
class ScriptedCa implements CertificateSource {
  readonly asks = new Map<string, number>();
  open!: () => void;
  readonly #gate = new Promise<void>((r) => (this.open = r));
  constructor(readonly ca: LocalCa) {}

  async issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    const sa = o.identity.slice(o.identity.lastIndexOf('/') + 1);
    this.asks.set(sa, (this.asks.get(sa) ?? 0) + 1);
    if (sa === 'sa-fail') throw new Error('UNAVAILABLE: istiod CA is unreachable');
    if (sa === 'sa-slow') await this.#gate;
    return this.ca.issueWorkloadCertificate(o);
  }
}

interface LogRecord {
  msg: string;
  uid?: string;
  error?: string;
  direction?: string;
  'src.workload'?: string;
  'dst.workload'?: string;
  [k: string]: unknown;
}

describe('pod certificates fetched in the background (real pods, ZDS, TLS)', () => {
  let topo: Topology;
  let dir: string;
  let ca: ScriptedCa;
  let identities: IdentityManager;
  let m: InpodManager;
  let zds: ZdsServer;
  let client: ZdsClient;
  const log: LogRecord[] = [];
  let a: TopologyPod, b: TopologyPod, slow: TopologyPod, fail: TopologyPod, raw: TopologyPod;
  const apps: EchoApp[] = [];
  let appB: EchoApp, appSlow: EchoApp, appFail: EchoApp;
  const handles: Netns[] = [];
  const ns = (pod: TopologyPod): Netns => {
    const h = openNetns(pod.netnsPath);
    handles.push(h);
    return h;
  };
  const state = (pod: TopologyPod) => m.pods().find((p) => p.uid === pod.uid);
  const certOf = (sa: string) => identities.certificates().find((c) => c.identity.endsWith(`/sa/${sa}`));

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-cert-'));
    topo = await Topology.create({ name: uniqueName('c') });
    const n1 = await topo.addNode({ name: 'n1' });
    a = await n1.addPod({ name: 'a', namespace: 'ns1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns1' });
    slow = await n1.addPod({ name: 'slow', namespace: 'ns1' });
    fail = await n1.addPod({ name: 'fail', namespace: 'ns1' });
    // Not in the mesh: a raw TLS client from here reaches a pod's 15008 as another node's ztunnel would.
    raw = await n1.addPod({ name: 'raw', namespace: 'ns1' });
    for (const p of [a, b, slow, fail]) await capturePod(p);
    ca = new ScriptedCa(await LocalCa.create({ trustDomain: 'cluster.local' }));
    identities = new IdentityManager(ca);
    const store = new WorkloadStore({
      trustDomain: 'cluster.local',
      config: parseLocalConfig(
        localConfigYaml([
          { pod: a, serviceAccount: 'sa-a', node: 'n1' },
          { pod: b, serviceAccount: 'sa-b', node: 'n1' },
          { pod: slow, serviceAccount: 'sa-slow', node: 'n1' },
          { pod: fail, serviceAccount: 'sa-fail', node: 'n1' },
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
        certificateRetry: { initialMs: 100, maxMs: 400 },
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
    for (const [pod, port] of [
      [b, 8080],
      [slow, 8080],
      [fail, 8080],
    ] as const) {
      apps.push(await EchoApp.start(pod, port));
    }
    [appB, appSlow, appFail] = apps as [EchoApp, EchoApp, EchoApp];
  }, 180_000);

  afterAll(async () => {
    ca?.open();
    for (const app of apps) await app.close();
    for (const h of handles) h.close();
    await client?.close();
    await zds?.close();
    await m?.close({ deadlineMs: 0 });
    identities?.close();
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('acks every Add once its listeners are up, also while the CA is slow or failing', async () => {
    const acked: Record<string, number> = {};
    await Promise.all(
      (
        [
          [a, 'sa-a'],
          [b, 'sa-b'],
          [slow, 'sa-slow'],
          [fail, 'sa-fail'],
        ] as const
      ).map(async ([pod, sa]) => {
        const t0 = Date.now();
        await zdsAddPod(zds, pod, sa);
        acked[pod.name] = Date.now() - t0;
        // Acked: the pod's traffic is captured by listeners at this moment.
        const listeners = await podListeners(pod);
        for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `${pod.name}:${port}`).toContain(process.pid);
      }),
    );
    // Not waiting for a CA that does not answer (the node agent's ack deadline is 5 s).
    expect(acked.slow).toBeLessThan(2000);
    expect(acked.fail).toBeLessThan(2000);
    expect(m.pods().map((p) => [p.uid, p.state]).sort()).toEqual([a, b, slow, fail].map((p) => [p.uid, 'Up']).sort());
    expect(m.pending()).toEqual([]);
    await waitFor('the healthy pods certified', async () => certOf('sa-a')?.state === 'Available' && certOf('sa-b')?.state === 'Available');
    expect(certOf('sa-slow')?.state).toBe('Initializing');
    // The failing fetch is retried in the background, with a growing delay, and logged.
    await waitFor('sa-fail asked three times', async () => (ca.asks.get('sa-fail') ?? 0) >= 3);
    const retries = log.filter((r) => r.msg === 'failed to fetch certificate, retrying' && r.uid === fail.uid);
    expect(retries.length).toBeGreaterThanOrEqual(2);
    expect(retries[0]).toMatchObject({ identity: 'spiffe://cluster.local/ns/ns1/sa/sa-fail' });
    expect(Number(retries[1]!.retry_ms)).toBeGreaterThanOrEqual(100);
  });

  it('a connection made before the certificate arrives waits for it and is served once it does, inbound and outbound', async () => {
    expect(certOf('sa-slow')?.state).toBe('Initializing');
    const t0 = Date.now();
    // a → slow: a's tunnel reaches slow's 15008, whose handshake waits for slow's certificate.
    const inbound = tryConnect(ns(a), slow.ip, 8080, 10_000);
    // slow → b: slow's outbound tunnel needs slow's certificate to dial.
    const outbound = tryConnect(ns(slow), b.ip, 8080, 10_000);
    await waitFor('the inbound tunnel at slow', async () => log.some((r) => r.msg === 'inbound HBONE connection' && r.uid === slow.uid));
    await new Promise((r) => setTimeout(r, 500));
    expect(appSlow.clients).toEqual([]);
    expect(appB.clients).not.toContain(slow.ip);
    ca.open();
    expect(await inbound).toBe('ok');
    expect(await outbound).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(CONNECT_TIMEOUT_MS);
    expect(appSlow.clients).toEqual([a.ip]);
    expect(appB.clients).toContain(slow.ip);
    expect(certOf('sa-slow')?.state).toBe('Available');
    // Over mTLS: slow's side knows the caller by its certificate.
    const served = await waitFor('the inbound connection logged at slow', async () =>
      log.find((r) => r.msg === 'connection complete' && r.direction === 'inbound' && r['dst.workload'] === 'slow'),
    );
    expect(served['src.identity']).toBe('spiffe://cluster.local/ns/ns1/sa/sa-a');
  });

  it('fails closed when the CA keeps failing: no tunnel either way, no plaintext, nothing around the proxy', async () => {
    expect(certOf('sa-fail')?.state).not.toBe('Available');
    // Outbound: the tunnel waits for the certificate up to the connect timeout, then the connection is closed.
    const t0 = Date.now();
    expect(await tryConnect(ns(fail), b.ip, 8080, 10_000)).not.toBe('ok');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    expect(appB.clients).not.toContain(fail.ip);
    const failed = await waitFor('the outbound failure logged', async () =>
      log.find((r) => r.msg === 'connection failed' && r.direction === 'outbound' && r['src.workload'] === 'fail'),
    );
    expect(failed.error).toMatch(/no certificate for spiffe:\/\/cluster\.local\/ns\/ns1\/sa\/sa-fail within 3000 ms \(.*UNAVAILABLE: istiod CA is unreachable\)/);

    // Inbound HBONE, from a TLS client that would be accepted: no handshake, the connection is closed.
    const peer = await ca.ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/ns1/sa/sa-a' });
    const socket = await connectTcp({ netns: ns(raw), family: 4, host: fail.ip, port: 15008, timeoutMs: 2000 });
    const t1 = Date.now();
    const outcome = await new Promise<string>((resolve) => {
      const t = tls.connect({ socket, key: peer.keyPem, cert: peer.chainPem, ca: ca.ca.rootPem, ALPNProtocols: ['h2'], servername: 'fail', checkServerIdentity: () => undefined });
      t.once('secureConnect', () => resolve('handshake completed'));
      t.once('error', (err) => resolve(`error: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
      t.once('close', () => resolve('closed'));
    });
    expect(outcome).not.toBe('handshake completed');
    expect(Date.now() - t1).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    await waitFor('the inbound refusal logged', async () => log.some((r) => r.msg === 'inbound HBONE connection closed: no certificate for this pod' && r.uid === fail.uid));
    expect(appFail.clients).toEqual([]);
    // The pod stays enrolled, its listeners up: its traffic never goes around the proxy.
    expect(state(fail)?.state).toBe('Up');
  });

  it('a Del while the certificate is still failing stops the retries and holds nothing for the pod', async () => {
    await zds.removeWorkload(fail.uid);
    expect(state(fail)).toBeUndefined();
    const asks = ca.asks.get('sa-fail') ?? 0;
    await new Promise((r) => setTimeout(r, 1000));
    expect(ca.asks.get('sa-fail') ?? 0).toBe(asks);
    expect(certOf('sa-fail')).toBeUndefined();
    const listeners = await podListeners(fail);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `fail:${port}`).toBeUndefined();
  });
});
