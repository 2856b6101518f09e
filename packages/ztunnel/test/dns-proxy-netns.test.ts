import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsMetrics } from '../src/dns/metrics.js';
import { DnsProxy } from '../src/dns/dns-proxy.js';
import { parseLocalConfig } from '../src/local-config.js';
import { WorkloadStore } from '../src/workload-store.js';
import { Dnsmasq, podUdpSockets, PEER_IP, PEER_IP6, PodPair, digShort, requireDnsTools } from './support-dns.js';

const MARK = 0x539;
const config = `
workloads:
- {uid: r1, name: reviews-v1, namespace: default, workloadIps: [10.244.9.11], services: {"default/reviews.default.svc.cluster.local": {9080: 9080}}}
- {uid: h1, name: db-0, namespace: data, workloadIps: [10.244.9.21], services: {"data/db.data.svc.cluster.local": {5432: 5432}}}
services:
- {name: reviews, namespace: default, hostname: reviews.default.svc.cluster.local, vips: ["/10.96.0.10"], ports: {9080: 9080}}
- {name: db, namespace: data, hostname: db.data.svc.cluster.local, ports: {5432: 5432}}
- {name: ext, namespace: default, hostname: api.mesh-only.example, vips: ["/240.240.0.7"]}
`;
// 12 TXT strings of 200 bytes: ~2.4 KB, more than a UDP answer without EDNS may carry.
const bigTxt = Array.from({ length: 12 }, (_, i) => `--txt-record=big.upstream.test,${String(i).padStart(2, '0')}${'x'.repeat(198)}`);

describe('DNS proxy in a pod netns with DNS capture on', () => {
  let pair: PodPair;
  let dnsmasq: Dnsmasq;
  let proxy: DnsProxy | undefined;
  const registry = new Registry();
  const metrics = new DnsMetrics(registry);
  const store = new WorkloadStore({ config: parseLocalConfig(config) });

  const startProxy = async (o: { upstream?: string; timeoutMs?: number } = {}): Promise<DnsProxy> => {
    await proxy?.stop();
    proxy = new DnsProxy({
      netns: pair.netns,
      mark: MARK,
      store,
      udpSockets: podUdpSockets(pair.netns),
      upstreams: [{ address: o.upstream ?? PEER_IP, port: 53 }],
      namespace: 'default',
      workloadName: 'sleep',
      metrics,
      ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}),
    });
    await proxy.start();
    return proxy;
  };

  beforeAll(async () => {
    requireDnsTools();
    pair = await PodPair.create('dp');
    await pair.capture();
    dnsmasq = await Dnsmasq.start(pair.peer, PEER_IP, ['--address=/upstream.test/192.0.2.1', ...bigTxt]);
    await startProxy();
  }, 60_000);

  afterAll(async () => {
    await proxy?.stop();
    await dnsmasq?.stop();
    await pair?.destroy();
  });

  it('listens on UDP and TCP 127.0.0.1:15053 and [::1]:15053 inside the pod', async () => {
    expect(proxy!.listeners.sort()).toEqual(['tcp 127.0.0.1:15053', 'tcp [::1]:15053', 'udp 127.0.0.1:15053', 'udp [::1]:15053']);
    const ss = await pair.exec('ss', ['-Hlnu']);
    expect(ss.stdout).toContain('127.0.0.1:15053');
    expect(ss.stdout).toContain('[::1]:15053');
  });

  it('getent hosts resolves service hostnames and their short forms to the VIP through the capture', async () => {
    for (const name of ['reviews', 'reviews.default', 'reviews.default.svc', 'reviews.default.svc.cluster.local']) {
      const r = await pair.exec('getent', ['hosts', name]);
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^10\.96\.0\.10\s/);
    }
    // Another namespace's short form, walked through the search path; a headless service → its workload IP.
    expect((await pair.exec('getent', ['hosts', 'db.data'])).stdout).toMatch(/^10\.244\.9\.21\s/);
    // A name only the mesh state knows (no DNS server anywhere has it).
    expect((await pair.exec('getent', ['hosts', 'api.mesh-only.example'])).stdout).toMatch(/^240\.240\.0\.7\s/);
  });

  it('dig @<any resolver IP> gets the VIP, over UDP and TCP', async () => {
    for (const server of ['@8.8.8.8', `@${PEER_IP}`, '@192.0.2.53']) {
      const udp = await pair.exec('dig', [server, 'reviews.default.svc.cluster.local', '+short', '+tries=1', '+time=3']);
      expect(digShort(udp.stdout), `${server} udp`).toEqual(['10.96.0.10']);
      const tcp = await pair.exec('dig', [server, '+tcp', 'reviews.default.svc.cluster.local', '+short', '+tries=1', '+time=3']);
      expect(digShort(tcp.stdout), `${server} tcp`).toEqual(['10.96.0.10']);
    }
    const full = await pair.exec('dig', ['@8.8.8.8', 'reviews.default.svc.cluster.local', '+tries=1']);
    expect(full.stdout).toMatch(/flags: qr aa rd ra/);
    expect(full.stdout).toMatch(/reviews\.default\.svc\.cluster\.local\.\s+30\s+IN\s+A\s+10\.96\.0\.10/);
  });

  it('forwards other names to the upstream resolver from inside the pod, marked, over UDP and TCP', async () => {
    const before = dnsmasq.log.length;
    // 192.0.2.53 is no resolver at all: only the proxy's forward can answer this.
    const udp = await pair.exec('dig', ['@192.0.2.53', 'www.upstream.test', '+short', '+tries=1', '+time=3']);
    expect(digShort(udp.stdout)).toEqual(['192.0.2.1']);
    const tcp = await pair.exec('dig', ['@192.0.2.53', '+tcp', 'tcp.upstream.test', '+short', '+tries=1', '+time=3']);
    expect(digShort(tcp.stdout)).toEqual(['192.0.2.1']);
    expect((await pair.exec('getent', ['hosts', 'other.upstream.test'])).stdout).toMatch(/^192\.0\.2\.1\s/);
    const log = dnsmasq.log.slice(before);
    expect(log).toMatch(/query\[A\] www\.upstream\.test from 10\.253\.0\.2/);
    expect(log).toMatch(/query\[A\] tcp\.upstream\.test from 10\.253\.0\.2/);
    const text = await registry.metrics();
    expect(text).toMatch(/istio_dns_upstream_requests_total\{request_query_type="A",request_protocol="tcp",source_workload="sleep",source_workload_namespace="default"\} [1-9]/);
  });

  it('a truncated upstream answer makes the client fall back to TCP, which gets it whole', async () => {
    const r = await pair.exec('dig', ['@192.0.2.53', '+noedns', '+ignore', 'big.upstream.test', 'TXT', '+tries=1', '+time=3']);
    expect(r.stdout).toMatch(/flags: qr (aa )?tc/);
    const retried = await pair.exec('dig', ['@192.0.2.53', '+noedns', 'big.upstream.test', 'TXT', '+short', '+tries=1', '+time=3']);
    expect(digShort(retried.stdout)).toHaveLength(12);
  });

  it('an unreachable upstream gives SERVFAIL within the timeout, never a hung query', async () => {
    await startProxy({ upstream: '10.253.0.99', timeoutMs: 1500 });
    try {
      const r = await pair.exec('dig', ['@192.0.2.53', 'lost.upstream.test', '+tries=1', '+time=5']);
      expect(r.stdout).toMatch(/status: SERVFAIL/);
      expect(r.ms).toBeLessThan(4000);
      const known = await pair.exec('dig', ['@192.0.2.53', 'reviews.default.svc.cluster.local', '+short', '+tries=1', '+time=3']);
      expect(digShort(known.stdout)).toEqual(['10.96.0.10']);
      expect(await registry.metrics()).toMatch(/istio_dns_upstream_failures_total\{[^}]*\} [1-9]/);
    } finally {
      await startProxy();
    }
  });
});

describe('DNS proxy in a pod whose loopback has IPv6 disabled', () => {
  let pair: PodPair;
  let dnsmasq: Dnsmasq;
  let proxy: DnsProxy;

  beforeAll(async () => {
    requireDnsTools();
    pair = await PodPair.create('d6', { ipv6Lo: false });
    await pair.capture();
    dnsmasq = await Dnsmasq.start(pair.peer, PEER_IP, ['--address=/upstream.test/192.0.2.1']);
  }, 60_000);

  afterAll(async () => {
    await proxy?.stop();
    await dnsmasq?.stop();
    await pair?.destroy();
  });

  it('starts on 127.0.0.1 only, and DNS works', async () => {
    proxy = new DnsProxy({
      netns: pair.netns,
      mark: MARK,
      store: new WorkloadStore({ config: parseLocalConfig(config) }),
      udpSockets: podUdpSockets(pair.netns),
      upstreams: [{ address: PEER_IP, port: 53 }],
      namespace: 'default',
    });
    await proxy.start();
    expect(proxy.listeners.sort()).toEqual(['tcp 127.0.0.1:15053', 'udp 127.0.0.1:15053']);
    expect((await pair.exec('getent', ['hosts', 'reviews'])).stdout).toMatch(/^10\.96\.0\.10\s/);
    expect(digShort((await pair.exec('dig', ['@8.8.8.8', 'www.upstream.test', '+short', '+tries=1'])).stdout)).toEqual(['192.0.2.1']);
    expect(digShort((await pair.exec('dig', ['@8.8.8.8', '+tcp', 'reviews.default.svc.cluster.local', '+short', '+tries=1'])).stdout)).toEqual(['10.96.0.10']);
  });
});

describe('DNS proxy with the REDIRECT rule set (Istio >= 1.24) and IPv6 capture', () => {
  let pair: PodPair;
  let dnsmasq: Dnsmasq;
  let proxy: DnsProxy;

  beforeAll(async () => {
    requireDnsTools();
    pair = await PodPair.create('dr', { ipv6: true });
    await pair.capture({ mode: 'redirect', ipv6: true });
    dnsmasq = await Dnsmasq.start(pair.peer, PEER_IP6, ['--address=/upstream.test/192.0.2.1', '--address=/upstream.test/2001:db8::1']);
    proxy = new DnsProxy({
      netns: pair.netns,
      mark: MARK,
      store: new WorkloadStore({
        config: parseLocalConfig(`services:\n- {name: dual, namespace: default, hostname: dual.default.svc.cluster.local, vips: ["/10.96.0.30", "/fd00:96::30"]}\n`),
      }),
      udpSockets: podUdpSockets(pair.netns),
      upstreams: [{ address: PEER_IP6, port: 53 }],
      namespace: 'default',
    });
    await proxy.start();
  }, 60_000);

  afterAll(async () => {
    await proxy?.stop();
    await dnsmasq?.stop();
    await pair?.destroy();
  });

  it('captures queries to IPv4 and IPv6 resolvers, answers A and AAAA, and forwards to an IPv6 upstream', async () => {
    expect(proxy.listeners).toContain('udp [::1]:15053');
    for (const server of ['@8.8.8.8', '@2001:4860:4860::8888']) {
      for (const transport of ['+notcp', '+tcp']) {
        const a = await pair.exec('dig', [server, transport, 'dual', '+search', '+short', '+tries=1', '+time=3']);
        expect(digShort(a.stdout), `${server} ${transport} A`).toEqual(['10.96.0.30']);
        const aaaa = await pair.exec('dig', [server, transport, 'dual.default.svc.cluster.local', 'AAAA', '+short', '+tries=1', '+time=3']);
        expect(digShort(aaaa.stdout), `${server} ${transport} AAAA`).toEqual(['fd00:96::30']);
      }
    }
    const up = await pair.exec('dig', ['@2001:4860:4860::8888', 'www.upstream.test', 'AAAA', '+short', '+tries=1', '+time=3']);
    expect(digShort(up.stdout)).toEqual(['2001:db8::1']);
    expect(dnsmasq.log).toMatch(/query\[AAAA\] www\.upstream\.test from fd00:253::2/);
    expect((await pair.exec('getent', ['ahosts', 'dual'])).stdout).toMatch(/fd00:96::30|10\.96\.0\.30/);
  });
});
