// Issue 11 acceptance with the real node proxy: an in-process Ztunnel takes pods over ZDS and runs, per
// pod, the DNS proxy on 15053 next to 15001/15006/15008. The pods have the in-pod rules with DNS
// capture on; their tools (getent, dig) and a SOCKS5 client reach the proxy only through the capture.
import { mkdirSync, rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type * as dgram from 'node:dgram';
import type * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dnsPacket from 'dns-packet';
import { bindUdp, connectTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ztunnel, createLogger } from '../src/index.js';
import { Dnsmasq, digShort, requireDnsTools } from './support-dns.js';
import { EchoApp, capturePod, echoTransfer, execFileP, httpGet, localConfigYaml, podListeners, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

const VIP = '10.96.0.10';
const SERVICE = 'web.ns2.svc.cluster.local';
// ServiceEntries with DNS resolution: a VIP each (as istiod auto-allocates), endpoints known by hostname only.
const EXT_VIP = '240.240.0.7';
const EXT_HOST = 'api.external.test';
const GONE_VIP = '240.240.0.8';
const GONE_HOST = 'gone.external.test';

describe('ztunnel with the DNS proxy (in-pod DNS capture, real ZDS, real netns)', () => {
  let topo: Topology;
  let dir: string;
  let zds: ZdsServer;
  let zt: Ztunnel;
  let dnsmasq: Dnsmasq;
  let a: TopologyPod, b: TopologyPod, noV6: TopologyPod, resolver: TopologyPod, outside: TopologyPod;
  let appB: EchoApp, appOutside: EchoApp;
  let nsA: Netns;
  const lines: string[] = [];

  /** A command in the pod as its app would run it: `ip netns exec`, with the pod's resolv.conf. */
  const inPod = async (pod: TopologyPod, cmd: string, args: string[], timeoutMs = 20_000): Promise<{ stdout: string; code: number; ms: number }> => {
    const started = Date.now();
    try {
      const r = await execFileP('ip', ['netns', 'exec', pod.netns, cmd, ...args], { timeout: timeoutMs });
      return { stdout: r.stdout, code: 0, ms: Date.now() - started };
    } catch (err) {
      const e = err as { stdout?: string; code?: number };
      return { stdout: e.stdout ?? '', code: typeof e.code === 'number' ? e.code : -1, ms: Date.now() - started };
    }
  };
  const dig = (pod: TopologyPod, ...args: string[]) => inPod(pod, 'dig', [...args, '+short', '+tries=1', '+time=8']);

  async function enroll(pod: TopologyPod, sa: string): Promise<void> {
    await capturePod(pod, { dnsCapture: true });
    // kubelet-style resolv.conf: a cluster DNS IP that exists nowhere (only the capture makes it work).
    mkdirSync(`/etc/netns/${pod.netns}`, { recursive: true });
    await writeFile(
      `/etc/netns/${pod.netns}/resolv.conf`,
      `nameserver 10.96.0.53\nsearch ${pod.namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:8 attempts:1\n`,
    );
    await zdsAddPod(zds, pod, sa);
  }

  beforeAll(async () => {
    requireDnsTools();
    dir = await mkdtemp(join(tmpdir(), 'wzt-dns-'));
    topo = await Topology.create({ name: uniqueName('d') });
    const n1 = await topo.addNode({ name: 'n1' });
    a = await n1.addPod({ name: 'a', namespace: 'ns1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns2' });
    noV6 = await n1.addPod({ name: 'nov6', namespace: 'ns1' });
    resolver = await n1.addPod({ name: 'resolver', namespace: 'kube-system' });
    outside = await n1.addPod({ name: 'outside', namespace: 'ns3' });
    await execFileP('ip', ['netns', 'exec', noV6.netns, 'sysctl', '-qw', 'net.ipv6.conf.lo.disable_ipv6=1']);
    // The node's resolver (the cluster DNS as ztunnel sees it), outside the mesh.
    dnsmasq = await Dnsmasq.start(resolver.netns, resolver.ip, [
      '--address=/upstream.test/192.0.2.1',
      `--address=/echo.upstream.test/${outside.ip}`,
      `--address=/${EXT_HOST}/${outside.ip}`,
    ]);
    const configPath = join(dir, 'local.yaml');
    await writeFile(
      configPath,
      localConfigYaml(
        [
          { pod: a, serviceAccount: 'sa-a', node: 'n1' },
          { pod: b, serviceAccount: 'sa-b', node: 'n1', services: `{"ns2/${SERVICE}": {80: 8080}}` },
          { pod: noV6, serviceAccount: 'sa-a', node: 'n1' },
        ],
        '',
        [
          `- {name: web, namespace: ns2, hostname: ${SERVICE}, vips: ["/${VIP}"], ports: {80: 8080}}`,
          `- {name: ext, namespace: ext, hostname: ${EXT_HOST}, vips: ["/${EXT_VIP}"], ports: {80: 9090}}`,
          `- {name: gone, namespace: ext, hostname: ${GONE_HOST}, vips: ["/${GONE_VIP}"], ports: {80: 9090}}`,
        ].join('\n'),
        [
          `- {name: ext-dns, namespace: ext, hostname: ${EXT_HOST}, services: {"ext/${EXT_HOST}": {80: 9090}}}`,
          `- {name: gone-dns, namespace: ext, hostname: ${GONE_HOST}, services: {"ext/${GONE_HOST}": {80: 9090}}}`,
        ].join('\n'),
      ),
    );
    zds = new ZdsServer({ path: join(dir, 'zds.sock') });
    await zds.start();
    const { logger } = createLogger({ level: 'debug', write: (l) => lines.push(l) });
    zt = new Ztunnel({
      inpodUds: zds.path,
      localXdsPath: configPath,
      ca: await LocalCa.create({ trustDomain: 'cluster.local' }),
      nodeName: 'n1',
      adminAddress: '127.0.0.1:0',
      metricsAddress: '127.0.0.1:0',
      readinessAddress: '127.0.0.1:0',
      logger,
      proxyRetryMs: 300,
      socks5: true,
      dnsUpstreams: [{ address: resolver.ip, port: 53 }],
    });
    const acked = new Promise<void>((r) => zds.once('snapshotAcked', () => r()));
    await zt.start();
    await acked;
    await enroll(a, 'sa-a');
    await enroll(b, 'sa-b');
    await enroll(noV6, 'sa-a');
    await waitFor('three proxies up', async () => zt.pending().length === 0 && (await podListeners(noV6)).has(15053));
    appB = await EchoApp.start(b, 8080);
    appOutside = await EchoApp.start(outside, 9090);
    nsA = openNetns(a.netnsPath);
  }, 120_000);

  afterAll(async () => {
    nsA?.close();
    await appB?.close();
    await appOutside?.close();
    await zt?.stop({ deadlineMs: 0 });
    await zds?.close();
    await dnsmasq?.stop();
    for (const p of [a, b, noV6]) if (p) rmSync(`/etc/netns/${p.netns}`, { recursive: true, force: true });
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('runs a DNS proxy on UDP+TCP 127.0.0.1:15053 and [::1]:15053 in each pod, owned by ztunnel', async () => {
    const udp = (await execFileP('ip', ['netns', 'exec', a.netns, 'ss', '-Hlnup'])).stdout;
    expect(udp).toMatch(new RegExp(`127\\.0\\.0\\.1:15053 .*pid=${process.pid}`));
    expect(udp).toMatch(new RegExp(`\\[::1\\]:15053 .*pid=${process.pid}`));
    expect((await podListeners(a)).get(15053)).toContain(process.pid);
    const dump = JSON.parse((await httpGet(`http://127.0.0.1:${zt.addresses().admin!.port}/config_dump`)).body) as { pods: { uid: string; proxy?: { listeners: string[] } }[] };
    expect(dump.pods.find((p) => p.uid === a.uid)?.proxy?.listeners).toEqual(
      expect.arrayContaining(['udp 127.0.0.1:15053', 'tcp 127.0.0.1:15053', 'udp [::1]:15053', 'tcp [::1]:15053']),
    );
  });

  it('getent hosts and dig @<any IP> return the service VIP (UDP and TCP)', async () => {
    for (const name of [SERVICE, 'web.ns2']) {
      const r = await inPod(a, 'getent', ['hosts', name]);
      expect(r.code, name).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^${VIP.replace(/\./g, '\\.')}\\s`));
    }
    for (const server of ['@10.96.0.53', '@8.8.8.8', '@192.0.2.77']) {
      expect(digShort((await dig(a, server, SERVICE)).stdout), server).toEqual([VIP]);
      expect(digShort((await dig(a, server, '+tcp', SERVICE)).stdout), `${server} tcp`).toEqual([VIP]);
    }
  });

  it('forwards unknown names to the node resolver from inside the pod (dnsmasq answers, UDP and TCP)', async () => {
    const before = dnsmasq.log.length;
    expect(digShort((await dig(a, '@8.8.8.8', 'www.upstream.test')).stdout)).toEqual(['192.0.2.1']);
    expect(digShort((await dig(a, '@8.8.8.8', '+tcp', 'tcp.upstream.test')).stdout)).toEqual(['192.0.2.1']);
    expect((await inPod(a, 'getent', ['hosts', 'getent.upstream.test'])).stdout).toMatch(/^192\.0\.2\.1\s/);
    // The queries reached dnsmasq from the pod's own address: made inside the pod, not in ztunnel's netns.
    const log = dnsmasq.log.slice(before);
    expect(log).toMatch(new RegExp(`query\\[A\\] www\\.upstream\\.test from ${a.ip.replace(/\./g, '\\.')}`));
    expect(log).toMatch(new RegExp(`query\\[A\\] tcp\\.upstream\\.test from ${a.ip.replace(/\./g, '\\.')}`));
    const metrics = (await httpGet(`http://127.0.0.1:${zt.addresses().metrics!.port}/metrics`)).body;
    expect(metrics).toMatch(/istio_dns_requests_total\{[^}]*source_workload="a"[^}]*\} [1-9]/);
    expect(metrics).toMatch(/istio_dns_upstream_requests_total\{[^}]*\} [1-9]/);
  });

  it('answers SERVFAIL within the timeout when the upstream is unreachable, and recovers', async () => {
    const drop = ['-p', 'udp', '--dport', '53', '-j', 'DROP'];
    const dropTcp = ['-p', 'tcp', '--dport', '53', '-j', 'DROP'];
    await execFileP('ip', ['netns', 'exec', resolver.netns, 'iptables', '-I', 'INPUT', ...drop]);
    await execFileP('ip', ['netns', 'exec', resolver.netns, 'iptables', '-I', 'INPUT', ...dropTcp]);
    try {
      const r = await inPod(a, 'dig', ['@8.8.8.8', 'blackholed.upstream.test', '+tries=1', '+time=9']);
      expect(r.stdout).toMatch(/status: SERVFAIL/);
      expect(r.ms).toBeLessThan(8000);
      // Mesh names do not need the upstream.
      expect(digShort((await dig(a, '@8.8.8.8', SERVICE)).stdout)).toEqual([VIP]);
    } finally {
      await execFileP('ip', ['netns', 'exec', resolver.netns, 'iptables', '-D', 'INPUT', ...drop]);
      await execFileP('ip', ['netns', 'exec', resolver.netns, 'iptables', '-D', 'INPUT', ...dropTcp]);
    }
    expect(digShort((await dig(a, '@8.8.8.8', 'again.upstream.test')).stdout)).toEqual(['192.0.2.1']);
  });

  it('a pod whose loopback has IPv6 disabled still gets its proxy, on 127.0.0.1 only', async () => {
    const udp = (await execFileP('ip', ['netns', 'exec', noV6.netns, 'ss', '-Hlnup'])).stdout;
    expect(udp).toContain('127.0.0.1:15053');
    expect(udp).not.toContain('[::1]:15053');
    expect((await inPod(noV6, 'getent', ['hosts', 'web.ns2'])).stdout).toMatch(/^10\.96\.0\.10\s/);
    expect(digShort((await dig(noV6, '@8.8.8.8', '+tcp', 'www.upstream.test')).stdout)).toEqual(['192.0.2.1']);
  });

  it('SOCKS5 resolves names through the DNS proxy and takes the real outbound path (HBONE in the access log)', async () => {
    const socks = async (name: string, port: number, payload: string): Promise<string> => {
      const socket: net.Socket = await connectTcp({ netns: nsA, family: 4, host: '127.0.0.1', port: 15080, timeoutMs: 5000 });
      socket.on('error', () => {});
      let buf = Buffer.alloc(0);
      const need = (n: number): Promise<Buffer> =>
        new Promise((resolve, reject) => {
          const check = (): void => {
            if (buf.length < n) return;
            socket.off('data', onData);
            const out = buf.subarray(0, n);
            buf = buf.subarray(n);
            resolve(out);
          };
          const onData = (d: Buffer): void => {
            buf = Buffer.concat([buf, d]);
            check();
          };
          socket.on('data', onData);
          socket.once('close', () => reject(new Error(`socks5 to ${name}:${port} closed with ${buf.length} bytes`)));
          check();
        });
      try {
        socket.write(Buffer.from([5, 1, 0]));
        expect([...(await need(2))]).toEqual([5, 0]);
        socket.write(Buffer.concat([Buffer.from([5, 1, 0, 3, name.length]), Buffer.from(name), Buffer.from([port >> 8, port & 255])]));
        expect((await need(10))[1]).toBe(0);
        socket.write(payload);
        return String(await need(payload.length));
      } finally {
        socket.destroy();
      }
    };
    // A mesh service name (mesh state) → VIP → HBONE to b.
    expect(await socks('web.ns2', 80, 'via socks to the mesh')).toBe('via socks to the mesh');
    expect(appB.clients.at(-1)).toBe(a.ip);
    await waitFor('outbound access log', async () =>
      lines.some((l) => /connection complete/.test(l) && /direction=outbound/.test(l) && l.includes(`dst.hbone_addr=${b.ip}:15008`) && l.includes('src.workload=a')),
    );
    // A name only the upstream resolver knows → passthrough to a pod outside the mesh.
    expect(await socks('echo.upstream.test', 9090, 'via socks upstream')).toBe('via socks upstream');
    expect(appOutside.clients.at(-1)).toBe(a.ip);
    expect(dnsmasq.log).toMatch(/echo\.upstream\.test from/);
  });

  it('reaches a service whose endpoints are known by hostname at what the name resolves to, and refuses one that resolves to nothing', async () => {
    // The pod's DNS answers the ServiceEntry's name with its VIP, as istiod's auto-allocation does.
    expect(digShort((await dig(a, EXT_HOST)).stdout)).toEqual([EXT_VIP]);
    const before = appOutside.clients.length;
    const r = await echoTransfer(nsA, EXT_VIP, 80, 256 * 1024);
    expect(r.bytes).toBe(256 * 1024);
    expect(r.received).toBe(r.sent);
    expect(appOutside.clients.length).toBe(before + 1);
    expect(appOutside.clients.at(-1)).toBe(a.ip);
    await waitFor('access log of the DNS endpoint', async () =>
      lines.some((l) => /connection complete/.test(l) && l.includes(`dst.addr=${EXT_VIP}:80`) && l.includes(`dst.service=${EXT_HOST}`) && l.includes('dst.workload=ext-dns')),
    );
    // No address for the name: the connection is closed, never sent on to the VIP.
    expect(await tryConnect(nsA, GONE_VIP, 80)).not.toBe('ok');
    await waitFor('the refusal, with the name', async () => lines.some((l) => l.includes(`${GONE_HOST} resolves to no address`)));
    expect(dnsmasq.log).toMatch(new RegExp(`${GONE_HOST.replace(/\./g, '\\.')} from`));
  });

  it('contains hostile input through the capture: malformed datagrams and a query burst leave it answering', async () => {
    const app: dgram.Socket = await bindUdp({ netns: nsA, family: 4, bindAddress: '0.0.0.0', bindPort: 0 });
    const answered = new Set<number>();
    app.on('message', (m: Buffer) => {
      if (m.length >= 2) answered.add(m.readUInt16BE(0));
    });
    try {
      // Any destination port 53 is captured to the pod's proxy.
      for (let i = 0; i < 2000; i++) app.send(Buffer.from(Array.from({ length: 1 + (i % 300) }, (_, j) => (i * 31 + j * 7) & 255)), 53, '10.96.0.53');
      for (let i = 0; i < 2000; i++) {
        const name = i % 2 ? SERVICE : `burst${i}.upstream.test`;
        app.send(dnsPacket.encode({ type: 'query', id: 10_000 + i, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] }), 53, '10.96.0.53');
        if (i % 200 === 199) await new Promise((r) => setTimeout(r, 20));
      }
      await waitFor('answers to the burst', async () => answered.size > 0);
      // Still answering, ztunnel still up, every pod still Up.
      expect(digShort((await dig(a, '@8.8.8.8', SERVICE)).stdout)).toEqual([VIP]);
      expect(digShort((await dig(a, '@8.8.8.8', 'after.upstream.test')).stdout)).toEqual(['192.0.2.1']);
      expect(zt.pending()).toEqual([]);
      expect(answered.size).toBeLessThanOrEqual(2000);
    } finally {
      app.close();
    }
  });
});
