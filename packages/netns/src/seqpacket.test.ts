import { closeSync, existsSync, fstatSync, mkdtempSync, openSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { NetnsError, connectSeqpacket, listenSeqpacket, type SeqpacketServer, type SeqpacketSocket } from './index.js';

const dir = mkdtempSync(join(tmpdir(), 'weir-seq-'));
let n = 0;
const path = (): string => join(dir, `s${n++}.sock`);
const cleanup: Array<() => unknown> = [];

afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function countFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function closedEvent(s: SeqpacketSocket): Promise<unknown> {
  return s.closed ? Promise.resolve() : new Promise((resolve) => s.once('close', resolve));
}

async function pair(o: { mode?: number } = {}): Promise<{ server: SeqpacketServer; client: SeqpacketSocket; peer: SeqpacketSocket; path: string }> {
  const p = path();
  const server = listenSeqpacket(p, o);
  const accepted = new Promise<SeqpacketSocket>((resolve) => server.once('connection', resolve));
  const client = await connectSeqpacket(p);
  const peer = await accepted;
  cleanup.push(() => server.close(), () => client.close(), () => peer.close());
  return { server, client, peer, path: p };
}

interface Received {
  data: Buffer;
  fds: number[];
}

function collect(s: SeqpacketSocket, count: number): Promise<Received[]> {
  const out: Received[] = [];
  return new Promise((resolve) => {
    s.on('message', (data: Buffer, fds: number[]) => {
      out.push({ data, fds });
      if (out.length === count) resolve(out);
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('SOCK_SEQPACKET records', () => {
  it('delivers whole records in order, both ways, including an empty one and a 64 KiB one', async () => {
    const { client, peer } = await pair();
    const sizes = [1, 0, 1000, 65536, 3];
    const got = collect(peer, sizes.length);
    for (const [i, size] of sizes.entries()) await client.send(Buffer.alloc(size, i + 1));
    const records = await got;
    expect(records.map((r) => r.data.length)).toEqual(sizes);
    records.forEach((r, i) => expect(r.data.every((b) => b === i + 1)).toBe(true));
    const back = collect(client, 1);
    await peer.send(new TextEncoder().encode('ack'));
    expect((await back)[0]!.data.toString()).toBe('ack');
  });

  it('passes fds with a record (SCM_RIGHTS); the receiver owns fresh fds to the same files', async () => {
    const { client, peer } = await pair();
    const file = join(dir, 'passed');
    writeFileSync(file, 'x');
    const f1 = openSync(file, 'r');
    const f2 = openSync('/proc/self/ns/net', 'r');
    const got = collect(peer, 1);
    await client.send(Buffer.from('with fds'), [f1, f2]);
    const [r] = await got;
    expect(r!.data.toString()).toBe('with fds');
    expect(r!.fds).toHaveLength(2);
    expect(r!.fds).not.toContain(f1);
    expect(fstatSync(r!.fds[0]!).ino).toBe(fstatSync(f1).ino);
    expect(fstatSync(r!.fds[1]!).ino).toBe(fstatSync(f2).ino);
    for (const fd of [...r!.fds, f1, f2]) closeSync(fd);
  });

  it('starts reading only when a message listener is added, so nothing is lost before', async () => {
    const { client, peer } = await pair();
    await client.send(Buffer.from('early'));
    await sleep(50);
    const got = collect(peer, 1);
    expect((await got)[0]!.data.toString()).toBe('early');
  });

  it('loses nothing to a consumer that awaits one message at a time (reads only while someone listens)', async () => {
    const { client, peer } = await pair();
    for (let i = 0; i < 5; i++) await peer.send(Buffer.from(`r${i}`));
    const got: string[] = [];
    for (let i = 0; i < 5; i++) {
      const [data] = (await once(client, 'message')) as [Buffer];
      got.push(data.toString());
      await sleep(5);
    }
    expect(got).toEqual(['r0', 'r1', 'r2', 'r3', 'r4']);
  });

  it('reports a record over 64 KiB as ERR_SEQPACKET_TRUNCATED, closes its fds and the socket', async () => {
    const { client, peer } = await pair();
    await sleep(20);
    const before = countFds();
    const fd = openSync('/proc/self/ns/net', 'r');
    const messages: Buffer[] = [];
    peer.on('message', (d: Buffer) => messages.push(d));
    const failed = new Promise<NetnsError>((resolve) => peer.once('error', resolve));
    const closed = new Promise((resolve) => peer.once('close', resolve));
    await client.send(Buffer.alloc(70_000), [fd]);
    closeSync(fd);
    const err = await failed;
    await closed;
    expect(err).toBeInstanceOf(NetnsError);
    expect(err.code).toBe('ERR_SEQPACKET_TRUNCATED');
    expect(err.message).toMatch(/longer than 65536 bytes \(MSG_TRUNC\)/);
    expect(messages).toHaveLength(0);
    expect(peer.closed).toBe(true);
    // The peer's own fd is gone and the received fd was closed, not leaked.
    expect(countFds()).toBe(before - 1);
  });

  it('pushes back on a sender whose peer is paused, keeps order, and lets the caller close passed fds at once', async () => {
    const { client, peer } = await pair();
    peer.pause();
    const received: Received[] = [];
    peer.on('message', (data: Buffer, fds: number[]) => received.push({ data, fds }));
    const record = Buffer.alloc(32 * 1024);
    const sends: Array<Promise<void>> = [];
    let settled = 0;
    for (let i = 0; i < 64; i++) {
      const rec = Buffer.from(record);
      rec.writeUInt32BE(i, 0);
      const fd = openSync('/proc/self/ns/net', 'r');
      const p = client.send(rec, [fd]);
      closeSync(fd); // our fd; a queued send holds its own duplicate
      sends.push(p.then(() => void settled++));
    }
    await sleep(100);
    expect(settled).toBeGreaterThan(0);
    expect(settled).toBeLessThan(64); // the kernel queue is full: the rest wait
    const cpu0 = process.cpuUsage();
    await sleep(300);
    const cpu = process.cpuUsage(cpu0);
    // Waiting for room is not busy polling.
    expect(cpu.user + cpu.system).toBeLessThan(150_000);
    peer.resume();
    await Promise.all(sends);
    while (received.length < 64) await sleep(10);
    expect(received.map((r) => r.data.readUInt32BE(0))).toEqual([...Array(64).keys()]);
    for (const r of received) {
      expect(r.fds).toHaveLength(1);
      closeSync(r.fds[0]!);
    }
  });

  it('emits close on the peer when one side closes; sends after close reject ERR_SEQPACKET_CLOSED', async () => {
    const { client, peer } = await pair();
    peer.on('message', () => undefined);
    const closed = new Promise((resolve) => peer.once('close', resolve));
    client.close();
    client.close();
    await closed;
    expect(peer.closed).toBe(true);
    await expect(client.send(Buffer.from('x'))).rejects.toMatchObject({ code: 'ERR_SEQPACKET_CLOSED' });
    await expect(peer.send(Buffer.from('x'))).rejects.toMatchObject({ code: 'ERR_SEQPACKET_CLOSED' });
  });

  it('delivers what the peer sent before it closed with our records unread, then reports the reset', async () => {
    const { client, peer } = await pair();
    await client.send(Buffer.from('unread by peer'));
    await peer.send(Buffer.from('one'));
    await peer.send(Buffer.from('two'));
    peer.close();
    await sleep(20);
    const messages: string[] = [];
    const errors: NetnsError[] = [];
    client.on('error', (e: NetnsError) => errors.push(e));
    client.on('message', (d: Buffer) => messages.push(d.toString()));
    await closedEvent(client);
    expect(messages).toEqual(['one', 'two']);
    expect(errors).toHaveLength(1);
    expect(errors[0]!.code).toBe('ERR_SEQPACKET_CLOSED');
    expect(errors[0]!.sysCode).toBe('ECONNRESET');

    // The same while already reading (the reset then arrives as POLLERR on the watched fd).
    const other = await pair();
    const seen: string[] = [];
    const failed = new Promise<NetnsError>((resolve) => other.client.once('error', resolve));
    other.client.on('message', (d: Buffer) => seen.push(d.toString()));
    await other.client.send(Buffer.from('unread by peer'));
    await other.peer.send(Buffer.from('last words'));
    other.peer.close();
    expect((await failed).code).toBe('ERR_SEQPACKET_CLOSED');
    await closedEvent(other.client);
    expect(seen).toEqual(['last words']);
  });

  it('rejects queued sends when closed locally, and a send to a vanished peer', async () => {
    const { client, peer } = await pair();
    peer.pause();
    const pending: Array<Promise<unknown>> = [];
    for (let i = 0; i < 64; i++) pending.push(client.send(Buffer.alloc(32 * 1024)).catch((e: unknown) => e));
    await sleep(20);
    client.close();
    const results = await Promise.all(pending);
    const rejected = results.filter((r) => r instanceof NetnsError);
    expect(rejected.length).toBeGreaterThan(0);
    expect(rejected.every((e) => (e as NetnsError).code === 'ERR_SEQPACKET_CLOSED')).toBe(true);

    const other = await pair();
    other.peer.close();
    await sleep(20);
    await expect(other.client.send(Buffer.from('x'))).rejects.toMatchObject({ code: 'ERR_SEQPACKET_CLOSED' });
  });

  it('is idle while idle: no busy polling on an open connection', async () => {
    const { client, peer } = await pair();
    client.on('message', () => undefined);
    peer.on('message', () => undefined);
    const cpu0 = process.cpuUsage();
    await sleep(300);
    const cpu = process.cpuUsage(cpu0);
    expect(cpu.user + cpu.system).toBeLessThan(150_000);
  });

  it('rejects a record larger than the socket send buffer with ERR_SEQPACKET_MESSAGE_TOO_LARGE, and stays open', async () => {
    const { client, peer } = await pair();
    await expect(client.send(Buffer.alloc(4 * 1024 * 1024))).rejects.toMatchObject({
      code: 'ERR_SEQPACKET_MESSAGE_TOO_LARGE',
      sysCode: 'EMSGSIZE',
    });
    expect(client.closed).toBe(false);
    const got = collect(peer, 1);
    await client.send(Buffer.from('still fine'));
    expect((await got)[0]!.data.toString()).toBe('still fine');
  });

  it('rejects bad send arguments', async () => {
    const { client } = await pair();
    await expect(client.send('text' as never)).rejects.toMatchObject({ code: 'ERR_NETNS_INVALID_ARGUMENT' });
    await expect(client.send(Buffer.from('x'), [-1])).rejects.toMatchObject({ code: 'ERR_NETNS_INVALID_ARGUMENT' });
    const fd = openSync('/proc/self/stat', 'r');
    closeSync(fd);
    await expect(client.send(Buffer.from('x'), [fd])).rejects.toMatchObject({ code: 'ERR_NETNS_BAD_FD' });
  });

  it('leaks no fds over 200 connect/send/close cycles', async () => {
    const p = path();
    const server = listenSeqpacket(p);
    cleanup.push(() => server.close());
    server.on('connection', (s: SeqpacketSocket) => {
      s.on('message', (d: Buffer, fds: number[]) => {
        for (const fd of fds) closeSync(fd);
        void s.send(d).finally(() => s.close());
      });
    });
    await sleep(20);
    const before = countFds();
    for (let i = 0; i < 200; i++) {
      const c = await connectSeqpacket(p);
      // A lasting listener: the peer's close is noticed while reading, as with a Node stream.
      const echoed = new Promise<Buffer>((resolve) => c.on('message', resolve));
      await c.send(Buffer.from(`n${i}`), [0]);
      expect((await echoed).toString()).toBe(`n${i}`);
      await closedEvent(c);
    }
    await sleep(20);
    expect(countFds()).toBe(before);
  });
});

describe('listenSeqpacket / connectSeqpacket', () => {
  it('applies the mode (default 0600) and removes its own socket file on close', async () => {
    const a = await pair();
    expect(statSync(a.path).mode & 0o777).toBe(0o600);
    expect(statSync(a.path).isSocket()).toBe(true);
    const b = await pair({ mode: 0o660 });
    expect(statSync(b.path).mode & 0o777).toBe(0o660);
    await a.server.close();
    expect(existsSync(a.path)).toBe(false);
    expect(a.server.path).toBe(a.path);
  });

  it('replaces a stale socket file, refuses a live one and a non-socket file', async () => {
    const p = path();
    const live = listenSeqpacket(p);
    cleanup.push(() => live.close());
    expect(() => listenSeqpacket(p)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_IN_USE' }));

    // A crashed listener leaves its socket file behind; moving the file away from its owner models that.
    const dead = listenSeqpacket(path());
    const crashed = join(dir, 'crashed.sock');
    renameSync(dead.path, crashed);
    await dead.close();
    expect(existsSync(crashed)).toBe(true);
    await expect(connectSeqpacket(crashed)).rejects.toMatchObject({ code: 'ERR_NETNS_CONNECTION_REFUSED' });
    const revived = listenSeqpacket(crashed);
    cleanup.push(() => revived.close());
    const c = await connectSeqpacket(crashed);
    c.close();

    const file = join(dir, 'regular');
    writeFileSync(file, 'keep me');
    expect(() => listenSeqpacket(file)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_ADDRESS_IN_USE' }));
    expect(existsSync(file)).toBe(true);
  });

  it('fails to connect to a missing path with ERR_NETNS_NOT_FOUND and to a too-long path with a typed error', async () => {
    await expect(connectSeqpacket(join(dir, 'missing.sock'))).rejects.toMatchObject({ code: 'ERR_NETNS_NOT_FOUND' });
    await expect(connectSeqpacket(join(dir, 'x'.repeat(200)))).rejects.toMatchObject({ code: 'ERR_NETNS_INVALID_ARGUMENT' });
    expect(() => listenSeqpacket(join(dir, 'x'.repeat(200)))).toThrow(NetnsError);
  });

  it('accepts several clients; a server without connection listeners closes them', async () => {
    const p = path();
    const server = listenSeqpacket(p);
    cleanup.push(() => server.close());
    const accepted: SeqpacketSocket[] = [];
    server.on('connection', (s: SeqpacketSocket) => {
      accepted.push(s);
      cleanup.push(() => s.close());
    });
    const clients = await Promise.all([1, 2, 3].map(() => connectSeqpacket(p)));
    cleanup.push(() => clients.forEach((c) => c.close()));
    while (accepted.length < 3) await sleep(5);
    expect(accepted).toHaveLength(3);

    server.removeAllListeners('connection');
    const lonely = await connectSeqpacket(p);
    lonely.on('message', () => undefined);
    await closedEvent(lonely);
  });
});
