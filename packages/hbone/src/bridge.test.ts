import * as net from 'node:net';
import { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { COALESCE_MIN, bridge } from './bridge.js';

/** A Duplex that records each write call it gets (one entry per _write, one per _writev) and reads what a test pushes. */
class Recorder extends Duplex {
  readonly calls: Buffer[][] = [];
  constructor() {
    super({ allowHalfOpen: true });
  }
  override _read(): void {
    // Data arrives through push() from the test.
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.calls.push([chunk]);
    cb();
  }
  override _writev(chunks: { chunk: Buffer }[], cb: () => void): void {
    this.calls.push(chunks.map((c) => c.chunk));
    cb();
  }
  override _final(cb: () => void): void {
    cb();
  }
}

const nextImmediate = (): Promise<void> => new Promise((r) => setImmediate(r));
const bytes = (n: number, fill: number): Buffer => Buffer.alloc(n, fill);

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

function pair(): { tunnel: Recorder; socket: Recorder } {
  const tunnel = new Recorder();
  const socket = new Recorder();
  void bridge(tunnel, socket);
  closers.push(() => {
    tunnel.destroy();
    socket.destroy();
  });
  return { tunnel, socket };
}

describe('bridge writes', () => {
  it('writes a small chunk within its data event, not from a later immediate (both directions)', () => {
    const { tunnel, socket } = pair();
    tunnel.emit('data', bytes(100, 1));
    expect(socket.calls).toEqual([[bytes(100, 1)]]);
    socket.emit('data', bytes(200, 2));
    expect(tunnel.calls).toEqual([[bytes(200, 2)]]);
  });

  it('coalesces the chunks of a burst into one writev at the end of the turn, small fragments included, in order', async () => {
    const { tunnel, socket } = pair();
    const a = bytes(COALESCE_MIN, 1);
    const b = bytes(16 * 1024, 2);
    const frag = bytes(9, 3);
    tunnel.emit('data', a);
    tunnel.emit('data', frag);
    tunnel.emit('data', b);
    expect(socket.calls).toEqual([]);
    await nextImmediate();
    expect(socket.calls).toEqual([[a, frag, b]]);
    // A turn that starts with a small fragment: it leaves at once, the bulk after it is batched.
    tunnel.emit('data', frag);
    tunnel.emit('data', b);
    tunnel.emit('data', a);
    expect(socket.calls).toEqual([[a, frag, b], [frag]]);
    await nextImmediate();
    expect(socket.calls).toEqual([[a, frag, b], [frag], [b, a]]);
  });

  it('carries bytes in order over real sockets with mixed chunk sizes, and the half-close', async () => {
    const received: Buffer[] = [];
    const done = new Promise<void>((resolve) => {
      const srv = net.createServer({ allowHalfOpen: true }, (s) => {
        s.on('data', (d: Buffer) => received.push(d));
        s.on('end', () => {
          s.end();
          resolve();
        });
      });
      closers.push(() => srv.close());
      srv.listen(0, '127.0.0.1', () => {
        const sock = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
        const tunnel = new Recorder();
        tunnel.on('end', () => undefined);
        void bridge(tunnel, sock);
        closers.push(() => sock.destroy());
        sock.once('connect', () => {
          const sizes = [10, COALESCE_MIN, 16 * 1024, 7, 16 * 1024, 16 * 1024, 100, 1];
          sizes.forEach((n, i) => tunnel.push(bytes(n, i + 1)));
          tunnel.push(null);
        });
      });
    });
    await done;
    const all = Buffer.concat(received);
    const expected = Buffer.concat([10, COALESCE_MIN, 16 * 1024, 7, 16 * 1024, 16 * 1024, 100, 1].map((n, i) => bytes(n, i + 1)));
    expect(all.equals(expected)).toBe(true);
  });

  it('pauses the reader once the writer holds the limit, and resumes it on drain', async () => {
    const tunnel = new Recorder();
    let release: (() => void) | undefined;
    const socket = new (class extends Recorder {
      override _write(chunk: Buffer, enc: BufferEncoding, cb: () => void): void {
        // Holds the first write until the test releases it, like a full kernel buffer.
        if (this.calls.length === 0 && release === undefined) release = () => super._write(chunk, enc, cb);
        else super._write(chunk, enc, cb);
      }
    })();
    void bridge(tunnel, socket, { maxBuffered: 32 * 1024 });
    closers.push(() => {
      tunnel.destroy();
      socket.destroy();
    });
    // The limit is the larger of maxBuffered and the writer's high-water mark (16 KiB on Node 20, 64 KiB since 22).
    const limit = Math.max(32 * 1024, socket.writableHighWaterMark);
    tunnel.resume();
    tunnel.emit('data', bytes(100, 1));
    tunnel.emit('data', bytes(limit - 200, 2));
    expect(tunnel.isPaused()).toBe(false);
    tunnel.emit('data', bytes(200, 3));
    await nextImmediate();
    expect(tunnel.isPaused()).toBe(true);
    release!();
    await nextImmediate();
    expect(tunnel.isPaused()).toBe(false);
  });
});
