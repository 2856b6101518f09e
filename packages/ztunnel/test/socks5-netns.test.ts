import * as http from 'node:http';
import type * as net from 'node:net';
import { connectTcp, listenTcp } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsForwarder } from '../src/dns/forwarder.js';
import { HostResolver } from '../src/dns/host-resolver.js';
import { DnsNameTable } from '../src/dns/name-table.js';
import { parseLocalConfig } from '../src/local-config.js';
import { Socks5Listener, type Socks5Target } from '../src/socks5/socks5-listener.js';
import { WorkloadStore } from '../src/workload-store.js';
import { Dnsmasq, podUdpSockets, PEER_IP, PodPair, requireDnsTools } from './support-dns.js';

const MARK = 0x539;
const store = new WorkloadStore({
  config: parseLocalConfig(`
workloads:
- {uid: w1, name: web-0, namespace: default, workloadIps: ["${PEER_IP}"], services: {"default/web.default.svc.cluster.local": {80: 8080}}}
services:
- {name: web, namespace: default, hostname: web.default.svc.cluster.local, vips: ["/10.96.0.80"], ports: {80: 8080}}
`),
});

describe('SOCKS5 listener in a pod netns', () => {
  let pair: PodPair;
  let dnsmasq: Dnsmasq;
  let web: http.Server;
  let socks: Socks5Listener;
  const targets: Socks5Target[] = [];

  beforeAll(async () => {
    requireDnsTools();
    pair = await PodPair.create('s5');
    await pair.capture();
    dnsmasq = await Dnsmasq.start(pair.peer, PEER_IP, [`--address=/upstream.test/${PEER_IP}`]);
    web = http.createServer((req, res) => res.end(`hello from the other pod, you asked ${req.headers.host}${req.url}\n`));
    await listenTcp({ netns: pair.peerNetns, host: PEER_IP, port: 8080 }, web);
    const forwarder = new DnsForwarder({
      upstreams: [{ address: PEER_IP, port: 53 }],
      udpSockets: podUdpSockets(pair.netns),
      mark: MARK,
      timeoutMs: 2000,
      connectTcp: () => Promise.reject(new Error('not used')),
    });
    const hosts = new HostResolver({ table: new DnsNameTable(store), namespace: 'default', forwarder });
    socks = new Socks5Listener({
      netns: pair.netns,
      mark: MARK,
      resolve: (name) => hosts.resolve(name),
      // Stands in for InpodProxy's outbound path: a VIP becomes an endpoint, the connection leaves the pod marked.
      onConnect: async (socket, target) => {
        targets.push(target);
        const r = store.resolve(target.host, target.port);
        const upstream = await connectTcp({ netns: pair.netns, family: 4, mark: MARK, host: r?.address ?? target.host, port: r?.port ?? target.port, timeoutMs: 5000 });
        upstream.on('error', () => socket.destroy());
        socket.pipe(upstream).pipe(socket);
      },
    });
    await socks.start();
  }, 60_000);

  afterAll(async () => {
    await socks?.stop();
    await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
    await dnsmasq?.stop();
    await pair?.destroy();
  });

  const curl = (args: string[]): ReturnType<PodPair['exec']> => pair.exec('curl', ['-sS', '--max-time', '10', ...args]);

  it('listens on 127.0.0.1:15080 inside the pod only', async () => {
    expect(socks.address).toBe('127.0.0.1:15080');
    const ss = await pair.exec('ss', ['-Htln']);
    expect(ss.stdout).toMatch(/127\.0\.0\.1:15080/);
  });

  it('curl --socks5 reaches the other pod by IP, and through a service VIP', async () => {
    const direct = await curl(['--socks5', '127.0.0.1:15080', `http://${PEER_IP}:8080/direct`]);
    expect(direct.stderr).toBe('');
    expect(direct.stdout).toBe(`hello from the other pod, you asked ${PEER_IP}:8080/direct\n`);
    const vip = await curl(['--socks5', '127.0.0.1:15080', 'http://10.96.0.80/vip']);
    expect(vip.stdout).toContain('you asked 10.96.0.80/vip');
    expect(targets.slice(-2)).toEqual([
      { host: PEER_IP, port: 8080 },
      { host: '10.96.0.80', port: 80 },
    ]);
  });

  it('resolves domain destinations through the mesh state first, then upstream DNS; unknown names get 0x04', async () => {
    const short = await curl(['--socks5-hostname', '127.0.0.1:15080', 'http://web/short']);
    expect(short.stdout).toContain('you asked web/short');
    expect(targets.at(-1)).toEqual({ host: '10.96.0.80', port: 80, name: 'web' });
    const upstream = await curl(['--socks5-hostname', '127.0.0.1:15080', 'http://www.upstream.test:8080/up']);
    expect(upstream.stdout).toContain('you asked www.upstream.test:8080/up');
    expect(targets.at(-1)).toEqual({ host: PEER_IP, port: 8080, name: 'www.upstream.test' });
    const unknown = await curl(['--socks5-hostname', '127.0.0.1:15080', 'http://nope.invalid/']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/host unreachable|\(4\)/i);
  });

  const raw = async (bytes: Buffer, want: number): Promise<Buffer> => {
    const s: net.Socket = await connectTcp({ netns: pair.netns, family: 4, host: '127.0.0.1', port: 15080, timeoutMs: 3000 });
    return new Promise<Buffer>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const timer = setTimeout(() => reject(new Error(`only ${buf.toString('hex')} after 3 s`)), 3000);
      s.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        if (buf.length >= want) {
          clearTimeout(timer);
          s.destroy();
          resolve(buf);
        }
      });
      s.on('error', reject);
      s.write(bytes);
    });
  };

  it('refuses BIND and UDP ASSOCIATE (0x07), unknown address types (0x08) and connections to the proxy itself (0x05)', async () => {
    const greeting = [5, 1, 0];
    const bind = await raw(Buffer.from([...greeting, 5, 2, 0, 1, 10, 253, 0, 1, 0, 80]), 12);
    expect([...bind.subarray(0, 4)]).toEqual([5, 0, 5, 0x07]);
    const udp = await raw(Buffer.from([...greeting, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]), 12);
    expect(udp[3]).toBe(0x07);
    const atyp = await raw(Buffer.from([...greeting, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80]), 12);
    expect(atyp[3]).toBe(0x08);
    const self = await raw(Buffer.from([...greeting, 5, 1, 0, 1, 127, 0, 0, 1, 15001 >> 8, 15001 & 0xff]), 12);
    expect(self[3]).toBe(0x05);
    const auth = await raw(Buffer.from([5, 1, 2]), 2);
    expect([...auth]).toEqual([5, 0xff]);
    const curlBind = await pair.exec('curl', ['-sS', '--max-time', '5', '--socks4', '127.0.0.1:15080', `http://${PEER_IP}:8080/`]);
    expect(curlBind.code).not.toBe(0);
  });
});
