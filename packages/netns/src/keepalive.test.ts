import { closeSync, openSync } from 'node:fs';
import * as net from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetnsError } from './errors.js';
import { setTcpKeepalive, tcpKeepalive } from './keepalive.js';
import { currentNetns } from './netns.js';
import { createUdpSocket } from './udp.js';

describe('setTcpKeepalive', () => {
  const server = net.createServer();
  const accepted: net.Socket[] = [];
  let client: net.Socket;
  beforeAll(async () => {
    server.on('connection', (s) => accepted.push(s));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await once(client, 'connect');
    while (accepted.length === 0) await new Promise((r) => setImmediate(r));
  });
  afterAll(() => {
    client.destroy();
    for (const s of accepted) s.destroy();
    server.close();
  });

  it('sets SO_KEEPALIVE and all three timers on a connected socket, read back with getsockopt', () => {
    expect(tcpKeepalive(client).enabled).toBe(false);
    setTcpKeepalive(client, { idleS: 180, intervalS: 180, count: 9 });
    expect(tcpKeepalive(client)).toEqual({ enabled: true, idleS: 180, intervalS: 180, count: 9 });
    const fd = (accepted[0] as unknown as { _handle: { fd: number } })._handle.fd;
    setTcpKeepalive(fd, { idleS: 7, intervalS: 3, count: 2 });
    expect(tcpKeepalive(accepted[0]!)).toEqual({ enabled: true, idleS: 7, intervalS: 3, count: 2 });
  });

  it("differs from Node's setKeepAlive, which leaves interval and count to libuv", () => {
    const s = accepted[0]!;
    s.setKeepAlive(true, 180_000);
    const node = tcpKeepalive(s);
    expect(node.idleS).toBe(180);
    expect([node.intervalS, node.count]).not.toEqual([180, 9]);
  });

  it.each([
    [{ idleS: 0, intervalS: 180, count: 9 }, /idleS \(TCP_KEEPIDLE\) must be an integer in 1\.\.32767, got 0/],
    [{ idleS: 180, intervalS: 1.5, count: 9 }, /intervalS \(TCP_KEEPINTVL\).*got 1\.5/],
    [{ idleS: 180, intervalS: 180, count: 128 }, /count \(TCP_KEEPCNT\) must be an integer in 1\.\.127, got 128/],
    [{ idleS: 180, intervalS: 180 }, /count .*got undefined/],
  ])('rejects %o with ERR_NETNS_INVALID_ARGUMENT', (opts, message) => {
    const err = (() => {
      try {
        setTcpKeepalive(client, opts as never);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(NetnsError);
    expect(err).toMatchObject({ code: 'ERR_NETNS_INVALID_ARGUMENT', message: expect.stringMatching(message) as unknown });
  });

  it('fails with ERR_NETNS_BAD_FD for a socket without fd, a file, a UDP socket', () => {
    const ka = { idleS: 1, intervalS: 1, count: 1 };
    expect(() => setTcpKeepalive(new net.Socket(), ka)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
    const file = openSync('/dev/null', 'r');
    const netns = currentNetns();
    const udp = createUdpSocket({ netns, family: 4, bindAddress: '127.0.0.1', bindPort: 0 });
    try {
      expect(() => setTcpKeepalive(file, ka)).toThrow(
        expect.objectContaining({ code: 'ERR_NETNS_BAD_FD', sysCode: 'ENOTSOCK', syscall: 'setsockopt(TCP_KEEPIDLE)' }),
      );
      expect(() => setTcpKeepalive(udp, ka)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
      expect(() => tcpKeepalive(file)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
    } finally {
      closeSync(file);
      closeSync(udp);
      netns.close();
    }
  });
});
