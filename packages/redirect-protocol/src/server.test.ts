import { currentNetns, adoptNetnsFd, type Netns } from '@weir/netns';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeAck } from './codec.js';
import { ZdsError, ZdsNackError, ZdsNotConnectedError, ZdsProtocolError } from './errors.js';
import { Version } from './gen/zds_pb.js';
import { ZdsServer } from './server.js';
import { memoryPair, type MemorySocket } from './test-support/memory-socket.js';
import { FakeZtunnel, openFdCount, until } from './test-support/peers.js';

const info = { name: 'web-0', namespace: 'default', serviceAccount: 'web' };

/**
 * Tests that answer records by hand (or through the FakeZtunnel) do so within this; on a loaded
 * machine 300 ms was not always enough. Tests about the deadline set their own.
 */
const ACK_TIMEOUT_MS = 3000;

let server: ZdsServer;
let netns: Netns;
let disconnects: (ZdsError | undefined)[];
let fdsBefore: number;

function connect(): FakeZtunnel {
  const [agentEnd, ztunnelEnd] = memoryPair();
  server.attach(agentEnd);
  return new FakeZtunnel(ztunnelEnd);
}

beforeEach(() => {
  fdsBefore = openFdCount();
  server = new ZdsServer({ path: '/nonexistent/unused.sock', ackTimeoutMs: ACK_TIMEOUT_MS, keepaliveIntervalMs: 50 });
  disconnects = [];
  server.on('disconnect', (_c, err) => disconnects.push(err));
  netns = currentNetns();
});

afterEach(async () => {
  await server.close();
  netns.close();
  // Received fds are closed on later turns of the loop: wait for it rather than a fixed 20 ms.
  await until(() => openFdCount() === fdsBefore, 'the fds opened by the test to be closed', 5000).catch(() => {});
  expect(openFdCount()).toBe(fdsBefore);
});

describe('ZdsServer', () => {
  it('sends the snapshot after the hello: Add with the netns fd, Keep without, then SnapshotSent', async () => {
    await expect(server.addWorkload('a', info, netns)).rejects.toBeInstanceOf(ZdsNotConnectedError);
    server.keepWorkload('k', info);
    const acked: number[] = [];
    server.on('snapshotAcked', (c) => acked.push(c.id));
    const zt = connect();
    await new Promise((r) => setTimeout(r, 20));
    expect(zt.received).toEqual([]); // nothing before the hello
    await zt.hello();
    await until(() => acked.length === 1, 'snapshotAcked');
    expect(zt.kinds()).toEqual(['add:a', 'keep:k', 'snapshotSent']);
    expect(zt.received.map((r) => r.fds.length)).toEqual([1, 0, 0]);
    const got = adoptNetnsFd(zt.received[0]!.fds.pop()!);
    expect(got.sameAs(netns)).toBe(true);
    got.close();
    expect(zt.received[0]!.req).toEqual({ kind: 'add', uid: 'a', workloadInfo: info });
    expect(server.connected).toBe(true);
  });

  it('streams Adds to the newest connection only and Dels to all', async () => {
    const old = connect();
    await old.hello();
    await until(() => old.kinds().includes('snapshotSent'), 'first snapshot');
    const newer = connect();
    await newer.hello();
    await until(() => newer.kinds().includes('snapshotSent'), 'second snapshot');
    await server.addWorkload('p1', info, netns);
    expect(newer.kinds()).toEqual(['snapshotSent', 'add:p1']);
    expect(old.kinds()).toEqual(['snapshotSent']);
    await server.removeWorkload('p1');
    expect(newer.kinds()).toEqual(['snapshotSent', 'add:p1', 'del:p1']);
    expect(old.kinds()).toEqual(['snapshotSent', 'del:p1']);
    old.closeReceivedFds();
    newer.closeReceivedFds();
  });

  it('surfaces a nack as ZdsNackError with the reason, keeps the pod, and the connection stays', async () => {
    const zt = connect();
    await zt.hello();
    await until(() => server.connected, 'connected');
    zt.replies.set('p1', 'failed to bind 15001: address in use');
    const err = await server.addWorkload('p1', info, netns).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ZdsNackError);
    expect((err as ZdsNackError).reason).toBe('failed to bind 15001: address in use');
    expect((err as ZdsNackError).uid).toBe('p1');
    zt.replies.clear();
    await server.addWorkload('p1', info, netns); // the agent's retry
    expect(disconnects).toEqual([]);
    // a reconnect replays it: the pod stayed in the snapshot set
    const next = connect();
    await next.hello();
    await until(() => next.kinds().includes('snapshotSent'), 'snapshot');
    expect(next.kinds()).toEqual(['add:p1', 'snapshotSent']);
    zt.closeReceivedFds();
    next.closeReceivedFds();
  });

  it('rejects a closed netns handle without touching the snapshot set', async () => {
    const zt = connect();
    await zt.hello();
    // the (empty) snapshot arrives after `connected`: wait for it, or a loaded machine reads [] below
    await until(() => zt.received.some((r) => r.req.kind === 'snapshotSent'), 'snapshot');
    const gone = currentNetns();
    gone.close();
    const err = await server.addWorkload('x', info, gone).catch((e: unknown) => e);
    expect((err as ZdsError).code).toBe('ERR_ZDS_NETNS');
    expect(zt.received.map((r) => r.req.kind)).toEqual(['snapshotSent']);
  });

  it('reports snapshot nacks as nack events', async () => {
    server.keepWorkload('k1', info);
    const nacks: ZdsNackError[] = [];
    server.on('nack', (e) => nacks.push(e));
    const zt = connect();
    zt.replies.set('k1', 'unknown pod');
    await zt.hello();
    await until(() => zt.kinds().includes('snapshotSent'), 'snapshot');
    await until(() => nacks.length === 1, 'nack event');
    expect(nacks[0]!.uid).toBe('k1');
    expect(nacks[0]!.reason).toBe('unknown pod');
  });

  it('closes a connection whose first record is not ZdsHello{V1}', async () => {
    const bad = connect();
    // version NOT_USED written out explicitly (proto3 would otherwise encode it as nothing)
    await bad.socket.send(Buffer.from([0x08, Version.NOT_USED]));
    await until(() => disconnects.length === 1, 'disconnect');
    expect(disconnects[0]).toBeInstanceOf(ZdsProtocolError);
    expect((disconnects[0] as ZdsProtocolError).violation).toBe('bad-version');
    // The close reaches the peer's end of the pair a tick after the server's disconnect event.
    await until(() => bad.socket.closed, 'peer socket closed');
    expect(server.connected).toBe(false);
  });

  it('drops a connection that does not ack in time and rejects the pending Add', async () => {
    await server.close();
    server = new ZdsServer({ path: '/nonexistent/unused.sock', ackTimeoutMs: 300, keepaliveIntervalMs: 50 });
    server.on('disconnect', (_c, err) => disconnects.push(err));
    const zt = connect();
    await zt.hello();
    await until(() => server.connected, 'connected');
    zt.replies.set('slow', 'silent');
    const err = await server.addWorkload('slow', info, netns).catch((e: unknown) => e);
    expect((err as ZdsError).code).toBe('ERR_ZDS_ACK_TIMEOUT');
    expect(disconnects.map((e) => e?.code)).toEqual(['ERR_ZDS_ACK_TIMEOUT']);
    zt.closeReceivedFds();
  });

  it('treats an unsolicited record and an fd on an Ack as protocol errors, closing the fd', async () => {
    const a = connect();
    await a.hello();
    await until(() => server.connected, 'connected');
    await a.socket.send(encodeAck());
    await until(() => disconnects.length === 1, 'first disconnect');
    expect((disconnects[0] as ZdsProtocolError).violation).toBe('sequence');

    const b = connect();
    b.replies.set('p', 'silent');
    await b.hello();
    await until(() => server.connected, 'connected again');
    const pending = server.addWorkload('p', info, netns).catch((e: unknown) => e);
    await until(() => b.received.length === 1, 'the Add');
    await b.socket.send(encodeAck(), [netns.fd]);
    expect(((await pending) as ZdsProtocolError).violation).toBe('fd');
    b.closeReceivedFds();
  });

  it('keepalive drops a connection whose socket is gone without a close event', async () => {
    const zt = connect();
    await zt.hello();
    await until(() => server.connected, 'connected');
    // Simulate a socket that died silently: mark it closed, suppress events.
    const agentEnd = zt.socket.peer as MemorySocket;
    agentEnd.emit = () => true;
    agentEnd.closed = true;
    // No close event ever comes: only the 50 ms keepalive can find it (5 s: room for a loaded machine).
    await until(() => disconnects.length === 1, 'keepalive disconnect', 5000);
    expect(disconnects[0]?.code).toBe('ERR_ZDS_DISCONNECTED');
    expect(server.connected).toBe(false);
  });

  it('skips a snapshot entry removed before its turn, and the Del goes out after', async () => {
    // One record at a time, so that 'stays' is still queued (not yet sent) when it is removed.
    await server.close();
    server = new ZdsServer({ path: '/nonexistent/unused.sock', ackTimeoutMs: ACK_TIMEOUT_MS, keepaliveIntervalMs: 50, maxInFlight: 1 });
    server.keepWorkload('gone', info);
    server.keepWorkload('stays', info);
    const zt = connect();
    zt.replies.set('gone', 'silent');
    await zt.hello();
    await until(() => zt.received.length === 1, 'first snapshot record');
    const removal = server.removeWorkload('stays');
    await until(() => zt.received.length === 1, 'still one');
    // unblock: answer the silent record by hand
    await zt.socket.send(encodeAck());
    await removal;
    expect(zt.kinds()).toEqual(['keep:gone', 'snapshotSent', 'del:stays']);
  });

  it('pipelines Adds: up to maxInFlight sent before the first Ack, Acks matched to them in order', async () => {
    const zt = connect();
    await zt.hello();
    await until(() => server.connected, 'connected');
    for (let i = 0; i < 20; i++) zt.replies.set(`p${i}`, 'silent');
    const settled: string[] = [];
    const adds = Array.from({ length: 20 }, (_, i) =>
      server.addWorkload(`p${i}`, info, netns).then(
        () => settled.push(`p${i}:ok`),
        (e: unknown) => settled.push(`p${i}:${(e as ZdsNackError).reason}`),
      ),
    );
    await until(() => zt.received.length === 1 + 16, '16 Adds in flight');
    await new Promise((r) => setTimeout(r, 30));
    expect(zt.kinds().slice(1)).toEqual(Array.from({ length: 16 }, (_, i) => `add:p${i}`));
    // ztunnel answers in order, one Ack per record: an ack, then a nack.
    await zt.socket.send(encodeAck());
    await zt.socket.send(encodeAck('no such service account'));
    await until(() => settled.length === 2, 'two settled');
    expect(settled).toEqual(['p0:ok', 'p1:no such service account']);
    await until(() => zt.received.length === 1 + 18, 'two more sent once two were acked');
    for (let i = 2; i < 20; i++) await zt.socket.send(encodeAck());
    await Promise.all(adds);
    expect(settled.slice(2)).toEqual(Array.from({ length: 18 }, (_, i) => `p${i + 2}:ok`));
    expect(disconnects).toEqual([]);
    await until(() => zt.received.length === 21, 'every Add delivered');
    zt.closeReceivedFds();
  });

  it('the ack deadline runs for the oldest record in flight, from when it became the oldest', async () => {
    // A 2 s deadline and answers 1.2 s apart: b is answered 2.4 s after it was sent (past a deadline
    // run from its send) but 1.2 s after it became the oldest, leaving 0.8 s for a loaded machine.
    await server.close();
    server = new ZdsServer({ path: '/nonexistent/unused.sock', ackTimeoutMs: 2000, keepaliveIntervalMs: 50 });
    server.on('disconnect', (_c, err) => disconnects.push(err));
    const zt = connect();
    await zt.hello();
    await until(() => server.connected, 'connected');
    for (const uid of ['a', 'b', 'c']) zt.replies.set(uid, 'silent');
    const results = ['a', 'b', 'c'].map((uid) => server.addWorkload(uid, info, netns).then(() => 'ok', (e: unknown) => (e as ZdsError).code));
    await until(() => zt.received.length === 4, 'three Adds in flight');
    await new Promise((r) => setTimeout(r, 1200));
    await zt.socket.send(encodeAck());
    await new Promise((r) => setTimeout(r, 1200));
    await zt.socket.send(encodeAck());
    // c never: its 2 s run from b's Ack.
    expect(await Promise.all(results)).toEqual(['ok', 'ok', 'ERR_ZDS_ACK_TIMEOUT']);
    expect(disconnects.map((e) => e?.code)).toEqual(['ERR_ZDS_ACK_TIMEOUT']);
    expect(disconnects[0]?.message).toMatch(/did not ack add uid=c within 2000 ms/);
    zt.closeReceivedFds();
  });

  it('refuses a maxInFlight that is not a positive integer', () => {
    expect(() => new ZdsServer({ maxInFlight: 0 })).toThrow(expect.objectContaining({ code: 'ERR_ZDS_INVALID_ARGUMENT' }));
  });
});
