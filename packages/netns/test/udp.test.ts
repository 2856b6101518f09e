// UDP sockets made for netns A live in A: they get datagrams sent inside A (not the host's), carry
// SO_MARK on the wire, report "no IPv6 here" with an errno, and leak no fds.
import { closeSync } from 'node:fs';
import type * as dgram from 'node:dgram';
import { createSocket } from 'node:dgram';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetnsError, bindUdp, createUdpSocket, currentNetns, openNetns, socketLocalAddress, socketNetnsId, type Netns } from '../src/index.js';
import { TestNetns, countFds, requireRootAndTools, ruleCounter, vethPair } from './helpers.js';

let nsA: TestNetns;
let nsB: TestNetns;
let nsNo6: TestNetns;
let a: Netns;
let b: Netns;
let no6: Netns;
let home: Netns;
let addr: ReturnType<typeof vethPair>;

beforeAll(() => {
  requireRootAndTools('iptables', 'socat', 'sysctl');
  home = currentNetns();
  nsA = new TestNetns('uA');
  nsB = new TestNetns('uB');
  nsNo6 = new TestNetns('u6');
  addr = vethPair(nsA, nsB, 212);
  nsNo6.exec('sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=1']);
  a = openNetns(nsA.path);
  b = openNetns(nsB.path);
  no6 = openNetns(nsNo6.path);
  nsA.exec('iptables', ['-A', 'OUTPUT', '-p', 'udp', '-d', addr.b4, '-m', 'mark', '--mark', '0x539', '-m', 'comment', '--comment', 'wudpmarked']);
  nsA.exec('iptables', ['-A', 'OUTPUT', '-p', 'udp', '-d', addr.b4, '-m', 'comment', '--comment', 'wudpall']);
});

afterAll(() => {
  for (const ns of [a, b, no6]) ns?.close();
  for (const ns of [nsA, nsB, nsNo6]) ns?.delete();
  const now = currentNetns();
  expect(now.sameAs(home)).toBe(true);
  now.close();
  home?.close();
});

/** The next datagram on `s` as text, or 'nothing' after `ms`. */
function nextDatagram(s: dgram.Socket, ms = 1500): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      s.off('message', onMessage);
      resolve('nothing');
    }, ms);
    const onMessage = (msg: Buffer): void => {
      clearTimeout(timer);
      resolve(msg.toString());
    };
    s.once('message', onMessage);
  });
}

function closeUdp(s: dgram.Socket): Promise<void> {
  return new Promise((resolve) => s.close(() => resolve()));
}

describe('createUdpSocket / bindUdp', () => {
  it('receives a datagram sent inside A, not one sent from the host to the same address', async () => {
    const s = await bindUdp({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: 0 });
    const port = s.address().port;
    const fromHost = nextDatagram(s);
    const host = createSocket('udp4');
    await new Promise<void>((resolve, reject) => host.send('from-host', port, '127.0.0.1', (e) => (e ? reject(e) : resolve())));
    host.close();
    expect(await fromHost).toBe('nothing');

    const inside = nextDatagram(s, 5000);
    await nsA.execAsync('sh', ['-c', `printf from-A | socat -u STDIN UDP4-SENDTO:127.0.0.1:${port}`]);
    expect(await inside).toBe('from-A');
    await closeUdp(s);
  });

  it('the fd lives in A and is bound where asked (IPv4 and IPv6 loopback)', () => {
    const fd4 = createUdpSocket({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: 0 });
    const fd6 = createUdpSocket({ netns: a, family: 6, bindAddress: '::1', bindPort: 0 });
    try {
      expect(socketNetnsId(fd4)).toEqual(a.id);
      expect(socketNetnsId(fd6)).toEqual(a.id);
      expect(socketLocalAddress(fd4)).toMatchObject({ family: 4, address: '127.0.0.1' });
      expect(socketLocalAddress(fd6)).toMatchObject({ family: 6, address: '::1' });
      expect(socketLocalAddress(fd4).port).toBeGreaterThan(0);
    } finally {
      closeSync(fd4);
      closeSync(fd6);
    }
  });

  it('carries the mark: datagrams to B count on a mark rule inside A, unmarked ones do not', async () => {
    const sink = await bindUdp({ netns: b, family: 4, bindAddress: addr.b4, bindPort: 0 });
    const sinkPort = sink.address().port;
    const send = async (mark: number | undefined, text: string): Promise<string> => {
      const s = await bindUdp({ netns: a, family: 4, bindAddress: '0.0.0.0', bindPort: 0, ...(mark === undefined ? {} : { mark }) });
      const got = nextDatagram(sink, 5000);
      await new Promise<void>((resolve, reject) => s.send(text, sinkPort, addr.b4, (e) => (e ? reject(e) : resolve())));
      const r = await got;
      await closeUdp(s);
      return r;
    };
    const marked0 = ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wudpmarked');
    const all0 = ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wudpall');
    expect(await send(0x539, 'marked')).toBe('marked');
    expect(ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wudpmarked')).toBe(marked0 + 1);
    expect(ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wudpall')).toBe(all0 + 1);
    expect(await send(undefined, 'plain')).toBe('plain');
    expect(ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wudpmarked')).toBe(marked0 + 1);
    expect(ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wudpall')).toBe(all0 + 2);
    await closeUdp(sink);
  });

  it('a pod without IPv6 on lo: ::1 fails with ERR_NETNS_ADDRESS_NOT_AVAILABLE and errno 99; IPv4 still works', () => {
    let err: unknown;
    try {
      closeSync(createUdpSocket({ netns: no6, family: 6, bindAddress: '::1', bindPort: 15053 }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NetnsError);
    expect(err).toMatchObject({ code: 'ERR_NETNS_ADDRESS_NOT_AVAILABLE', errno: 99, sysCode: 'EADDRNOTAVAIL', syscall: 'bind' });
    expect((err as Error).message).toContain('[::1]:15053');
    closeSync(createUdpSocket({ netns: no6, family: 4, bindAddress: '127.0.0.1', bindPort: 15053 }));
  });

  it('reusePort lets two sockets share a port; without it the second is ERR_NETNS_ADDRESS_IN_USE', () => {
    const first = createUdpSocket({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: 0, reusePort: true });
    const port = socketLocalAddress(first).port;
    const second = createUdpSocket({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: port, reusePort: true });
    expect(() => createUdpSocket({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: port })).toThrow(
      expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_IN_USE', errno: 98 }),
    );
    closeSync(first);
    closeSync(second);
  });

  it('freebind binds an address A does not have; without it EADDRNOTAVAIL', () => {
    closeSync(createUdpSocket({ netns: a, family: 4, bindAddress: '10.212.9.9', bindPort: 0, freebind: true }));
    expect(() => createUdpSocket({ netns: a, family: 4, bindAddress: '10.212.9.9', bindPort: 0 })).toThrow(
      expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_NOT_AVAILABLE', errno: 99 }),
    );
  });

  it('rejects bad arguments with ERR_NETNS_INVALID_ARGUMENT', () => {
    const bad = (o: Record<string, unknown>): unknown => {
      try {
        closeSync(createUdpSocket({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: 0, ...o } as never));
        return 'created';
      } catch (e) {
        return (e as NetnsError).code;
      }
    };
    expect(bad({ bindAddress: 'localhost' })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ bindAddress: '::1' })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ family: 5 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ bindPort: 70000 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ mark: -1 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ netns: 3 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
  });

  it('leaks no fds over 500 create/bind/close cycles, including failures', async () => {
    await new Promise((resolve) => setTimeout(resolve, 200));
    const before = countFds();
    for (let i = 0; i < 250; i++) closeSync(createUdpSocket({ netns: a, family: i % 2 ? 4 : 6, bindAddress: i % 2 ? '0.0.0.0' : '::', bindPort: 0, mark: 0x539 }));
    for (let i = 0; i < 200; i++) await closeUdp(await bindUdp({ netns: a, family: 4, bindAddress: '127.0.0.1', bindPort: 0 }));
    for (let i = 0; i < 50; i++) {
      expect(() => createUdpSocket({ netns: no6, family: 6, bindAddress: '::1', bindPort: 0 })).toThrow(NetnsError);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(countFds()).toBe(before);
  });
});
