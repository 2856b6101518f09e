import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import type * as dgram from 'node:dgram';
import type * as net from 'node:net';
import * as dnsPacket from 'dns-packet';
import { connectTcp } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsProxy } from '../src/dns/dns-proxy.js';
import { responseRcode } from '../src/dns/message.js';
import { parseLocalConfig } from '../src/local-config.js';
import { WorkloadStore } from '../src/workload-store.js';
import { Dnsmasq, podUdpSockets, PEER_IP, PodPair, requireDnsTools } from './support-dns.js';

const MARK = 0x539;
const PORT = 15053;
const store = new WorkloadStore({
  config: parseLocalConfig(`services:\n- {name: reviews, namespace: default, hostname: reviews.default.svc.cluster.local, vips: ["/10.96.0.10"]}\n`),
});

const query = (name: string, id: number, type: 'A' | 'AAAA' = 'A'): Buffer =>
  dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] });
const header = (id: number, flags: number, qd: number): Buffer => {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(id, 0);
  b.writeUInt16BE(flags, 2);
  b.writeUInt16BE(qd, 4);
  return b;
};
const label = (n: number): Buffer => Buffer.concat([Buffer.from([n]), Buffer.alloc(n, 0x61)]);

describe('DNS proxy under hostile input', () => {
  let pair: PodPair;
  let dnsmasq: Dnsmasq;
  let proxy: DnsProxy;
  let client: dgram.Socket;
  const answers = new Map<number, Buffer>();

  /** Sends from an app socket inside the pod to 127.0.0.1:15053; collects answers by id. */
  const send = (b: Buffer): void => client.send(b, PORT, '127.0.0.1');
  /** Like a stub resolver: up to 3 tries (a flood may have filled the proxy's receive buffer). */
  const ask = async (b: Buffer, timeoutMs = 1000): Promise<Buffer | undefined> => {
    const id = b.readUInt16BE(0);
    answers.delete(id);
    for (let attempt = 0; attempt < 3 && !answers.has(id); attempt++) {
      send(b);
      const until = Date.now() + timeoutMs;
      while (!answers.has(id) && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    }
    return answers.get(id);
  };
  const rcode = (b: Buffer | undefined): string | undefined => (b ? responseRcode(b) : undefined);

  beforeAll(async () => {
    requireDnsTools();
    pair = await PodPair.create('dh');
    await pair.capture();
    dnsmasq = await Dnsmasq.start(pair.peer, PEER_IP, ['--address=/upstream.test/192.0.2.1']);
    proxy = new DnsProxy({
      netns: pair.netns,
      mark: MARK,
      store,
      udpSockets: podUdpSockets(pair.netns),
      upstreams: [{ address: PEER_IP, port: 53 }],
      namespace: 'default',
      timeoutMs: 1000,
      maxInflight: 64,
      maxTcpConnections: 16,
      tcpIdleTimeoutMs: 2000,
    });
    await proxy.start();
    client = await podUdpSockets(pair.netns)({ family: 4, address: '127.0.0.1', port: 0 });
    client.on('message', (m) => {
      if (m.length >= 2) answers.set(m.readUInt16BE(0), m);
    });
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await proxy?.stop();
    await dnsmasq?.stop();
    await pair?.destroy();
  });

  it('answers malformed queries with FORMERR/NOTIMP and drops non-queries, then still works', async () => {
    expect(rcode(await ask(Buffer.concat([header(1, 0x0100, 1), Buffer.from([3, 0x61])])))).toBe('FORMERR');
    // Compression pointer loop, an over-long name, no question, two questions, a NOTIFY opcode.
    expect(rcode(await ask(Buffer.concat([header(2, 0x0100, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])])))).toBe('FORMERR');
    const long = Buffer.concat([header(3, 0x0100, 1), label(63), label(63), label(63), label(63), label(63), Buffer.from([0, 0, 1, 0, 1])]);
    expect(rcode(await ask(long))).toBe('FORMERR');
    expect(rcode(await ask(header(4, 0x0100, 0)))).toBe('FORMERR');
    expect(rcode(await ask(dnsPacket.encode({ type: 'query', id: 5, questions: [{ type: 'A', name: 'a' }, { type: 'A', name: 'b' }] })))).toBe('FORMERR');
    expect(rcode(await ask(header(6, 4 << 11, 0)))).toBe('NOTIMP');
    // Responses and runts get no answer at all (no reflection, no loops).
    expect(await ask(Buffer.concat([header(7, 0x8180, 0)]), 200)).toBeUndefined();
    send(Buffer.from([1, 2, 3]));
    send(Buffer.alloc(0));
    for (let i = 0; i < 2000; i++) send(randomBytes(1 + (i % 700)));
    const ok = await ask(query('reviews', 4242));
    expect(dnsPacket.decode(ok!).answers?.[0]).toMatchObject({ data: '10.96.0.10' });
  });

  it('contains a flood of 10,000 queries (mesh names and forwarded ones): bounded forwards, fds and memory', async () => {
    // Asserts containment, not speed: on a loaded machine UDP datagrams may be dropped and answers
    // come late, but forwards never exceed maxInflight, everything in flight drains, every answer is
    // a well-formed one for its question, no socket or memory is left behind, and service resumes.
    const heapBefore = process.memoryUsage().heapUsed;
    const fdsBefore = readdirSync('/proc/self/fd').length;
    let maxInflight = 0;
    const watch = setInterval(() => (maxInflight = Math.max(maxInflight, proxy.stats().inflight)), 5);
    answers.clear();
    const TOTAL = 10_000;
    for (let i = 0; i < TOTAL; i++) {
      send(i % 2 === 0 ? query('reviews.default.svc.cluster.local', i) : query(`n${i}.upstream.test`, i));
      // Roughly as fast as the proxy answers: pause briefly when far ahead of the answers.
      if (i % 100 === 99) {
        const until = Date.now() + 50;
        while (answers.size < i - 500 && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
      }
    }
    const drainUntil = Date.now() + 40_000;
    while (proxy.stats().inflight > 0 && Date.now() < drainUntil) await new Promise((r) => setTimeout(r, 50));
    clearInterval(watch);
    expect(proxy.stats().inflight).toBe(0);
    expect(maxInflight).toBeGreaterThan(0);
    expect(maxInflight).toBeLessThanOrEqual(64);
    // No amplification, and whatever was answered is right for its question.
    expect(answers.size).toBeGreaterThan(0);
    expect(answers.size).toBeLessThanOrEqual(TOTAL);
    let mesh = 0;
    for (const [id, b] of answers) {
      if (id >= TOTAL) continue;
      const m = dnsPacket.decode(b);
      expect(m.type).toBe('response');
      if (id % 2 === 0) {
        expect(responseRcode(b)).toBe('NOERROR');
        expect(m.answers?.[0]).toMatchObject({ data: '10.96.0.10' });
        mesh++;
      } else {
        expect(['NOERROR', 'SERVFAIL']).toContain(responseRcode(b));
        expect(m.questions?.[0]?.name).toBe(`n${id}.upstream.test`);
      }
    }
    expect(mesh).toBeGreaterThan(0);
    // Every forward's socket is closed again (settling: dgram close is asynchronous).
    const fdsUntil = Date.now() + 10_000;
    while (readdirSync('/proc/self/fd').length - fdsBefore >= 10 && Date.now() < fdsUntil) await new Promise((r) => setTimeout(r, 100));
    expect(readdirSync('/proc/self/fd').length - fdsBefore).toBeLessThan(10);
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(150 * 1024 * 1024);
    const after = await ask(query('www.upstream.test', 65000), 3000);
    expect(dnsPacket.decode(after!).answers?.[0]).toMatchObject({ data: '192.0.2.1' });
  }, 90_000);

  it('copes with hostile TCP clients: garbage, half frames, too many connections', async () => {
    const open = (): Promise<net.Socket> => connectTcp({ netns: pair.netns, family: 4, host: '127.0.0.1', port: PORT, timeoutMs: 3000 });
    const frame = (b: Buffer): Buffer => Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
    const readFrame = (s: net.Socket): Promise<Buffer> =>
      new Promise((resolve, reject) => {
        let buf = Buffer.alloc(0);
        s.on('data', (c: Buffer) => {
          buf = Buffer.concat([buf, c]);
          if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        });
        s.on('error', reject);
        s.on('close', () => reject(new Error('closed before an answer')));
      });

    const garbage = await open();
    garbage.write(frame(randomBytes(3)));
    garbage.write(frame(Buffer.concat([header(9, 0x0100, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])])));
    expect(responseRcode(await readFrame(garbage))).toBe('FORMERR');
    garbage.destroy();

    // A frame announcing 65535 bytes that never come: the idle timeout closes it.
    const half = await open();
    const closed = new Promise<void>((r) => half.once('close', () => r()));
    half.write(Buffer.from([0xff, 0xff, 1, 2, 3]));
    half.on('error', () => {});
    half.resume();
    await closed;

    const many = await Promise.all(Array.from({ length: 40 }, () => open().catch(() => undefined)));
    await new Promise((r) => setTimeout(r, 200));
    expect(proxy.stats().tcpClients).toBeLessThanOrEqual(16);
    for (const s of many) s?.destroy();
    // Until the proxy has seen them go (a fixed 200 ms could end before a starved loop read the FINs,
    // and the next client would be turned away at the limit).
    const freedUntil = Date.now() + 10_000;
    while (proxy.stats().tcpClients > 0 && Date.now() < freedUntil) await new Promise((r) => setTimeout(r, 20));
    expect(proxy.stats().tcpClients).toBe(0);

    const good = await open();
    // Two pipelined queries on one connection, answered by id.
    good.write(Buffer.concat([frame(query('reviews', 11)), frame(query('www.upstream.test', 12))]));
    const first = dnsPacket.decode(await readFrame(good));
    expect([11, 12]).toContain(first.id);
    good.destroy();
  }, 30_000);
});
