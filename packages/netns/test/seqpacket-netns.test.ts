// A netns fd sent over SEQPACKET with a record arrives with that record and names the same netns.
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adoptNetnsFd, connectSeqpacket, listenSeqpacket, listenTcp, openNetns, socketNetnsId, type SeqpacketSocket } from '../src/index.js';
import { TestNetns, requireRootAndTools } from './helpers.js';

let nsA: TestNetns;
let dir: string;

beforeAll(() => {
  requireRootAndTools();
  nsA = new TestNetns('S');
  dir = mkdtempSync(join(tmpdir(), 'weir-seqns-'));
});

afterAll(() => {
  nsA?.delete();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it('carries a netns fd with its record; the receiver adopts it as the same netns and can use it', async () => {
  const server = listenSeqpacket(join(dir, 'zds.sock'));
  const accepted = new Promise<SeqpacketSocket>((resolve) => server.once('connection', resolve));
  const client = await connectSeqpacket(server.path);
  const agent = await accepted;
  try {
    const sent = openNetns(nsA.path);
    const record = Buffer.from('AddWorkload uid=pod-1');
    const received = new Promise<[Buffer, number[]]>((resolve) => client.once('message', (d: Buffer, fds: number[]) => resolve([d, fds])));
    await agent.send(record, [sent.fd]);
    sent.close();

    const [data, fds] = await received;
    expect(data.equals(record)).toBe(true);
    expect(fds).toHaveLength(1);
    const got = adoptNetnsFd(fds[0]!);
    const check = openNetns(nsA.path);
    try {
      expect(got.id).toEqual(check.id);
      expect(got.sameAs(check)).toBe(true);
      // Usable: a listener made with the received fd lives in A.
      const server2 = await listenTcp({ netns: got, host: '127.0.0.1', port: 0 });
      expect(socketNetnsId(server2)).toEqual(check.id);
      expect((server2.address() as AddressInfo).port).toBeGreaterThan(0);
      await new Promise<void>((resolve) => server2.close(() => resolve()));
    } finally {
      got.close();
      check.close();
    }
  } finally {
    client.close();
    agent.close();
    await server.close();
  }
});
