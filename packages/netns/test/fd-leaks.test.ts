// Opening, adopting and closing namespaces and sockets, many times over, leaks no fds.
import { openSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adoptNetnsFd, connectTcp, createTcpListener, currentNetns, listenTcp, openNetns, type Netns } from '../src/index.js';
import { TestNetns, countFds, fdCountBackTo, requireRootAndTools, stableFdCount } from './helpers.js';

let nsA: TestNetns;
let home: Netns;

beforeAll(() => {
  requireRootAndTools();
  home = currentNetns();
  nsA = new TestNetns('F');
});

afterAll(() => {
  nsA?.delete();
  home?.close();
});

it('1,000 open/close cycles of a netns leak no fds (and failures leak none either)', async () => {
  const before = await stableFdCount();
  for (let i = 0; i < 1000; i++) {
    const ns = openNetns(nsA.path);
    expect(ns.fd).toBeGreaterThan(2);
    ns.close();
    const adopted = adoptNetnsFd(openSync(nsA.path, 'r'));
    adopted.close();
    expect(() => openNetns('/proc/self/ns/uts')).toThrow();
    expect(() => adoptNetnsFd(openSync('/proc/self/ns/ipc', 'r'))).toThrow();
  }
  expect(countFds()).toBe(before);
});

it('1,000 listener create/close cycles inside a netns leak no fds and never move the thread', async () => {
  const a = openNetns(nsA.path);
  const before = await stableFdCount();
  const { closeSync } = await import('node:fs');
  for (let i = 0; i < 1000; i++) {
    closeSync(createTcpListener({ netns: a, host: '127.0.0.1', port: 0, mark: 0x539, reusePort: true }));
  }
  const held = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
  const port = (held.address() as AddressInfo).port;
  held.on('connection', (s) => s.destroy());
  for (let i = 0; i < 200; i++) {
    expect(() => createTcpListener({ netns: a, host: '127.0.0.1', port })).toThrow(expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_IN_USE' }));
    const s = await connectTcp({ netns: a, family: 4, host: '127.0.0.1', port });
    await new Promise<void>((resolve) => {
      s.once('close', () => resolve());
      s.destroy();
    });
  }
  await new Promise<void>((resolve) => held.close(() => resolve()));
  expect(await fdCountBackTo(before)).toBe(before);
  const now = currentNetns();
  expect(now.sameAs(home)).toBe(true);
  now.close();
  a.close();
});
