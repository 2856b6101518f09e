import { openSync } from 'node:fs';
import { currentNetns, type Netns } from '@weir/netns';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClientSession, type ClientSessionOptions, type ZdsAddEvent, type ZdsHandler } from './client-session.js';
import { decodeAck, decodeHello, encodeRequest, type ZdsRequest } from './codec.js';
import { ZdsProtocolError } from './errors.js';
import { silentLogger } from './logger.js';
import { MemorySocket } from './test-support/memory-socket.js';
import { openFdCount, until } from './test-support/peers.js';

const info = { name: 'web-0', namespace: 'default', serviceAccount: 'web' };

/**
 * Records handler calls; uids in `fail` are nacked with "cannot start <uid>". A call whose key
 * (`add:a`, `del:d`, `snapshotSent`) was held finishes only once its gate is opened.
 */
class RecordingHandler implements ZdsHandler {
  calls: string[] = [];
  adds: ZdsAddEvent[] = [];
  fail = new Set<string>();
  /** Calls begun and not finished, now and at most so far. */
  running = 0;
  maxRunning = 0;
  readonly #gates = new Map<string, Promise<void>>();

  hold(key: string): () => void {
    let open!: () => void;
    this.#gates.set(key, new Promise<void>((r) => (open = r)));
    return open;
  }

  async #call(key: string): Promise<void> {
    this.calls.push(key);
    this.maxRunning = Math.max(this.maxRunning, ++this.running);
    try {
      await this.#gates.get(key);
    } finally {
      this.running--;
    }
  }

  async onAdd(ev: ZdsAddEvent): Promise<void> {
    this.adds.push(ev);
    await this.#call(`add:${ev.uid}`);
    if (this.fail.has(ev.uid)) throw new Error(`cannot start ${ev.uid}`);
  }
  async onKeep(uid: string): Promise<void> {
    await this.#call(`keep:${uid}`);
  }
  async onDel(uid: string): Promise<void> {
    await this.#call(`del:${uid}`);
  }
  async onSnapshotSent(): Promise<void> {
    await this.#call('snapshotSent');
  }
}

/**
 * Lets what was sent be handled: 30 ms, then one more turn of the immediates queue (FIFO), so the
 * MemorySocket deliveries queued before it have run even if a starved loop fires the timer first.
 */
const settle = (): Promise<void> => new Promise((r) => setTimeout(() => setImmediate(r), 30));

let agent: MemorySocket;
let session: ClientSession;
let handler: RecordingHandler;
let replies: string[];
let netns: Netns;
let fdsBefore: number;

/**
 * The ztunnel end of a memory pair whose delivery can be paused like a SeqpacketSocket's: records
 * that arrive while paused wait, in order, for resume().
 */
class PausableSocket extends MemorySocket {
  paused = false;
  pauses = 0;
  readonly #held: [Buffer, number[]][] = [];

  pause(): void {
    this.paused = true;
    this.pauses++;
  }

  resume(): void {
    this.paused = false;
    while (!this.paused && this.#held.length > 0) super.emit('message', ...this.#held.shift()!);
  }

  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'message' && this.paused) {
      this.#held.push(args as [Buffer, number[]]);
      return true;
    }
    return super.emit(event, ...args);
  }
}

/** A session on a fresh pair (the ztunnel end `z`), with the agent end recording the answers. */
async function openSession(z: MemorySocket = new MemorySocket(), options: ClientSessionOptions = {}): Promise<void> {
  const a = new MemorySocket();
  a.peer = z;
  z.peer = a;
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
  session = new ClientSession(z, handler, silentLogger, options);
  await session.hello();
  await until(() => replies.length === 1, 'hello');
}

beforeEach(async () => {
  fdsBefore = openFdCount();
  netns = currentNetns();
  handler = new RecordingHandler();
  await openSession();
});

afterEach(async () => {
  session.close();
  for (const a of handler.adds) a.netns.close();
  netns.close();
  // Received fds are closed on later turns of the loop: wait for it rather than a fixed 20 ms.
  await until(() => openFdCount() === fdsBefore, 'the fds opened by the test to be closed', 5000).catch(() => {});
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

describe('ClientSession: records worked on side by side, answered in order', () => {
  it('begins every handler call as its record arrives and acks in record order when a later Add finishes first', async () => {
    handler.fail.add('a');
    const a = handler.hold('add:a');
    const b = handler.hold('add:b');
    await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd]);
    await send({ kind: 'add', uid: 'b', workloadInfo: info }, [netns.fd]);
    await send({ kind: 'del', uid: 'c' });
    await until(() => handler.calls.length === 3, 'three handler calls begun');
    expect(handler.calls).toEqual(['add:a', 'add:b', 'del:c']);
    expect(handler.running).toBe(2);
    b();
    await settle();
    // b and c are done, but a's answer goes first
    expect(replies).toEqual(['hello']);
    a();
    await until(() => replies.length === 4, 'three answers');
    expect(replies.slice(1)).toEqual(['cannot start a', '', '']);
    expect(session.acked).toBe(3);
  });

  it('does not ack SnapshotSent before the records before it are answered', async () => {
    const a = handler.hold('add:a');
    await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd]);
    await send({ kind: 'snapshotSent' });
    await until(() => handler.calls.length === 2, 'both calls begun');
    await settle();
    expect(replies).toEqual(['hello']);
    a();
    await until(() => replies.length === 3, 'two acks');
    expect(replies.slice(1)).toEqual(['', '']);
  });

  it('works on at most maxInFlight records at once, pausing the socket until an answer frees a slot', async () => {
    session.close();
    const z = new PausableSocket();
    await openSession(z, { maxInFlight: 3 });
    const uids = ['d1', 'd2', 'd3', 'd4', 'd5', 'd6'];
    const gates = uids.map((u) => handler.hold(`del:${u}`));
    for (const uid of uids) await send({ kind: 'del', uid });
    await until(() => handler.calls.length === 3, 'three calls begun');
    await settle();
    expect(handler.calls).toEqual(['del:d1', 'del:d2', 'del:d3']);
    expect(z.paused).toBe(true);
    // A later record done frees nothing: its answer waits for d1's.
    gates[1]!();
    await settle();
    expect(handler.calls).toHaveLength(3);
    expect(replies).toEqual(['hello']);
    gates[0]!();
    await until(() => handler.calls.length === 5, 'd4 and d5 begun once d1 and d2 were answered');
    expect(replies.slice(1)).toEqual(['', '']);
    expect(z.paused).toBe(true);
    for (const open of gates) open();
    await until(() => replies.length === 7, 'six acks');
    expect(handler.calls).toEqual(uids.map((u) => `del:${u}`));
    expect(replies.slice(1)).toEqual(['', '', '', '', '', '']);
    expect(handler.maxRunning).toBe(3);
    expect(z.paused).toBe(false);
  });

  it('nacks a violation only after the records before it are answered, and works on nothing after it', async () => {
    const a = handler.hold('add:a');
    await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd]);
    await send(Buffer.from('ff01', 'hex'));
    await send({ kind: 'add', uid: 'z', workloadInfo: info }, [netns.fd]);
    await send({ kind: 'del', uid: 'y' });
    await settle();
    expect(handler.calls).toEqual(['add:a']);
    expect(replies).toEqual(['hello']);
    expect(agent.closed).toBe(false);
    a();
    expect((await violation()).violation).toBe('malformed');
    expect(replies.slice(1)).toEqual(['', expect.stringMatching(/^protocol error: /)]);
    expect(handler.calls).toEqual(['add:a']);
  });

  it('nacks a handler that throws instead of returning a promise', async () => {
    handler.onKeep = () => {
      throw new Error('keep refused');
    };
    await send({ kind: 'keep', uid: 'k' });
    await send({ kind: 'del', uid: 'd' });
    await until(() => replies.length === 3, 'two answers');
    expect(replies.slice(1)).toEqual(['keep refused', '']);
  });

  it('answers a handler that returns no promise in its own slot, without throwing out of the socket callback', async () => {
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown): void => void uncaught.push(err);
    const others = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    process.on('uncaughtException', onUncaught);
    try {
      const calls: string[] = [];
      // what a plain JS handler (or one typed `any`) may return: nothing, a value, a thenable whose `then` throws
      Object.assign(handler, {
        onKeep: (uid: string) => void calls.push(`keep:${uid}`),
        onDel: (uid: string) => {
          calls.push(`del:${uid}`);
          return uid === 'bad' ? { then: () => { throw new Error('then refused'); } } : 42;
        },
      });
      const slow = handler.hold('add:a');
      await send({ kind: 'add', uid: 'a', workloadInfo: info }, [netns.fd]);
      await send({ kind: 'keep', uid: 'k' });
      await send({ kind: 'del', uid: 'bad' });
      await send({ kind: 'del', uid: 'd' });
      await send({ kind: 'snapshotSent' });
      await settle();
      // every call begun as its record arrived, none answered before the held Add
      expect(calls).toEqual(['keep:k', 'del:bad', 'del:d']);
      expect(handler.calls).toEqual(['add:a', 'snapshotSent']);
      expect(replies).toEqual(['hello']);
      slow();
      await until(() => replies.length === 6, 'five answers');
      expect(replies.slice(1)).toEqual(['', '', 'then refused', '', '']);
      expect(uncaught).toEqual([]);
      expect(agent.closed).toBe(false);
    } finally {
      process.off('uncaughtException', onUncaught);
      for (const l of others) process.on('uncaughtException', l);
    }
  });
});
