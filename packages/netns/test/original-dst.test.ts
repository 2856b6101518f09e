// originalDst returns the destination a connection had before a real iptables nat REDIRECT.
import { openSync, closeSync } from 'node:fs';
import type { AddressInfo, Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectTcp, listenTcp, openNetns, originalDst, type Netns, type SocketAddress } from '../src/index.js';
import { TestNetns, requireRootAndTools, vethPair } from './helpers.js';

let nsA: TestNetns;
let nsB: TestNetns;
let a: Netns;
let b: Netns;
let addr: ReturnType<typeof vethPair>;
let server: Server;
let port: number;
/** originalDst of each accepted connection, keyed by the client's port. */
const seen = new Map<number, SocketAddress | Error>();

beforeAll(async () => {
  requireRootAndTools('iptables', 'ip6tables', 'socat');
  nsA = new TestNetns('O');
  nsB = new TestNetns('P');
  addr = vethPair(nsA, nsB, 212);
  a = openNetns(nsA.path);
  b = openNetns(nsB.path);
  server = await listenTcp({ netns: a, host: '::', port: 0 });
  port = (server.address() as AddressInfo).port;
  server.on('connection', (s: Socket) => {
    try {
      seen.set(s.remotePort!, originalDst(s));
    } catch (e) {
      seen.set(s.remotePort!, e as Error);
    }
    s.on('error', () => undefined);
    s.end(String(s.remotePort));
  });
  for (const [cmd, dstB, dstA] of [['iptables', addr.b4, addr.a4], ['ip6tables', addr.b6, addr.a6]] as const) {
    // Outbound capture (locally generated, like the in-pod 15001 redirect).
    nsA.exec(cmd, ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', dstB, '--dport', '8080', '-j', 'REDIRECT', '--to-ports', String(port)]);
    // Inbound capture (arriving on the veth, like the in-pod 15006 redirect).
    nsA.exec(cmd, ['-t', 'nat', '-A', 'PREROUTING', '-i', addr.ifA, '-p', 'tcp', '-d', dstA, '--dport', '8081', '-j', 'REDIRECT', '--to-ports', String(port)]);
  }
});

afterAll(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  a?.close();
  b?.close();
  nsA?.delete();
  nsB?.delete();
});

async function viaConnectTcp(family: 4 | 6, host: string, dport: number): Promise<SocketAddress | Error | undefined> {
  const s = await connectTcp({ netns: a, family, host, port: dport });
  const reply = await new Promise<string>((resolve) => {
    let d = '';
    s.on('data', (c: Buffer) => (d += c.toString()));
    s.on('end', () => resolve(d));
  });
  s.destroy();
  return seen.get(Number(reply));
}

async function viaSocatInB(target: string): Promise<SocketAddress | Error | undefined> {
  const reply = await nsB.execAsync('socat', ['-u', target, '-']);
  return seen.get(Number(reply));
}

describe('originalDst', () => {
  it('returns the pre-REDIRECT IPv4 destination of a locally generated connection', async () => {
    expect(await viaConnectTcp(4, addr.b4, 8080)).toEqual({ address: addr.b4, port: 8080, family: 4 });
  });

  it('returns the pre-REDIRECT IPv6 destination of a locally generated connection', async () => {
    expect(await viaConnectTcp(6, addr.b6, 8080)).toEqual({ address: addr.b6, port: 8080, family: 6 });
  });

  it('returns the pre-REDIRECT destination of connections arriving from another netns (v4 and v6)', async () => {
    expect(await viaSocatInB(`TCP4:${addr.a4}:8081`)).toEqual({ address: addr.a4, port: 8081, family: 4 });
    expect(await viaSocatInB(`TCP6:[${addr.a6}]:8081`)).toEqual({ address: addr.a6, port: 8081, family: 6 });
  });

  it('returns the real destination when nothing was redirected but conntrack is on', async () => {
    expect(await viaSocatInB(`TCP4:${addr.a4}:${port}`)).toEqual({ address: addr.a4, port, family: 4 });
  });

  it('accepts an fd as well as a net.Socket', async () => {
    const plain = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
    const p = (plain.address() as AddressInfo).port;
    const got = new Promise<SocketAddress>((resolve, reject) =>
      plain.once('connection', (s: Socket) => {
        try {
          resolve(originalDst((s as unknown as { _handle: { fd: number } })._handle.fd));
        } catch (e) {
          reject(e);
        } finally {
          s.destroy();
        }
      }),
    );
    const c = await connectTcp({ netns: a, family: 4, host: '127.0.0.1', port: p });
    expect(await got).toEqual({ address: '127.0.0.1', port: p, family: 4 });
    c.destroy();
    await new Promise<void>((resolve) => plain.close(() => resolve()));
  });

  it('fails with ERR_NETNS_NO_ORIGINAL_DST where conntrack knows no such connection', async () => {
    // B has no nat rules, so no conntrack hooks: the kernel has no entry.
    const plain = await listenTcp({ netns: b, host: '0.0.0.0', port: 0 });
    const p = (plain.address() as AddressInfo).port;
    const got = new Promise<unknown>((resolve) =>
      plain.once('connection', (s: Socket) => {
        try {
          resolve(originalDst(s));
        } catch (e) {
          resolve(e);
        } finally {
          s.destroy();
        }
      }),
    );
    const c = await connectTcp({ netns: b, family: 4, host: '127.0.0.1', port: p });
    expect(await got).toMatchObject({ code: 'ERR_NETNS_NO_ORIGINAL_DST', sysCode: 'ENOENT' });
    c.destroy();
    await new Promise<void>((resolve) => plain.close(() => resolve()));
  });

  it('rejects what is not an open socket with ERR_NETNS_BAD_FD', async () => {
    const { Socket: NetSocket } = await import('node:net');
    expect(() => originalDst(new NetSocket())).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
    const file = openSync('/proc/self/stat', 'r');
    try {
      expect(() => originalDst(file)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD', sysCode: 'ENOTSOCK' }));
    } finally {
      closeSync(file);
    }
    expect(() => originalDst(-3)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
  });
});
