/**
 * Inbound is only ever to this pod, as the workload state knows it (security review 5, findings 3-5):
 * a pod the store does not know is refused on 15006 and 15008 whatever its policies would say; an
 * HBONE CONNECT to loopback stays refused even after something in the pod touched 127.0.0.1:15006;
 * a connection routed through the pod to another address (`ip route add X via <pod>`) is not relayed.
 * In-process ztunnel, real pod netns with Istio's REDIRECT rules, no source spoofing (where the
 * review's experiments let data through); and a pod with the seed's TPROXY rules, which that
 * ztunnel refuses to serve (its non-transparent listeners would never get inbound).
 */
import { createServer, type Server } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HboneClient, HboneError } from '@weir/hbone';
import { connectTcp, listenTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ztunnel, createLogger, parseLocalConfig } from '../src/index.js';
import { EchoApp, capturePod, execFileP, localConfigYaml, podListeners, handOver, requireRoot, startAcked, testZtunnel, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

interface LogRecord {
  msg: string;
  uid?: string;
  error?: string;
  direction?: string;
  'dst.addr'?: string;
  [k: string]: unknown;
}

describe('inbound goes only to this pod, as the workload state knows it', () => {
  let topo: Topology;
  let dir: string;
  let zds: ZdsServer;
  let zt: Ztunnel;
  let ca: LocalCa;
  let a: TopologyPod, b: TopologyPod, c: TopologyPod, outside: TopologyPod, t: TopologyPod;
  let appB: EchoApp, appC: EchoApp;
  let secret: Server;
  const netns = new Map<TopologyPod, Netns>();
  const log: LogRecord[] = [];
  const ns = (p: TopologyPod): Netns => netns.get(p)!;

  const DENY_8080 = [
    '- {name: deny-all-8080, namespace: istio-system, scope: Global, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}',
    '- {name: deny-ns2-8080, namespace: ns2, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}',
  ].join('\n');
  /** The store as istiod would push it: a always, b when `withB`. */
  const setState = (withB: boolean, policies = ''): void => {
    const workloads = [{ pod: a, serviceAccount: 'sa-a', node: 'n1' }, ...(withB ? [{ pod: b, serviceAccount: 'sa-b', node: 'n1' }] : [])];
    zt.store.replace(parseLocalConfig(localConfigYaml(workloads, policies)));
  };

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-dst-'));
    topo = await Topology.create({ name: uniqueName('d') });
    const n1 = await topo.addNode({ name: 'n1' });
    a = await n1.addPod({ name: 'a', namespace: 'ns1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns2' });
    c = await n1.addPod({ name: 'c', namespace: 'ns2' });
    outside = await n1.addPod({ name: 'outside', namespace: 'ns3' });
    t = await n1.addPod({ name: 't', namespace: 'ns1' });
    for (const p of [a, b]) await capturePod(p, { mode: 'redirect' });
    for (const p of [a, b, c, outside]) netns.set(p, openNetns(p.netnsPath));
    ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    zds = new ZdsServer({ path: join(dir, 'zds.sock') });
    await zds.start();
    const { logger } = createLogger({ level: 'debug', format: 'json', write: (l) => log.push(JSON.parse(l) as LogRecord) });
    zt = testZtunnel(zds, {
      localConfig: parseLocalConfig(localConfigYaml([{ pod: a, serviceAccount: 'sa-a', node: 'n1' }])),
      ca,
      origSrc: 'never',
      logger,
    });
    await startAcked(zt, zds);
    // b is handed over by the node agent before istiod has pushed its workload (the real order).
    await handOver(zds, zt, [[a, 'sa-a'], [b, 'sa-b']]);
    appB = await EchoApp.start(b, 8080);
    appC = await EchoApp.start(c, 8080);
    // A service of b's that only listens on its loopback.
    secret = createServer((s) => {
      s.on('error', () => {});
      s.end('LOCALHOST-ONLY-SECRET');
    });
    await listenTcp({ netns: ns(b), host: '127.0.0.1', port: 9999 }, secret);
  }, 120_000);

  afterAll(async () => {
    if (secret) await new Promise<void>((r) => secret.close(() => r()));
    await appB?.close();
    await appC?.close();
    for (const h of netns.values()) h.close();
    await zt?.stop({ deadlineMs: 0 });
    await zds?.close();
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  /** A mesh peer that is not a captured pod: HBONE from `outside` straight to b:15008 with a mesh certificate. */
  async function hboneFromOutside(target: { host: string; port: number }): Promise<{ status: number; body: string }> {
    const cert = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/ns3/sa/attacker' });
    const client = new HboneClient({
      tls: { key: cert.keyPem, cert: cert.chainPem, ca: ca.rootPem },
      socketFactory: (peer) => connectTcp({ netns: ns(outside), family: 4, host: peer.host, port: peer.port, timeoutMs: 5000 }),
      connectTimeoutMs: 5000,
    });
    try {
      const tunnel = await client.connect({
        peer: { host: b.ip, port: 15008 },
        target,
        expectedIdentities: ['spiffe://cluster.local/ns/ns2/sa/sa-b'],
      });
      const chunks: Buffer[] = [];
      tunnel.on('data', (d: Buffer) => chunks.push(d));
      await new Promise<void>((r) => {
        const t = setTimeout(r, 2000);
        tunnel.once('end', () => (clearTimeout(t), r()));
        tunnel.once('error', () => (clearTimeout(t), r()));
        tunnel.end();
      });
      tunnel.destroy();
      return { status: 200, body: Buffer.concat(chunks).toString() };
    } catch (err) {
      if (err instanceof HboneError && err.status !== undefined) return { status: err.status, body: '' };
      throw err;
    } finally {
      await client.close({ deadlineMs: 0 });
    }
  }

  const failed = (pred: (r: LogRecord) => boolean): LogRecord[] => log.filter((r) => r.msg === 'connection failed' && r.direction === 'inbound' && pred(r));

  it('refuses plaintext and HBONE to a pod the workload state does not know, whatever its policies (finding 3)', async () => {
    setState(false, DENY_8080);
    const before = appB.clients.length;
    // Plaintext (15006) from an unmeshed pod and from a mesh pod (b is no mesh workload to a's ztunnel
    // yet: it sends plaintext), and HBONE (15008) straight from a peer with a mesh certificate.
    expect(await tryConnect(ns(outside), b.ip, 8080)).not.toBe('ok');
    expect(await tryConnect(ns(a), b.ip, 8080)).not.toBe('ok');
    // 503 as ztunnel answers without a local workload: no policy was evaluated, so no 401 (which the
    // client's ztunnel counts as response_flags DENY) and no "denied by policy" line.
    expect((await hboneFromOutside({ host: b.ip, port: 8080 })).status).toBe(503);
    expect(log.filter((r) => r.msg === 'connection failed: denied by policy')).toEqual([]);
    // Refused by authorize with its own status: connect never ran, so no upstream failure either.
    expect(log.filter((r) => r.msg === 'connection failed: refused by authorize').at(-1)).toMatchObject({
      status: 503,
      reason: `unknown destination ${b.ip}:8080: pod uid ${b.uid} is not in the workload state yet`,
    });
    expect(log.filter((r) => r.msg === 'connection failed: upstream connect')).toEqual([]);
    expect(appB.clients.length).toBe(before);
    const unknown = failed((r) => /^unknown destination: /.test(r.error ?? ''));
    expect(unknown.length).toBeGreaterThanOrEqual(3);
    expect(unknown[0]!.error).toBe(`unknown destination: ${b.ip}: pod ns2/b (uid ${b.uid}) is not in the workload state yet`);
    expect(unknown[0]!['dst.addr']).toBe(`${b.ip}:8080`);

    // The same without any policy: still refused while unknown (no "no policies, allow").
    setState(false);
    expect(await tryConnect(ns(outside), b.ip, 8080)).not.toBe('ok');
    expect(await tryConnect(ns(a), b.ip, 8080)).not.toBe('ok');

    // istiod pushes b: its policies now apply, and once they allow, so does inbound.
    setState(true, DENY_8080);
    expect(await tryConnect(ns(outside), b.ip, 8080)).not.toBe('ok');
    expect(failed((r) => /deny-matched istio-system\/deny-all-8080/.test(r.error ?? '')).length).toBeGreaterThan(0);
    setState(true);
    expect(await tryConnect(ns(outside), b.ip, 8080)).toBe('ok');
    expect(await tryConnect(ns(a), b.ip, 8080)).toBe('ok');
    expect(appB.clients.length).toBe(before + 2);
  });

  it('never opens loopback to HBONE peers, also after an in-pod connect to 127.0.0.1:15006 (finding 4)', async () => {
    setState(true);
    expect(await hboneFromOutside({ host: '127.0.0.1', port: 9999 })).toEqual({ status: 400, body: '' });
    // Something in the pod touches its own 15006 on loopback (a port scan, a health check).
    const s = await connectTcp({ netns: ns(b), family: 4, host: '127.0.0.1', port: 15006, timeoutMs: 5000 });
    s.on('error', () => {});
    await new Promise<void>((r) => (s.once('close', () => r()), s.write('x')));
    await waitFor('the recursive-call refusal', async () => log.some((r) => r.msg === 'connection failed: recursive call to ourselves'));
    expect(await hboneFromOutside({ host: '127.0.0.1', port: 9999 })).toEqual({ status: 400, body: '' });
    // Nor another address of the node: only b's own.
    expect((await hboneFromOutside({ host: c.ip, port: 8080 })).status).toBe(400);
    // The check does let b's own address through (the test can pass).
    const own = await hboneFromOutside({ host: b.ip, port: 8080 });
    expect(own.status).toBe(200);
  });

  it("refuses HBONE targets naming ztunnel's own ports on the pod IP (review 6, section 7)", async () => {
    setState(true);
    // 15008 would open a second HBONE session inside the first, sourced from the pod itself; 15006 and
    // 15001 answered 200 and were then cut by the recursive-call check; the rest are ztunnel's too.
    for (const port of [15000, 15001, 15006, 15008, 15020, 15021, 15053, 15080]) {
      expect(await hboneFromOutside({ host: b.ip, port }), `port ${port}`).toEqual({ status: 400, body: '' });
    }
    expect(log.filter((r) => r.msg === 'connection failed: authority is not an IP:port this server serves' && r.authority === `${b.ip}:15008`)).toHaveLength(1);
    // An ordinary app port still passes (the test can tell).
    expect((await hboneFromOutside({ host: b.ip, port: 8080 })).status).toBe(200);
  });

  it('does not relay a connection routed through the pod to another address (finding 5)', async () => {
    setState(true);
    const before = appC.clients.length;
    // A same-L2 unmeshed pod sends its traffic for c via b; b's REDIRECT rule hands it to 15006.
    await execFileP('ip', ['netns', 'exec', outside.netns, 'ip', 'route', 'add', `${c.ip}/32`, 'via', b.ip]);
    try {
      expect(await tryConnect(ns(outside), c.ip, 8080)).not.toBe('ok');
    } finally {
      await execFileP('ip', ['netns', 'exec', outside.netns, 'ip', 'route', 'del', `${c.ip}/32`, 'via', b.ip]);
    }
    expect(appC.clients.slice(before)).toEqual([]);
    const refused = failed((r) => r['dst.addr'] === `${c.ip}:8080`);
    expect(refused.at(-1)?.error).toBe(`destination ${c.ip} is not an address of this pod (${b.ip})`);
    // Without the route, c is reached directly (the refusal was b's, not the network's).
    expect(await tryConnect(ns(outside), c.ip, 8080)).toBe('ok');
  });

  it("refuses to start a proxy under the seed's TPROXY rules while origSrc is 'never' (it would drop all inbound)", async () => {
    await capturePod(t, { mode: 'tproxy' });
    await expect(zdsAddPod(zds, t, 'sa-t')).rejects.toThrow(
      `pod ${t.uid}: the pod's inbound capture is TPROXY (tproxy rule mode), which delivers only to transparent listeners, but origSrc is 'never' (ENABLE_ORIG_SRC=false): every inbound connection would be dropped; use the redirect rule mode or allow original source`,
    );
    expect(zt.pending()).toContain(`pod ${t.uid}`);
    for (const port of [15001, 15006, 15008]) expect((await podListeners(t)).get(port), `t:${port}`).toBeUndefined();
    await zds.removeWorkload(t.uid);
    expect(zt.pending()).not.toContain(`pod ${t.uid}`);
  });
});
