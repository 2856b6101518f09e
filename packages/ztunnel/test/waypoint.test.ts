/**
 * Waypoints (security review 6 #3): outbound to a service or workload with a waypoint goes to the
 * waypoint over HBONE, never straight to the destination, and is refused when the waypoint cannot be
 * resolved. In-process ztunnel, a real pod netns with Istio's REDIRECT rules for the client; the
 * waypoint is a real, separate HBONE server (@weir/hbone) in its own pod that records each CONNECT
 * and forwards it to the destination app, as a waypoint does.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHboneServer, type HboneServer } from '@weir/hbone';
import { connectTcp, listenTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ztunnel, createLogger, parseLocalConfig } from '../src/index.js';
import { EchoApp, capturePod, handOver, requireRoot, startAcked, testZtunnel, tryConnect, uniqueName, waitFor } from './support.js';

interface LogRecord {
  msg: string;
  error?: string;
  direction?: string;
  'dst.addr'?: string;
  'dst.hbone_addr'?: string;
  'dst.identity'?: string;
  [k: string]: unknown;
}

interface SeenConnect {
  authority: string;
  peer: string | undefined;
}

const VIP = '10.96.77.7';

describe('outbound to a destination with a waypoint goes through the waypoint', () => {
  let topo: Topology;
  let dir: string;
  let zds: ZdsServer;
  let zt: Ztunnel;
  let ca: LocalCa;
  let a: TopologyPod, b: TopologyPod, w: TopologyPod;
  let app: EchoApp;
  let waypoint: HboneServer;
  let listener: Server;
  let wNetns: Netns;
  const seen: SeenConnect[] = [];
  const log: LogRecord[] = [];

  /** The state istiod pushes: b behind service reviews (VIP), the waypoint pod w, and where the waypoint is set. */
  const setState = (o: { serviceWaypoint?: string; workloadWaypoint?: string; waypointSa?: string }): void => {
    const gw = (ip: string): string => `{destination: {address: "/${ip}"}, hboneMtlsPort: 15008}`;
    zt.store.replace(
      parseLocalConfig(`
workloads:
- {uid: "${a.uid}", name: a, namespace: ns1, serviceAccount: sa-a, trustDomain: cluster.local, workloadIps: ["${a.ip}"], protocol: HBONE, node: n1}
- {uid: "${b.uid}", name: b, namespace: ns2, serviceAccount: sa-b, trustDomain: cluster.local, workloadIps: ["${b.ip}"], protocol: TCP, node: n1,
   services: {"ns2/reviews.ns2.svc.cluster.local": {80: 8080}}${o.workloadWaypoint ? `, waypoint: ${gw(o.workloadWaypoint)}` : ''}}
- {uid: "${w.uid}", name: waypoint-0, namespace: ns2, serviceAccount: ${o.waypointSa ?? 'waypoint'}, trustDomain: cluster.local, workloadIps: ["${w.ip}"], protocol: HBONE, node: n1}
services:
- {name: reviews, namespace: ns2, hostname: reviews.ns2.svc.cluster.local, vips: ["/${VIP}"], ports: {80: 8080}${o.serviceWaypoint ? `, waypoint: ${gw(o.serviceWaypoint)}` : ''}}
`),
    );
  };

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-wp-'));
    topo = await Topology.create({ name: uniqueName('w') });
    const n1 = await topo.addNode({ name: 'n1' });
    a = await n1.addPod({ name: 'a', namespace: 'ns1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns2' });
    w = await n1.addPod({ name: 'waypoint-0', namespace: 'ns2' });
    await capturePod(a, { mode: 'redirect' });
    ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    app = await EchoApp.start(b, 8080);

    // The waypoint: a real HBONE server on w:15008 with the waypoint's identity, forwarding each CONNECT to b's app.
    wNetns = openNetns(w.netnsPath);
    const cert = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/ns2/sa/waypoint' });
    waypoint = createHboneServer({
      tls: { key: cert.keyPem, cert: cert.chainPem, ca: ca.rootPem },
      connect: async (target, ctx) => {
        seen.push({ authority: `${target.host}:${target.port}`, peer: ctx.peer.identity?.toString() });
        // A waypoint routes the service to an endpoint; this one knows the only one.
        return connectTcp({ netns: wNetns, family: 4, host: b.ip, port: 8080, timeoutMs: 5000 });
      },
    });
    listener = createServer((s: Socket) => waypoint.handleConnection(s));
    await listenTcp({ netns: wNetns, host: '0.0.0.0', port: 15008 }, listener);

    zds = new ZdsServer({ path: join(dir, 'zds.sock') });
    await zds.start();
    const { logger } = createLogger({ level: 'info', format: 'json', write: (l) => log.push(JSON.parse(l) as LogRecord) });
    zt = testZtunnel(zds, {
      localConfig: parseLocalConfig('workloads: []'),
      ca,
      origSrc: 'never',
      logger,
    });
    await startAcked(zt, zds);
    setState({});
    await handOver(zds, zt, [[a, 'sa-a']]);
  }, 120_000);

  afterAll(async () => {
    // ztunnel first: its pooled HBONE sessions to the waypoint would keep the listener's close waiting.
    await zt?.stop({ deadlineMs: 0 });
    await zds?.close();
    await waypoint?.close({ deadlineMs: 0 });
    if (listener) await new Promise<void>((r) => listener.close(() => r()));
    wNetns?.close();
    await app?.close();
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  const aNetns = (): Netns => openNetns(a.netnsPath);
  const connectFromA = async (host: string, port: number): Promise<string> => {
    const ns = aNetns();
    try {
      return await tryConnect(ns, host, port);
    } finally {
      ns.close();
    }
  };
  const outboundFailed = (): LogRecord[] => log.filter((r) => r.msg === 'connection failed' && r.direction === 'outbound');

  it('sends a service VIP to its waypoint (CONNECT to the VIP, the client identity seen by the waypoint), not to the endpoint', async () => {
    setState({ serviceWaypoint: w.ip });
    const clients = app.clients.length;
    seen.length = 0;
    expect(await connectFromA(VIP, 80)).toBe('ok');
    expect(seen).toEqual([{ authority: `${VIP}:80`, peer: 'spiffe://cluster.local/ns/ns1/sa/sa-a' }]);
    // b's app was reached by the waypoint only, never by a directly.
    expect(app.clients.slice(clients).map((c) => c.replace(/^::ffff:/, ''))).toEqual([w.ip]);
    const done = await waitFor('the access log line', async () => log.find((r) => r.msg === 'connection complete' && r['dst.addr'] === `${VIP}:80`));
    expect(done['dst.hbone_addr']).toBe(`${w.ip}:15008`);
    expect(done['dst.identity']).toBe('spiffe://cluster.local/ns/ns2/sa/waypoint');
  });

  it("sends a pod addressed by IP to the workload's waypoint, CONNECT to the pod IP", async () => {
    setState({ workloadWaypoint: w.ip });
    const clients = app.clients.length;
    seen.length = 0;
    expect(await connectFromA(b.ip, 8080)).toBe('ok');
    expect(seen).toEqual([{ authority: `${b.ip}:8080`, peer: 'spiffe://cluster.local/ns/ns1/sa/sa-a' }]);
    expect(app.clients.slice(clients).map((c) => c.replace(/^::ffff:/, ''))).toEqual([w.ip]);
    // Without a waypoint the same connection goes direct (the test can tell the two apart).
    setState({});
    expect(await connectFromA(b.ip, 8080)).toBe('ok');
    expect(app.clients.at(-1)?.replace(/^::ffff:/, '')).toBe(a.ip);
  });

  it('accepts only the waypoint identity the state names', async () => {
    setState({ serviceWaypoint: w.ip, waypointSa: 'someone-else' });
    const clients = app.clients.length;
    seen.length = 0;
    expect(await connectFromA(VIP, 80)).not.toBe('ok');
    expect(seen).toEqual([]);
    expect(app.clients.length).toBe(clients);
    const f = await waitFor('the failure', async () => outboundFailed().find((r) => r['dst.addr'] === `${VIP}:80`));
    expect(f.error).toMatch(new RegExp(`^waypoint ${w.ip.replace(/\./g, '\\.')} \\(${w.ip.replace(/\./g, '\\.')}:15008\\): `));
  });

  it('refuses, never direct, when the waypoint is not in the workload state: "waypoint required" log line and failed-connection metric', async () => {
    setState({ serviceWaypoint: '10.99.99.99' });
    log.length = 0;
    const clients = app.clients.length;
    seen.length = 0;
    expect(await connectFromA(VIP, 80)).not.toBe('ok');
    expect(app.clients.length).toBe(clients);
    expect(seen).toEqual([]);
    const f = await waitFor('the refusal', async () => outboundFailed().find((r) => /^waypoint required: /.test(r.error ?? '')));
    expect(f.error).toBe(
      `waypoint required: service ns2/reviews.ns2.svc.cluster.local at ${VIP}:80 must go through waypoint 10.99.99.99, which cannot be used: ` +
        '10.99.99.99 is neither a workload nor a service with a healthy endpoint in the workload state',
    );
    const text = await zt.metrics.text();
    const line = text
      .split('\n')
      .find((l) => l.startsWith('istio_tcp_connections_failed_total{') && l.includes('reporter="source"') && l.includes('source_workload="a"') && l.includes('response_flags="CONNECT"'));
    expect(line, text).toBeDefined();
    expect(Number(line!.split(' ').at(-1))).toBeGreaterThanOrEqual(1);
  });
});
