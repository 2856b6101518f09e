// A pod proxy makes its HBONE client (first outbound tunnel) and server (first inbound connection on
// 15008) lazily, from the pod's certificate as it is at that moment. These tests drive that first use
// through real pods, the in-pod rules, ZDS and TLS, with a CA that hands some identities broken,
// expired or quickly rotated material.
import { mkdtemp, rm } from 'node:fs/promises';
import type * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { connectTcp, listenTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InpodProxy, Ztunnel, createLogger, parseLocalConfig, type CertificateSource, type WorkloadCertificate } from '../src/index.js';
import { EchoApp, capturePod, gatedIdentities, httpGet, localConfigYaml, podListeners, handOver, requireRoot, startAcked, testZtunnel, tryConnect, uniqueName, waitFor } from './support.js';

const HOUR = 3_600_000;
const GARBAGE_PEM = '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n';

/**
 * The embedded CA, except for a few service accounts: `sa-badkey` gets a key of another certificate,
 * `sa-badpem` a certificate that does not parse, `sa-expired` one that expired an hour ago, and
 * `sa-rot` a first certificate whose half-life (from its notBefore, backdated 60 s) comes two seconds
 * after issue, so ztunnel rotates it then, once.
 */
class ScriptedCa implements CertificateSource {
  /** Serials issued, by service account, oldest first. */
  readonly serials = new Map<string, string[]>();
  constructor(readonly ca: LocalCa) {}

  get rootPem(): string {
    return this.ca.rootPem;
  }

  async issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    const sa = o.identity.slice(o.identity.lastIndexOf('/') + 1);
    const issued = this.serials.get(sa) ?? [];
    this.serials.set(sa, issued);
    const identity = o.identity;
    let cert: WorkloadCertificate;
    if (sa === 'sa-badkey') {
      const other = await this.ca.issueWorkloadCertificate({ identity });
      cert = { ...(await this.ca.issueWorkloadCertificate({ identity })), keyPem: other.keyPem };
    } else if (sa === 'sa-badpem') {
      cert = { ...(await this.ca.issueWorkloadCertificate({ identity })), certPem: GARBAGE_PEM, chainPem: GARBAGE_PEM };
    } else if (sa === 'sa-expired') {
      cert = await this.ca.issueWorkloadCertificate({ identity, notBefore: new Date(Date.now() - 2 * HOUR), notAfter: new Date(Date.now() - HOUR) });
    } else if (sa === 'sa-rot') {
      cert = await this.ca.issueWorkloadCertificate({ identity, ttlSeconds: issued.length === 0 ? 64 : 86_400 });
    } else {
      cert = await this.ca.issueWorkloadCertificate(o);
    }
    issued.push(cert.serial);
    return cert;
  }
}

interface LogRecord {
  msg: string;
  level: string;
  uid?: string;
  err?: { code?: string; message?: string };
  error?: string;
  direction?: string;
  'src.workload'?: string;
  'dst.workload'?: string;
  [k: string]: unknown;
}

const sameSerial = (a: string, b: string): boolean => BigInt(`0x${a}`) === BigInt(`0x${b}`);

describe('lazy HBONE client and server of a pod proxy (real pods, ZDS, TLS)', () => {
  let topo: Topology;
  let dir: string;
  let zds: ZdsServer;
  let zt: Ztunnel;
  let ca: ScriptedCa;
  const log: LogRecord[] = [];
  let a: TopologyPod, b: TopologyPod, badkey: TopologyPod, badpem: TopologyPod, expired: TopologyPod;
  let rot: TopologyPod, gone: TopologyPod, late: TopologyPod, sink: TopologyPod;
  let appB: EchoApp;
  /** The app on 8080 of each pod with broken material: never reached. */
  const apps = new Map<TopologyPod, EchoApp>();
  const handles: Netns[] = [];
  let sinkServer: tls.Server | undefined;
  /** Client certificates the sink's HBONE port saw, as (serial, SAN). */
  const sinkSeen: { serial: string; san: string }[] = [];
  let sinkCert: WorkloadCertificate;

  const ns = (pod: TopologyPod): Netns => {
    const h = openNetns(pod.netnsPath);
    handles.push(h);
    return h;
  };
  const identity = (pod: TopologyPod, sa: string): string => `spiffe://cluster.local/ns/${pod.namespace}/sa/${sa}`;
  const find = (pred: (r: LogRecord) => boolean): LogRecord | undefined => log.find(pred);
  const podState = (pod: TopologyPod) => zt.manager.pods().find((p) => p.uid === pod.uid);

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-lazy-'));
    topo = await Topology.create({ name: uniqueName('l') });
    const n1 = await topo.addNode({ name: 'n1' });
    const n2 = await topo.addNode({ name: 'n2' });
    a = await n1.addPod({ name: 'a', namespace: 'ns1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns2' });
    badkey = await n1.addPod({ name: 'badkey', namespace: 'ns1' });
    badpem = await n1.addPod({ name: 'badpem', namespace: 'ns1' });
    expired = await n1.addPod({ name: 'expired', namespace: 'ns1' });
    rot = await n1.addPod({ name: 'rot', namespace: 'ns1' });
    gone = await n1.addPod({ name: 'gone', namespace: 'ns1' });
    late = await n1.addPod({ name: 'late', namespace: 'ns1' });
    sink = await n2.addPod({ name: 'sink', namespace: 'ns3' });
    const enrolled: [TopologyPod, string][] = [
      [a, 'sa-a'],
      [b, 'sa-b'],
      [badkey, 'sa-badkey'],
      [badpem, 'sa-badpem'],
      [expired, 'sa-expired'],
      [rot, 'sa-rot'],
      [gone, 'sa-gone'],
    ];
    for (const [p] of enrolled) await capturePod(p);
    await capturePod(late);
    // The CA predates the expired certificate it signs.
    ca = new ScriptedCa(await LocalCa.create({ trustDomain: 'cluster.local', notBefore: new Date(Date.now() - 24 * HOUR) }));
    const localConfig = parseLocalConfig(
      localConfigYaml([
        ...enrolled.map(([pod, serviceAccount]) => ({ pod, serviceAccount, node: 'n1' })),
        { pod: late, serviceAccount: 'sa-late', node: 'n1' },
        { pod: sink, serviceAccount: 'sa-sink', node: 'n2' },
      ]),
    );
    zds = new ZdsServer({ path: join(dir, 'zds.sock') });
    await zds.start();
    const { logger } = createLogger({ level: 'debug', format: 'json', write: (l) => log.push(JSON.parse(l) as LogRecord) });
    zt = testZtunnel(zds, {
      localConfig,
      ca,
      readinessAddress: '127.0.0.1:0',
      logger,
    });
    await startAcked(zt, zds);
    await handOver(zds, zt, enrolled);
    appB = await EchoApp.start(b, 8080);
    for (const p of [badkey, badpem, expired]) apps.set(p, await EchoApp.start(p, 8080));
    // The sink stands for a pod on another node: its HBONE port records the client certificate it is shown.
    sinkCert = await ca.ca.issueWorkloadCertificate({ identity: identity(sink, 'sa-sink') });
    sinkServer = tls.createServer(
      { key: sinkCert.keyPem, cert: sinkCert.chainPem, ca: ca.rootPem, requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'] },
      (s) => {
        const peer = s.getPeerCertificate();
        sinkSeen.push({ serial: peer.serialNumber, san: peer.subjectaltname ?? '' });
        s.destroy();
      },
    );
    sinkServer.on('tlsClientError', () => {});
    await listenTcp({ netns: ns(sink), host: '0.0.0.0', port: 15008 }, sinkServer);
  }, 180_000);

  afterAll(async () => {
    if (sinkServer) await new Promise<void>((r) => sinkServer!.close(() => r()));
    await appB?.close();
    for (const app of apps.values()) await app.close();
    for (const h of handles) h.close();
    await zt?.stop({ deadlineMs: 0 });
    await zds?.close();
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('starts a proxy for a pod whose certificate HBONE refuses: nothing is built from it before first use', async () => {
    for (const pod of [badkey, badpem, expired]) {
      expect(podState(pod)?.state, pod.name).toBe('Up');
      for (const port of [15001, 15006, 15008]) expect((await podListeners(pod)).get(port), `${pod.name}:${port}`).toContain(process.pid);
    }
    expect(log.some((r) => r.msg === 'cannot serve inbound HBONE for this pod')).toBe(false);
  });

  for (const [name, reason] of [
    ['badkey', /TLS key\/cert\/ca rejected by OpenSSL/],
    ['badpem', /tls\.cert does not parse as a PEM certificate/],
  ] as const) {
    it(`${name}: its first inbound tunnel and first outbound connection are refused with ERR_HBONE_CONFIG, logged, contained to the pod`, async () => {
      const pod = name === 'badkey' ? badkey : badpem;
      const nsA = ns(a);
      const nsPod = ns(pod);
      // Twice each: a failed first use leaves nothing half-made behind that a second use would trip on.
      for (let i = 0; i < 2; i++) {
        expect(await tryConnect(nsA, pod.ip, 8080)).not.toBe('ok');
        expect(await tryConnect(nsPod, b.ip, 8080)).not.toBe('ok');
      }
      const inbound = log.filter((r) => r.msg === 'cannot serve inbound HBONE for this pod' && r.uid === pod.uid);
      expect(inbound.length).toBeGreaterThanOrEqual(2);
      expect(inbound[0]!.level).toBe('error');
      expect(inbound[0]!.err?.code).toBe('ERR_HBONE_CONFIG');
      expect(inbound[0]!.err?.message).toMatch(reason);
      // The caller's side: the tunnel failed at TLS, the app behind it was never reached.
      expect(find((r) => r.msg === 'connection failed' && r.direction === 'outbound' && r['src.workload'] === 'a' && r['dst.workload'] === pod.name)?.error).toMatch(
        /TLS/,
      );
      const outbound = log.filter((r) => r.msg === 'connection failed' && r.direction === 'outbound' && r['src.workload'] === pod.name);
      expect(outbound.length).toBeGreaterThanOrEqual(2);
      expect(outbound[0]!.error).toMatch(reason);
      expect(apps.get(pod)!.clients).toEqual([]);
      expect(appB.clients).not.toContain(pod.ip);
      // The pod stays enrolled (fail closed, no bypass), the node keeps serving everyone else.
      expect(podState(pod)?.state).toBe('Up');
      expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
      expect(appB.clients.at(-1)).toBe(a.ip);
    });
  }

  it('expired: peers refuse its certificate in both directions; the node keeps working', async () => {
    const nsA = ns(a);
    const nsExpired = ns(expired);
    expect(await tryConnect(nsA, expired.ip, 8080)).not.toBe('ok');
    expect(await tryConnect(nsExpired, b.ip, 8080)).not.toBe('ok');
    // a's client checked the server certificate of `expired` and refused it.
    expect(find((r) => r.msg === 'connection failed' && r['src.workload'] === 'a' && r['dst.workload'] === 'expired')?.error).toMatch(/expired/i);
    // b's server refused the client certificate of `expired` at the handshake, and `expired` says so.
    expect(find((r) => r.msg === 'connection failed: TLS handshake' && r.uid === b.uid)).toBeDefined();
    expect(find((r) => r.msg === 'connection failed' && r.direction === 'outbound' && r['src.workload'] === 'expired')?.error).toMatch(
      /refused our certificate \(spiffe:\/\/cluster\.local\/ns\/ns1\/sa\/sa-expired\)/,
    );
    expect(appB.clients).not.toContain(expired.ip);
    expect(apps.get(expired)!.clients).toEqual([]);
    expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
    expect(zt.pending()).toEqual([]);
    expect((await httpGet(`http://127.0.0.1:${zt.addresses().readiness!.port}/healthz/ready`)).status).toBe(200);
  });

  it('a rotation that lands before first use: the first inbound and outbound tunnels present the new certificate', async () => {
    const serials = (): string[] => ca.serials.get('sa-rot') ?? [];
    await waitFor('sa-rot rotated', async () => serials().length >= 2 && zt.identities.certificates().find((c) => c.identity === identity(rot, 'sa-rot'))?.serial === serials()[1]);
    const [first, second] = serials() as [string, string];
    expect(first).not.toBe(second);
    // The new certificate reached a running proxy (the rotation callback), not one still starting.
    const at = (pred: (r: LogRecord) => boolean): number => log.findIndex(pred);
    const rotated = at((r) => r.msg === 'fetched certificate' && r.serial === second);
    expect(rotated).toBeGreaterThan(at((r) => r.msg === 'proxy started' && r.uid === rot.uid));
    expect(log.some((r) => r.uid === rot.uid && r.msg === 'inbound HBONE connection')).toBe(false);

    // First inbound use: a TLS client on rot's 15008 (from the sink pod, with a mesh certificate) sees the new serial.
    const nsSink = ns(sink);
    const socket: net.Socket = await connectTcp({ netns: nsSink, family: 4, host: rot.ip, port: 15008, timeoutMs: 5000 });
    const peer = await new Promise<tls.PeerCertificate>((resolve, reject) => {
      const t = tls.connect({ socket, key: sinkCert.keyPem, cert: sinkCert.chainPem, ca: ca.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
      t.once('secureConnect', () => {
        resolve(t.getPeerCertificate());
        t.destroy();
      });
      t.once('error', reject);
    });
    expect(sameSerial(peer.serialNumber, second)).toBe(true);
    expect(peer.subjectaltname).toBe(`URI:${identity(rot, 'sa-rot')}`);

    // First outbound use: rot's HBONE client dials the sink, whose port records the client certificate.
    const before = sinkSeen.length;
    await tryConnect(ns(rot), sink.ip, 8080);
    const seen = await waitFor('the sink to see rot', async () => sinkSeen[before]);
    expect(sameSerial(seen.serial, second)).toBe(true);
    expect(seen.san).toBe(`URI:${identity(rot, 'sa-rot')}`);
    expect(serials()).toHaveLength(2);
  });

  it('after DelWorkload, a late first use meets no proxy: refused with a clear error, nothing held for the pod', { timeout: 60_000 }, async () => {
    const goneId = identity(gone, 'sa-gone');
    expect(zt.identities.certificates().map((c) => c.identity)).toContain(goneId);
    await zds.removeWorkload(gone.uid);
    expect(podState(gone)).toBeUndefined();
    const listeners = await podListeners(gone);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `gone:${port}`).toBeUndefined();
    // Its certificate is released (no other pod has that identity).
    expect(zt.identities.certificates().map((c) => c.identity)).not.toContain(goneId);

    // Late first inbound use: nothing answers on its 15008 (the pod's rules drop what no proxy takes):
    // a's tunnel fails at its connect timeout, and a's log names the HBONE address.
    expect(await tryConnect(ns(a), gone.ip, 8080, 20_000)).not.toBe('ok');
    const failed = await waitFor('a failing to reach gone', async () =>
      find((r) => r.msg === 'connection failed' && r['src.workload'] === 'a' && r['dst.workload'] === 'gone'),
    );
    expect(failed.error).toMatch(new RegExp(`${gone.ip.replace(/\./g, '\\.')}:15008 not established within 10000 ms`));
    // Late first outbound use from the pod's app: refused, never let out around the proxy.
    expect(await tryConnect(ns(gone), b.ip, 8080)).toBe('ECONNREFUSED');
    expect(appB.clients).not.toContain(gone.ip);
    // Nothing came back for the pod.
    expect(podState(gone)).toBeUndefined();
    expect(zt.identities.certificates().map((c) => c.identity)).not.toContain(goneId);
    expect(log.some((r) => r.uid === gone.uid && r.msg === 'inbound HBONE connection')).toBe(false);
  });

  it('a proxy stopped while its certificate is still being fetched (Del before Up) fails start with ERR_ZTUNNEL_PROXY_STOPPED and binds nothing', async () => {
    const { identities, release: issue } = gatedIdentities(ca.ca);
    const storeListeners = zt.store.listenerCount('change');
    const proxy = new InpodProxy({
      uid: late.uid,
      workloadInfo: { name: late.name, namespace: late.namespace, serviceAccount: 'sa-late' },
      netns: ns(late),
      store: zt.store,
      identities,
      trustBundle: ca.rootPem,
      trustDomain: 'cluster.local',
      mark: 1337,
      reusePort: true,
      origSrc: 'auto',
      ipv6: false,
      metrics: zt.metrics,
      logger: createLogger({ level: 'debug', format: 'json', write: (l) => log.push(JSON.parse(l) as LogRecord) }).logger,
    });
    const started = proxy.start();
    await proxy.stop({ deadlineMs: 0 });
    issue();
    await expect(started).rejects.toMatchObject({ code: 'ERR_ZTUNNEL_PROXY_STOPPED' });
    const listeners = await podListeners(late);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `late:${port}`).toBeUndefined();
    // start() did not wait for the fetch (it binds first): the certificate is given back as it arrives.
    await waitFor('the late certificate released', async () => identities.certificates().length === 0);
    expect(zt.store.listenerCount('change')).toBe(storeListeners);
    // The pod's app: refused, no tunnel made for it.
    expect(await tryConnect(ns(late), b.ip, 8080)).toBe('ECONNREFUSED');
    expect(appB.clients).not.toContain(late.ip);
    identities.close();
  });
});
