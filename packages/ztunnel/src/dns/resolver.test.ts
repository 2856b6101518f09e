import * as dgram from 'node:dgram';
import * as net from 'node:net';
import * as dnsPacket from 'dns-packet';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLocalConfig } from '../local-config.js';
import { WorkloadStore } from '../workload-store.js';
import { DnsForwarder, type DnsUpstream } from './forwarder.js';
import { HostResolver } from './host-resolver.js';
import { responseRcode } from './message.js';
import { DnsMetrics } from './metrics.js';
import { DnsNameTable } from './name-table.js';
import { DnsResolver } from './resolver.js';
import type { UdpSocketFactory } from './udp-socket.js';

// Sockets in this process's netns stand in for the pod's: the logic under test is the same.
const hostUdp: UdpSocketFactory = async (spec) => {
  const s = dgram.createSocket(spec.family === 6 ? 'udp6' : 'udp4');
  await new Promise<void>((r) => s.bind(spec.port, spec.address, () => r()));
  return s;
};

/** A test upstream on 127.0.0.1 (UDP and TCP): answers `*.upstream.test` with 192.0.2.1, `big.upstream.test` truncated over UDP. */
class FakeUpstream {
  udp = dgram.createSocket('udp4');
  tcp = net.createServer((s) => {
    s.on('data', (b: Buffer) => {
      const q = dnsPacket.decode(b.subarray(2));
      const r = this.answer(q, 'tcp');
      const len = Buffer.alloc(2);
      len.writeUInt16BE(r.length);
      s.end(Buffer.concat([len, r]));
    });
  });
  queries: string[] = [];
  port = 0;

  answer(q: dnsPacket.DecodedPacket, transport: string): Buffer {
    const name = q.questions![0]!.name;
    this.queries.push(`${transport} ${name}`);
    const big = name === 'big.upstream.test';
    return dnsPacket.encode({
      type: 'response',
      id: q.id ?? 0,
      flags: big && transport === 'udp' ? dnsPacket.TRUNCATED_RESPONSE : 0,
      questions: q.questions ?? [],
      answers: big && transport === 'udp' ? [] : [{ type: 'A', name, ttl: 60, data: big ? '192.0.2.99' : '192.0.2.1' }],
    });
  }

  async start(): Promise<void> {
    this.udp.on('message', (m, r) => {
      const q = dnsPacket.decode(m);
      if (q.questions?.[0]?.name === 'silent.upstream.test') return;
      this.udp.send(this.answer(q, 'udp'), r.port, r.address);
    });
    await new Promise<void>((r) => this.tcp.listen(0, '127.0.0.1', () => r()));
    this.port = (this.tcp.address() as net.AddressInfo).port;
    await new Promise<void>((r) => this.udp.bind(this.port, '127.0.0.1', () => r()));
  }

  async stop(): Promise<void> {
    this.udp.close();
    await new Promise<void>((r) => this.tcp.close(() => r()));
  }
}

const query = (name: string, type: 'A' | 'AAAA' | 'MX' = 'A', id = 777): Buffer =>
  dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });

const yaml = `services:
- {name: reviews, namespace: default, hostname: reviews.default.svc.cluster.local, vips: ["/10.96.0.10"]}
`;

describe('DnsResolver', () => {
  const upstream = new FakeUpstream();
  const registry = new Registry();
  const metrics = new DnsMetrics(registry);
  const store = new WorkloadStore({ config: parseLocalConfig(yaml) });
  const table = new DnsNameTable(store);
  const make = (upstreams: DnsUpstream[], o: { timeoutMs?: number; maxInflight?: number } = {}): DnsResolver =>
    new DnsResolver({
      table,
      forwarder: new DnsForwarder({
        upstreams,
        udpSockets: hostUdp,
        connectTcp: ({ host, port }) =>
          new Promise((resolve, reject) => {
            const s = net.connect({ host, port }, () => resolve(s));
            s.once('error', reject);
          }),
        timeoutMs: o.timeoutMs ?? 2000,
      }),
      namespace: 'default',
      workloadName: 'client',
      ttlSeconds: 30,
      maxInflight: o.maxInflight ?? 64,
      metrics,
    });

  beforeAll(() => upstream.start());
  afterAll(() => upstream.stop());

  it('answers names in the mesh state itself, short forms included', async () => {
    const r = dnsPacket.decode((await make([]).answer(query('reviews'), 'udp', 'test'))!);
    expect(r).toMatchObject({ id: 777, rcode: 'NOERROR', flag_aa: true });
    expect(r.answers).toEqual([{ type: 'A', name: 'reviews', class: 'IN', ttl: 30, flush: false, data: '10.96.0.10' }]);
    const aaaa = dnsPacket.decode((await make([]).answer(query('reviews.default.svc.cluster.local', 'AAAA'), 'udp', 'test'))!);
    expect(aaaa).toMatchObject({ rcode: 'NOERROR', answers: [] });
  });

  it('forwards everything else upstream, over the transport the client used, restoring the id', async () => {
    const resolver = make([{ address: '127.0.0.1', port: upstream.port }]);
    const udp = dnsPacket.decode((await resolver.answer(query('www.upstream.test', 'A', 1), 'udp', 'test'))!);
    expect(udp).toMatchObject({ id: 1, rcode: 'NOERROR', answers: [{ data: '192.0.2.1' }] });
    const tcp = dnsPacket.decode((await resolver.answer(query('tcp.upstream.test', 'A', 2), 'tcp', 'test'))!);
    expect(tcp).toMatchObject({ id: 2, answers: [{ data: '192.0.2.1' }] });
    // A known name with a type the state cannot answer goes upstream too.
    await resolver.answer(query('reviews.default.svc.cluster.local', 'MX'), 'udp', 'test');
    expect(upstream.queries).toEqual(expect.arrayContaining(['udp www.upstream.test', 'tcp tcp.upstream.test', 'udp reviews.default.svc.cluster.local']));
  });

  it('passes a truncated UDP answer back so the client retries over TCP, which then gets the full answer', async () => {
    const resolver = make([{ address: '127.0.0.1', port: upstream.port }]);
    const udp = dnsPacket.decode((await resolver.answer(query('big.upstream.test'), 'udp', 'test'))!);
    expect(udp.flag_tc).toBe(true);
    const tcp = dnsPacket.decode((await resolver.answer(query('big.upstream.test'), 'tcp', 'test'))!);
    expect(tcp.answers?.[0]).toMatchObject({ data: '192.0.2.99' });
  });

  it('answers SERVFAIL when the upstream refuses (at once) or stays silent (within the timeout), and tries the next one', async () => {
    const closed = dgram.createSocket('udp4');
    await new Promise<void>((r) => closed.bind(0, '127.0.0.1', () => r()));
    const deadPort = closed.address().port;
    closed.close();
    // Bounds are fractions of the resolver's own timeout, so scheduling delay under load cannot
    // make "at once" look like "waited for the timeout", nor one wait look like two.
    let t = Date.now();
    const refused = (await make([{ address: '127.0.0.1', port: deadPort }], { timeoutMs: 10_000 }).answer(query('x.upstream.test'), 'udp', 'test'))!;
    expect(responseRcode(refused)).toBe('SERVFAIL');
    expect(Date.now() - t).toBeLessThan(5_000);
    t = Date.now();
    const silent = (await make([{ address: '127.0.0.1', port: upstream.port }], { timeoutMs: 1_500 }).answer(query('silent.upstream.test'), 'udp', 'test'))!;
    expect(responseRcode(silent)).toBe('SERVFAIL');
    expect(Date.now() - t).toBeGreaterThanOrEqual(1_450);
    expect(Date.now() - t).toBeLessThan(2_900);
    const second = dnsPacket.decode(
      (await make([
        { address: '127.0.0.1', port: deadPort },
        { address: '127.0.0.1', port: upstream.port },
      ]).answer(query('second.upstream.test'), 'udp', 'test'))!,
    );
    expect(second.answers?.[0]).toMatchObject({ data: '192.0.2.1' });
    const text = await registry.metrics();
    expect(text).toMatch(/istio_dns_upstream_failures_total\{[^}]*request_query_type="A"[^}]*\} [1-9]/);
    expect(text).toMatch(/istio_dns_requests_total\{[^}]*source_workload="client"[^}]*\} \d+/);
    expect(text).toContain('istio_dns_upstream_request_duration_seconds_bucket');
  });

  it('answers SERVFAIL at once beyond the in-flight limit instead of queueing', async () => {
    const resolver = make([{ address: '127.0.0.1', port: upstream.port }], { timeoutMs: 500, maxInflight: 2 });
    const answers = await Promise.all(Array.from({ length: 5 }, (_, i) => resolver.answer(query('silent.upstream.test', 'A', i), 'udp', 'test')));
    expect(answers.map((a) => responseRcode(a!))).toEqual(Array(5).fill('SERVFAIL'));
    expect(resolver.inflight).toBe(0);
  });

  it('resolves host names for SOCKS5: mesh state first, then upstream', async () => {
    const forwarder = new DnsForwarder({
      upstreams: [{ address: '127.0.0.1', port: upstream.port }],
      udpSockets: hostUdp,
      connectTcp: () => Promise.reject(new Error('unused')),
      timeoutMs: 1000,
    });
    const hosts = new HostResolver({ table, namespace: 'default', forwarder });
    expect(await hosts.resolve('reviews')).toBe('10.96.0.10');
    expect(await hosts.resolve('web.upstream.test')).toBe('192.0.2.1');
    expect(await new HostResolver({ table }).resolve('web.upstream.test')).toBeUndefined();
  });
});

describe('DnsResolver fuzzing', () => {
  it('never throws on 6,000 mutated queries: an answer with the same id, or a drop', async () => {
    const table = new DnsNameTable(new WorkloadStore({ config: parseLocalConfig(yaml) }));
    const forwarder = new DnsForwarder({
      upstreams: [],
      udpSockets: hostUdp,
      connectTcp: () => Promise.reject(new Error('unused')),
      timeoutMs: 100,
    });
    const resolver = new DnsResolver({ table, forwarder, namespace: 'default', ttlSeconds: 30, maxInflight: 8 });
    const seeds = [query('reviews'), query('reviews.default.svc.cluster.local', 'AAAA'), query('x.example', 'MX')];
    let answered = 0;
    for (let i = 0; i < 6_000; i++) {
      const b = Buffer.from(seeds[i % seeds.length]!);
      for (let flips = 1 + (i % 4); flips > 0; flips--) {
        const at = (i * 7919 + flips * 104729) % b.length;
        b[at] = b[at]! ^ (1 << ((i + flips) % 8));
      }
      const cut = i % 5 === 0 ? b.subarray(0, (i % b.length) + 1) : b;
      const r = await resolver.answer(cut, i % 2 ? 'udp' : 'tcp', 'fuzz');
      if (r) {
        answered++;
        expect(r.readUInt16BE(0)).toBe(cut.readUInt16BE(0));
      }
    }
    expect(answered).toBeGreaterThan(3_000);
  });
});

describe('DnsResolver metric labels', () => {
  it('folds unusual query types into one label value, so a client cannot grow the registry', async () => {
    const registry = new Registry();
    const resolver = new DnsResolver({
      table: new DnsNameTable(new WorkloadStore({ config: parseLocalConfig(yaml) })),
      forwarder: new DnsForwarder({ upstreams: [], udpSockets: hostUdp, connectTcp: () => Promise.reject(new Error('unused')), timeoutMs: 100 }),
      ttlSeconds: 30,
      maxInflight: 8,
      metrics: new DnsMetrics(registry),
    });
    for (let t = 1000; t < 1200; t++) {
      const q = query('x.example');
      q.writeUInt16BE(t, q.length - 4);
      await resolver.answer(q, 'udp', 'test');
    }
    const lines = (await registry.metrics()).split('\n').filter((l) => l.startsWith('istio_dns_requests_total{'));
    expect(lines).toEqual(['istio_dns_requests_total{request_query_type="other",request_protocol="udp",source_workload="unknown",source_workload_namespace="unknown"} 200']);
  });
});
