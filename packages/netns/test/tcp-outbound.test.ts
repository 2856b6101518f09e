// Outbound sockets made for netns A connect from A's address, carry SO_MARK, and fail with typed errors.
import { spawnSync } from 'node:child_process';
import type { AddressInfo, Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetnsError, connectTcp, createTcpSocket, currentNetns, listenTcp, openNetns, socketNetnsId, tcpKeepalive, type Netns } from '../src/index.js';
import { TestNetns, fdCountBackTo, readAll, requireRootAndTools, ruleCounter, stableFdCount, vethPair } from './helpers.js';

let nsA: TestNetns;
let nsB: TestNetns;
let a: Netns;
let b: Netns;
let home: Netns;
let addr: ReturnType<typeof vethPair>;
let server: Server;
let serverPort: number;
const peers: string[] = [];

beforeAll(async () => {
  requireRootAndTools('iptables', 'ip6tables', 'python3');
  home = currentNetns();
  nsA = new TestNetns('A');
  nsB = new TestNetns('B');
  addr = vethPair(nsA, nsB, 211);
  a = openNetns(nsA.path);
  b = openNetns(nsB.path);
  // Counting rules inside A only: packets to B carrying mark 0x539, and all packets to B.
  for (const [cmd, dst] of [['iptables', addr.b4], ['ip6tables', addr.b6]] as const) {
    nsA.exec(cmd, ['-A', 'OUTPUT', '-p', 'tcp', '-d', dst, '-m', 'mark', '--mark', '0x539', '-m', 'comment', '--comment', 'wmarked']);
    nsA.exec(cmd, ['-A', 'OUTPUT', '-p', 'tcp', '-d', dst, '-m', 'comment', '--comment', 'wall']);
    // A black hole for timeout tests.
    nsA.exec(cmd, ['-A', 'OUTPUT', '-p', 'tcp', '-d', dst, '--dport', '9', '-j', 'DROP']);
  }
  server = await listenTcp({ netns: b, host: '::', port: 0 });
  serverPort = (server.address() as AddressInfo).port;
  server.on('connection', (s: Socket) => {
    peers.push(`${s.remoteAddress}|${s.remotePort}`);
    s.on('error', () => undefined);
    s.end('from B');
  });
});

afterAll(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  a?.close();
  b?.close();
  nsA?.delete();
  nsB?.delete();
  const now = currentNetns();
  expect(now.sameAs(home)).toBe(true);
  now.close();
  home?.close();
});

/** TCP_NODELAY of a socket, read by python3 through the same socket (the fd passed as its fd 3). */
function noDelayOf(s: Socket): number {
  const fd = (s as Socket & { _handle: { fd: number } })._handle.fd;
  const code = 'import socket; s = socket.socket(fileno=3); print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)); s.detach()';
  const r = spawnSync('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'pipe', fd], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python3 getsockopt(TCP_NODELAY) failed: ${r.stderr}`);
  return Number(r.stdout.trim());
}

/** Waits until the socket closed and its last packets left, so counters are final. */
async function settled(s: Socket): Promise<void> {
  if (!s.closed) await new Promise((resolve) => s.once('close', resolve));
  await new Promise((resolve) => setTimeout(resolve, 100));
}

describe('connectTcp from a netns', () => {
  it('IPv4: connects from A\'s address, lives in A, and carries mark 0x539 (iptables counter in A)', async () => {
    const marked0 = ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wmarked');
    const all0 = ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wall');
    const s = await connectTcp({ netns: a, family: 4, mark: 0x539, host: addr.b4, port: serverPort });
    expect(socketNetnsId(s)).toEqual(a.id);
    expect(s.localAddress).toBe(addr.a4);
    expect(s.remoteAddress).toBe(addr.b4);
    expect(await readAll(s)).toBe('from B');
    expect(peers.at(-1)).toBe(`::ffff:${addr.a4}|${s.localPort}`);
    await settled(s);
    const marked1 = ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wmarked');
    const all1 = ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wall');
    expect(marked1).toBeGreaterThan(marked0);
    expect(marked1 - marked0).toBe(all1 - all0);

    // Control: no mark, no count on the mark rule.
    const u = await connectTcp({ netns: a, family: 4, host: addr.b4, port: serverPort });
    expect(await readAll(u)).toBe('from B');
    await settled(u);
    expect(ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wmarked')).toBe(marked1);
    expect(ruleCounter(nsA, 'iptables', 'filter', 'OUTPUT', 'wall')).toBeGreaterThan(all1);
  });

  it('IPv6: connects from A\'s address with the mark', async () => {
    const marked0 = ruleCounter(nsA, 'ip6tables', 'filter', 'OUTPUT', 'wmarked');
    const s = await connectTcp({ netns: a, family: 6, mark: 0x539, host: addr.b6, port: serverPort });
    expect(socketNetnsId(s)).toEqual(a.id);
    expect(s.localAddress).toBe(addr.a6);
    expect(await readAll(s)).toBe('from B');
    expect(peers.at(-1)).toBe(`${addr.a6}|${s.localPort}`);
    expect(ruleCounter(nsA, 'ip6tables', 'filter', 'OUTPUT', 'wmarked')).toBeGreaterThan(marked0);
  });

  it('keeps writing after the peer\'s FIN with allowHalfOpen (half-close propagation)', async () => {
    const { createServer } = await import('node:net');
    const halfServer = createServer({ allowHalfOpen: true });
    const received = new Promise<string>((resolve) =>
      halfServer.once('connection', (c: Socket) => {
        let data = '';
        c.on('data', (d: Buffer) => (data += d.toString()));
        c.on('end', () => resolve(data));
        c.end('bye');
      }),
    );
    await listenTcp({ netns: b, host: addr.b4, port: 0 }, halfServer);
    const p = (halfServer.address() as AddressInfo).port;
    const s = await connectTcp({ netns: a, family: 4, host: addr.b4, port: p, allowHalfOpen: true });
    s.on('end', () => s.end('after-fin'));
    expect(await readAll(s)).toBe('bye');
    expect(await received).toBe('after-fin');
    await new Promise<void>((resolve) => halfServer.close(() => resolve()));
  });

  it('noDelay: TCP_NODELAY is on from the start (read back by python3); without it, off', async () => {
    const on = await connectTcp({ netns: a, family: 4, host: addr.b4, port: serverPort, noDelay: true });
    const off = await connectTcp({ netns: a, family: 4, host: addr.b4, port: serverPort });
    try {
      expect(noDelayOf(on)).not.toBe(0);
      expect(noDelayOf(off)).toBe(0);
      expect(await readAll(on)).toBe('from B');
    } finally {
      on.destroy();
      off.destroy();
    }
  });

  it('a connect that completed inside connect() (a listener in the same netns, over lo) resolves without an event-loop turn', async () => {
    const local = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
    local.on('connection', (c: Socket) => c.end('local'));
    try {
      let settled = false;
      const p = connectTcp({ netns: a, family: 4, host: '127.0.0.1', port: (local.address() as AddressInfo).port }).then((s) => {
        settled = true;
        return s;
      });
      // Only microtasks run here: a poller's callback would need a turn of the event loop.
      for (let i = 0; i < 3; i++) await Promise.resolve();
      expect(settled).toBe(true);
      const s = await p;
      expect(socketNetnsId(s).ino).toBe(a.id.ino);
      expect(await readAll(s)).toBe('local');
    } finally {
      await new Promise<void>((resolve) => local.close(() => resolve()));
    }
  });

  it('keepalive: SO_KEEPALIVE and the three timers set in the creating call, on dialled sockets and inherited by a listener\'s accepted ones', async () => {
    const ka = { idleS: 180, intervalS: 180, count: 9 };
    const accepted: Socket[] = [];
    const kaServer = await listenTcp({ netns: b, host: addr.b4, port: 0, keepalive: { idleS: 7, intervalS: 3, count: 2 } });
    kaServer.on('connection', (c: Socket) => accepted.push(c.on('error', () => undefined)));
    const local = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
    local.on('connection', (c: Socket) => c.on('error', () => undefined));
    const made: Socket[] = [];
    try {
      // Across the veth (poller path) and over lo inside A (completed inside connect()).
      const far = await connectTcp({ netns: a, family: 4, mark: 0x539, host: addr.b4, port: (kaServer.address() as AddressInfo).port, keepalive: ka });
      const near = await connectTcp({ netns: a, family: 4, mark: 0x539, host: '127.0.0.1', port: (local.address() as AddressInfo).port, keepalive: ka });
      const plain = await connectTcp({ netns: a, family: 4, host: addr.b4, port: serverPort });
      made.push(far, near, plain);
      for (const s of [far, near]) {
        expect(tcpKeepalive(s)).toEqual({ enabled: true, ...ka });
        expect(socketNetnsId(s)).toEqual(a.id);
      }
      expect(tcpKeepalive(plain).enabled).toBe(false);
      while (accepted.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(tcpKeepalive(accepted[0]!)).toEqual({ enabled: true, idleS: 7, intervalS: 3, count: 2 });
      expect(socketNetnsId(accepted[0]!)).toEqual(b.id);
      await expect(connectTcp({ netns: a, family: 4, host: addr.b4, port: serverPort, keepalive: { idleS: 0, intervalS: 1, count: 1 } })).rejects.toMatchObject({
        code: 'ERR_NETNS_INVALID_ARGUMENT',
        message: expect.stringContaining('idleS (TCP_KEEPIDLE) must be an integer in 1..32767, got 0'),
      });
      expect(() => createTcpSocket({ netns: a, family: 4, keepalive: { idleS: 1, intervalS: 1, count: 128 } })).toThrow(/count \(TCP_KEEPCNT\) must be an integer in 1..127/);
    } finally {
      for (const s of [...made, ...accepted]) s.destroy();
      await new Promise<void>((resolve) => kaServer.close(() => resolve()));
      await new Promise<void>((resolve) => local.close(() => resolve()));
    }
  });

  it('interleaved connects for A and B (both paths, with keepalive and the mark) each live in their own netns, never the other', async () => {
    const ka = { idleS: 180, intervalS: 180, count: 9 };
    const inA = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
    const inB = await listenTcp({ netns: b, host: '127.0.0.1', port: 0 });
    for (const srv of [inA, inB]) srv.on('connection', (c: Socket) => c.on('error', () => undefined).end('ok'));
    const pA = (inA.address() as AddressInfo).port;
    const pB = (inB.address() as AddressInfo).port;
    try {
      const wanted: [Netns, Promise<Socket>][] = [];
      for (let i = 0; i < 40; i++) {
        // Over lo inside its own netns (done inside connect()) and across the veth (poller), alternating pods.
        const [ns, host, port] = i % 4 === 0 ? [a, '127.0.0.1', pA] : i % 4 === 1 ? [b, '127.0.0.1', pB] : i % 4 === 2 ? [a, addr.b4, serverPort] : [b, addr.a4, pA];
        wanted.push([ns, connectTcp({ netns: ns, family: 4, mark: 0x539, host, port, keepalive: ka, noDelay: true, timeoutMs: 10_000 })]);
      }
      for (const [ns, p] of wanted) {
        const s = await p.catch((e: unknown) => e);
        if (ns === b && !(s instanceof Error) && (s as Socket).remotePort === pA) {
          // B cannot reach A's 127.0.0.1: only a socket made in A could. Reaching it would be the bypass.
          throw new Error('a socket for B reached a listener on 127.0.0.1 inside A');
        }
        if (s instanceof Error) {
          expect(ns).toBe(b);
          continue;
        }
        expect(socketNetnsId(s as Socket)).toEqual(ns.id);
        expect(tcpKeepalive(s as Socket)).toEqual({ enabled: true, ...ka });
        (s as Socket).destroy();
      }
    } finally {
      await new Promise<void>((resolve) => inA.close(() => resolve()));
      await new Promise<void>((resolve) => inB.close(() => resolve()));
    }
  });

  it('binds to bindAddress/bindPort before connecting', async () => {
    const probe = createTcpSocket({ netns: a, family: 4, bindAddress: addr.a4 });
    const { socketLocalAddress } = await import('../src/index.js');
    const port = socketLocalAddress(probe).port;
    (await import('node:fs')).closeSync(probe);
    const s = await connectTcp({ netns: a, family: 4, bindAddress: addr.a4, bindPort: port, host: addr.b4, port: serverPort });
    expect(s.localPort).toBe(port);
    expect(await readAll(s)).toBe('from B');
    expect(peers.at(-1)).toBe(`::ffff:${addr.a4}|${port}`);
  });

  it('takes IPv4-mapped IPv6 literals (a dual-stack listener\'s remoteAddress) as IPv4 for family 4', async () => {
    const s = await connectTcp({ netns: a, family: 4, bindAddress: `::ffff:${addr.a4}`, host: `::FFFF:${addr.b4}`, port: serverPort });
    expect(s.localAddress).toBe(addr.a4);
    expect(s.remoteAddress).toBe(addr.b4);
    expect(await readAll(s)).toBe('from B');
  });

  it('binds a non-local address only with transparent + freebind', async () => {
    const spoof = `10.211.0.99`;
    const fd = createTcpSocket({ netns: a, family: 4, transparent: true, freebind: true, bindAddress: spoof });
    (await import('node:fs')).closeSync(fd);
    expect(() => createTcpSocket({ netns: a, family: 4, bindAddress: spoof })).toThrow(
      expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_NOT_AVAILABLE', syscall: 'bind' }),
    );
  });

  it('handles 200 concurrent connects, each in A with the mark, and leaks no fds', async () => {
    const before = await stableFdCount();
    const sockets = await Promise.all(
      Array.from({ length: 200 }, (_, i) => connectTcp({ netns: a, family: i % 2 ? 4 : 6, mark: 0x539, host: i % 2 ? addr.b4 : addr.b6, port: serverPort, timeoutMs: 10_000 })),
    );
    for (const s of sockets) expect(socketNetnsId(s)).toEqual(a.id);
    const replies = await Promise.all(sockets.map((s) => readAll(s)));
    expect(new Set(replies)).toEqual(new Set(['from B']));
    await Promise.all(sockets.map((s) => settled(s)));
    expect(await fdCountBackTo(before)).toBe(before);
  });

  it('maps failures to typed errors and leaks no fds', async () => {
    // Sockets of earlier tests finish closing first, so the count is stable.
    const before = await stableFdCount();
    await expect(connectTcp({ netns: a, family: 4, host: addr.b4, port: 1 })).rejects.toMatchObject({
      code: 'ERR_NETNS_CONNECTION_REFUSED',
      sysCode: 'ECONNREFUSED',
    });
    await expect(connectTcp({ netns: a, family: 4, host: '203.0.113.9', port: 80 })).rejects.toMatchObject({
      code: 'ERR_NETNS_UNREACHABLE',
    });
    const t0 = Date.now();
    await expect(connectTcp({ netns: a, family: 4, host: addr.b4, port: 9, timeoutMs: 300 })).rejects.toMatchObject({
      code: 'ERR_NETNS_TIMEOUT',
    });
    expect(Date.now() - t0).toBeLessThan(5000);
    const ac = new AbortController();
    const pending = connectTcp({ netns: a, family: 6, host: addr.b6, port: 9, signal: ac.signal });
    setTimeout(() => ac.abort(new Error('test abort')), 50);
    await expect(pending).rejects.toMatchObject({ code: 'ERR_NETNS_ABORTED' });
    await expect(connectTcp({ netns: a, family: 4, host: addr.b4, port: 9, signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'ERR_NETNS_ABORTED',
    });
    // A lazy signal: made only for a connect that waits, and honoured then (already aborted, or later).
    const lazy = new AbortController();
    let made = 0;
    const lazyPending = connectTcp({ netns: a, family: 4, host: addr.b4, port: 9, signal: () => (made++, lazy.signal) });
    expect(made).toBe(1);
    setTimeout(() => lazy.abort(new Error('test abort')), 50);
    await expect(lazyPending).rejects.toMatchObject({ code: 'ERR_NETNS_ABORTED' });
    await expect(connectTcp({ netns: a, family: 4, host: addr.b4, port: 9, signal: () => AbortSignal.abort() })).rejects.toMatchObject({
      code: 'ERR_NETNS_ABORTED',
    });
    const local = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
    local.on('connection', (c: Socket) => c.on('error', () => undefined).end('local'));
    try {
      const s = await connectTcp({ netns: a, family: 4, host: '127.0.0.1', port: (local.address() as AddressInfo).port, signal: () => (made++, lazy.signal) });
      expect(made).toBe(1);
      expect(await readAll(s)).toBe('local');
    } finally {
      await new Promise<void>((resolve) => local.close(() => resolve()));
    }
    expect(await fdCountBackTo(before)).toBe(before);
  });

  it('a refused connect is ERR_NETNS_CONNECTION_REFUSED with errno 111 naming host:port (never a bare poll error)', async () => {
    // Across the veth the RST arrives after connect() returned EINPROGRESS: the poller sees POLLERR
    // (libuv: UV_EBADF) and the errno must come from SO_ERROR. On loopback it is usually synchronous.
    const targets: [4 | 6, string, string][] = [
      [4, addr.b4, `${addr.b4}:1`],
      [6, addr.b6, `[${addr.b6}]:1`],
      [4, '127.0.0.1', '127.0.0.1:1'],
      [6, '::1', '[::1]:1'],
    ];
    for (const [family, host, shown] of targets) {
      const errors = await Promise.all(
        Array.from({ length: 25 }, () => connectTcp({ netns: a, family, mark: 0x539, host, port: 1, timeoutMs: 5000 }).then(() => undefined, (e: unknown) => e)),
      );
      for (const err of errors) {
        expect(err).toBeInstanceOf(NetnsError);
        expect(err).toMatchObject({ code: 'ERR_NETNS_CONNECTION_REFUSED', errno: 111, sysCode: 'ECONNREFUSED', syscall: 'connect' });
        expect((err as Error).message).toContain(shown);
        expect((err as Error).message).toMatch(/refused/i);
        expect((err as Error).message).not.toMatch(/poll/);
      }
    }
  });

  it('refuses hostnames and family mismatches: no DNS in the host netns, no silent fallback', async () => {
    const bad = async (o: Record<string, unknown>): Promise<string> => {
      try {
        await connectTcp({ netns: a, family: 4, host: addr.b4, port: serverPort, ...o } as never);
      } catch (e) {
        expect(e).toBeInstanceOf(NetnsError);
        return (e as NetnsError).code;
      }
      return 'connected';
    };
    expect(await bad({ host: 'localhost' })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(await bad({ host: addr.b6 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(await bad({ family: 5 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(await bad({ bindAddress: addr.a6 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(await bad({ mark: 2 ** 32 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(await bad({ timeoutMs: 0 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    const closed = openNetns(nsA.path);
    closed.close();
    expect(await bad({ netns: closed })).toBe('ERR_NETNS_BAD_FD');
  });
});
