// A listener made for netns A accepts connections made inside A and is unreachable from the host.
import type { AddressInfo, Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NetnsError,
  connectTcp,
  createTcpListener,
  currentNetns,
  listenTcp,
  openNetns,
  socketLocalAddress,
  socketNetnsId,
  type Netns,
} from '../src/index.js';
import { TestNetns, freeHostPort, hostConnect, readAll, requireRootAndTools } from './helpers.js';

let nsA: TestNetns;
let a: Netns;
let home: Netns;

beforeAll(() => {
  requireRootAndTools('socat');
  home = currentNetns();
  nsA = new TestNetns('L');
  a = openNetns(nsA.path);
});

afterAll(() => {
  a?.close();
  nsA?.delete();
  // The JS thread never left its namespace.
  const now = currentNetns();
  expect(now.sameAs(home)).toBe(true);
  now.close();
  home?.close();
});

function greet(server: Server, text: string): void {
  server.on('connection', (s: Socket) => {
    s.on('error', () => undefined);
    s.end(text);
  });
}

async function closeServer(server: Server): Promise<void> {
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

describe('listenTcp in a netns', () => {
  it('accepts a connection made inside A and is not reachable from the host namespace', async () => {
    const port = await freeHostPort();
    const server = await listenTcp({ netns: a, host: '0.0.0.0', port });
    let accepted = 0;
    server.on('connection', () => accepted++);
    greet(server, 'hello from A');
    try {
      expect(socketNetnsId(server)).toEqual(a.id);
      expect((server.address() as AddressInfo).port).toBe(port);

      // A client no one here wrote, run inside A.
      expect(await nsA.execAsync('socat', ['-u', `TCP:127.0.0.1:${port}`, '-'])).toBe('hello from A');
      // And our own outbound socket made for A.
      const s = await connectTcp({ netns: a, family: 4, host: '127.0.0.1', port });
      expect(await readAll(s)).toBe('hello from A');
      expect(accepted).toBe(2);

      // The same port on the host loopback reaches nothing of ours.
      expect(await hostConnect('127.0.0.1', port)).toBe('ECONNREFUSED');
      expect(accepted).toBe(2);
    } finally {
      await closeServer(server);
    }
  });

  it('listens dual-stack on :: and honours ipv6Only', async () => {
    const server = await listenTcp({ netns: a, host: '::', port: 0 });
    greet(server, 'dual');
    const port = (server.address() as AddressInfo).port;
    try {
      expect(await nsA.execAsync('socat', ['-u', `TCP4:127.0.0.1:${port}`, '-'])).toBe('dual');
      expect(await nsA.execAsync('socat', ['-u', `TCP6:[::1]:${port}`, '-'])).toBe('dual');
    } finally {
      await closeServer(server);
    }
    const v6only = await listenTcp({ netns: a, host: '::', port: 0, ipv6Only: true });
    const port6 = (v6only.address() as AddressInfo).port;
    try {
      await expect(nsA.execAsync('socat', ['-u', `TCP4:127.0.0.1:${port6}`, '-'])).rejects.toThrow(/Connection refused/);
    } finally {
      await closeServer(v6only);
    }
  });

  it('applies mark, transparent and reusePort (two listeners share a port only with reusePort)', async () => {
    const first = await listenTcp({ netns: a, host: '0.0.0.0', port: 0, mark: 0x539, transparent: true, reusePort: true });
    const port = (first.address() as AddressInfo).port;
    const second = await listenTcp({ netns: a, host: '0.0.0.0', port, mark: 0x539, transparent: true, reusePort: true });
    try {
      let err: unknown;
      try {
        createTcpListener({ netns: a, host: '0.0.0.0', port });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NetnsError);
      expect((err as NetnsError).code).toBe('ERR_NETNS_ADDRESS_IN_USE');
      expect((err as NetnsError).errno).toBe(98);
      expect((err as NetnsError).message).toContain(`0.0.0.0:${port}`);
      expect((err as NetnsError).message).toContain(nsA.path);
    } finally {
      await closeServer(first);
      await closeServer(second);
    }
  });

  it('reports a port in use as ERR_NETNS_ADDRESS_IN_USE and leaves the thread in its own netns', async () => {
    const server = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
    const port = (server.address() as AddressInfo).port;
    try {
      await expect(listenTcp({ netns: a, host: '127.0.0.1', port })).rejects.toMatchObject({
        code: 'ERR_NETNS_ADDRESS_IN_USE',
        syscall: 'bind',
        sysCode: 'EADDRINUSE',
      });
      const now = currentNetns();
      expect(now.sameAs(home)).toBe(true);
      now.close();
    } finally {
      await closeServer(server);
    }
  });

  it('reports an address A does not have as ERR_NETNS_ADDRESS_NOT_AVAILABLE', () => {
    expect(() => createTcpListener({ netns: a, host: '192.0.2.77', port: 0 })).toThrow(
      expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_NOT_AVAILABLE' }),
    );
  });

  it('createTcpListener returns a nonblocking listening fd whose port socketLocalAddress reads', async () => {
    const fd = createTcpListener({ netns: a, host: '127.0.0.1', port: 0, backlog: 16 });
    const local = socketLocalAddress(fd);
    expect(local.family).toBe(4);
    expect(local.address).toBe('127.0.0.1');
    expect(local.port).toBeGreaterThan(0);
    const { createServer } = await import('node:net');
    const server = createServer();
    greet(server, 'raw fd');
    await new Promise<void>((resolve) => server.listen({ fd }, resolve));
    try {
      expect(await nsA.execAsync('socat', ['-u', `TCP:127.0.0.1:${local.port}`, '-'])).toBe('raw fd');
    } finally {
      await closeServer(server);
    }
  });

  it('rejects bad input with typed errors', () => {
    const bad = (o: Record<string, unknown>): string | undefined => {
      try {
        createTcpListener({ netns: a, host: '127.0.0.1', port: 0, ...o } as never);
      } catch (e) {
        expect(e).toBeInstanceOf(NetnsError);
        return (e as NetnsError).code;
      }
      return undefined;
    };
    expect(bad({ host: 'localhost' })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ port: 70000 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ port: 1.5 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ mark: -1 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ backlog: 0 })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(bad({ netns: { fd: 3 } })).toBe('ERR_NETNS_INVALID_ARGUMENT');
    const closed = openNetns(nsA.path);
    closed.close();
    expect(bad({ netns: closed })).toBe('ERR_NETNS_BAD_FD');
  });
});
