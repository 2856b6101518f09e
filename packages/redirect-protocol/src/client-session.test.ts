import { openSync } from 'node:fs';
import { currentNetns, type Netns } from '@weir/netns';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClientSession, type ZdsAddEvent, type ZdsHandler } from './client-session.js';
import { decodeAck, decodeHello, encodeRequest, type ZdsRequest } from './codec.js';
import { ZdsProtocolError } from './errors.js';
import { silentLogger } from './logger.js';
import { memoryPair, type MemorySocket } from './test-support/memory-socket.js';
import { openFdCount, until } from './test-support/peers.js';

const info = { name: 'web-0', namespace: 'default', serviceAccount: 'web' };

/** Records handler calls; uids in `fail` are nacked with "cannot start <uid>". */
class RecordingHandler implements ZdsHandler {
  calls: string[] = [];
  adds: ZdsAddEvent[] = [];
  fail = new Set<string>();
  async onAdd(ev: ZdsAddEvent): Promise<void> {
    this.calls.push(`add:${ev.uid}`);
    this.adds.push(ev);
    if (this.fail.has(ev.uid)) throw new Error(`cannot start ${ev.uid}`);
  }
  async onKeep(uid: string): Promise<void> {
    this.calls.push(`keep:${uid}`);
  }
  async onDel(uid: string): Promise<void> {
    this.calls.push(`del:${uid}`);
  }
  async onSnapshotSent(): Promise<void> {
    this.calls.push('snapshotSent');
  }
}

let agent: MemorySocket;
let session: ClientSession;
let handler: RecordingHandler;
let replies: string[];
let netns: Netns;
let fdsBefore: number;

beforeEach(async () => {
  fdsBefore = openFdCount();
  netns = currentNetns();
  const [a, z] = memoryPair();
  agent = a;
  replies = [];
  let first = true;
  agent.on('message', (data: Buffer) => {
    if (first) {
      first = false;
      expect(decodeHello(data, 0)).toEqual({ version: 1 });
      replies.push('hello');
    } else {
      replies.push(decodeAck(data, 0).error);
    }
  });
  handler = new RecordingHandler();
  session = new ClientSession(z, handler, silentLogger);
  await session.hello();
  await until(() => replies.length === 1, 'hello');
});

afterEach(async () => {
  session.close();
  for (const a of handler.adds) a.netns.close();
  netns.close();
  await new Promise((r) => setTimeout(r, 20));
  expect(openFdCount()).toBe(fdsBefore);
});

async function send(req: ZdsRequest | Uint8Array, fds: number[] = []): Promise<void> {
  await agent.send(req instanceof Uint8Array ? req : encodeRequest(req), fds);
}

async function violation(): Promise<ZdsProtocolError> {
  const err = await session.done;
  expect(err).toBeInstanceOf(ZdsProtocolError);
  await until(() => agent.closed, 'the session to close the socket');
  return err as ZdsProtocolError;
}

describe('ClientSession', () => {
  it('turns records into handler calls and acks each one, handing over the netns', async () => {
    await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd]);
    await send({ kind: 'keep', uid: 'k' });
    await send({ kind: 'del', uid: 'd' });
    await send({ kind: 'snapshotSent' });
    await send({ kind: 'add', uid: 'b', workloadInfo: info }, [netns.fd]);
    await until(() => replies.length === 6, 'five acks');
    expect(handler.calls).toEqual(['add:a', 'keep:k', 'del:d', 'snapshotSent', 'add:b']);
    expect(replies.slice(1)).toEqual(['', '', '', '', '']);
    expect(handler.adds[0]!.netns.sameAs(netns)).toBe(true);
    expect(handler.adds[0]!.netns.fd).not.toBe(netns.fd);
    expect(handler.adds[0]!.workloadInfo).toEqual(info);
    expect(session.acked).toBe(5);
  });

  it('nacks with the handler error message and keeps the connection', async () => {
    handler.fail.add('a');
    await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd]);
    await send({ kind: 'del', uid: 'a' });
    await until(() => replies.length === 3, 'two answers');
    expect(replies.slice(1)).toEqual(['cannot start a', '']);
    expect(agent.closed).toBe(false);
  });

  it('rejects Keep after the snapshot with a nack and a disconnect', async () => {
    await send({ kind: 'snapshotSent' });
    await send({ kind: 'keep', uid: 'k' });
    expect((await violation()).violation).toBe('sequence');
    expect(replies[2]).toMatch(/^protocol error: KeepWorkload uid=k after SnapshotSent/);
  });

  it('rejects a second SnapshotSent', async () => {
    await send({ kind: 'snapshotSent' });
    await send({ kind: 'snapshotSent' });
    expect((await violation()).violation).toBe('sequence');
  });

  it('rejects an fd on Del and closes it', async () => {
    await send({ kind: 'del', uid: 'd' }, [netns.fd]);
    expect((await violation()).violation).toBe('fd');
    expect(handler.calls).toEqual([]);
  });

  it('rejects two fds on Add and closes both', async () => {
    await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd, netns.fd]);
    expect((await violation()).violation).toBe('fd');
    expect(handler.calls).toEqual([]);
  });

  it('rejects an Add whose fd is not a network namespace', async () => {
    const file = openSync('/proc/self/status', 'r');
    try {
      await send({ kind: 'add', uid: 'a', workloadInfo: info }, [file]);
      const err = await violation();
      expect(err.violation).toBe('fd');
      expect(err.message).toMatch(/AddWorkload uid=a is not a usable network namespace/);
    } finally {
      (await import('node:fs')).closeSync(file);
    }
  });

  it('rejects garbage bytes', async () => {
    await send(Buffer.from('ff01', 'hex'));
    expect((await violation()).violation).toBe('malformed');
  });

  it('rejects an unknown oneof tag (a newer agent speaking past us)', async () => {
    await send(Buffer.from('3a00', 'hex')); // field 7, empty
    expect((await violation()).violation).toBe('unknown-payload');
  });

  it('cuts an over-long handler error to fit one record', async () => {
    handler.onDel = async () => {
      throw new Error('é'.repeat(2000));
    };
    await send({ kind: 'del', uid: 'd' });
    await until(() => replies.length === 2, 'the nack');
    expect(Buffer.byteLength(replies[1]!)).toBeLessThanOrEqual(1016);
    expect(replies[1]).toMatch(/^é+$/);
  });
});
