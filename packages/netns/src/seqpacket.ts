import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { NetnsError, errnoName, sys, wrapNative } from './errors.js';
import { native, READABLE, WRITABLE, type NativePoller } from './native.js';

/** Records handled per poll wakeup, so one busy peer cannot starve the event loop. */
const RECORDS_PER_WAKEUP = 64;

interface PendingSend {
  data: Uint8Array;
  /** Duplicates we own, so the caller may close its fds as soon as send() returns. */
  fds: number[];
  resolve: () => void;
  reject: (err: Error) => void;
}

function pollError(fd: number, status: number, what: string): NetnsError {
  let errno = 0;
  try {
    errno = native.socketError(fd);
  } catch (e) {
    return wrapNative(e, what);
  }
  if (errno !== 0) return wrapNative(Object.assign(new Error(`SO_ERROR: ${errnoName(errno)}`), { errno, syscall: 'poll' }), what);
  return new NetnsError('ERR_NETNS_SYSCALL', `${what}: poll failed with libuv status ${status}`);
}

function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.closeFd(fd);
    } catch {
      // Already closed by its owner: nothing left to release.
    }
  }
}

/**
 * One connected AF_UNIX SOCK_SEQPACKET socket. Events:
 * - `'message'(data: Buffer, fds: number[])`: one whole record and the fds that rode on it. The
 *   listener owns those fds and must close (or adopt) them. Records are read only while a
 *   'message' listener exists; otherwise they wait in the kernel (and push back on the sender), so
 *   awaiting `once(socket, 'message')` one record at a time loses nothing.
 * - `'error'(err: NetnsError)`: e.g. ERR_SEQPACKET_TRUNCATED (the record did not fit in 64 KiB or
 *   carried too many fds; its fds are closed); the socket closes right after.
 * - `'close'`: once, after the peer hung up, an error, or close().
 */
export class SeqpacketSocket extends EventEmitter {
  readonly #fd: number;
  readonly #poller: NativePoller;
  readonly #queue: PendingSend[] = [];
  #closed = false;
  #paused = false;
  #reading = false;
  /** The peer closed without reading all we sent; reported once the records it sent us are read. */
  #reset: NetnsError | undefined;

  /** @internal made by connectSeqpacket or a SeqpacketServer */
  constructor(fd: number) {
    super();
    this.#fd = fd;
    this.#poller = new native.Poller(fd, (status, events) => this.#onPoll(status, events));
    this.on('newListener', (event: string) => {
      if (event === 'message' && !this.#reading) {
        this.#reading = true;
        this.#updatePoll();
      }
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Sends one record with optional fds (SCM_RIGHTS). Resolves when the kernel took the record;
   * when the peer is slow it waits for room (backpressure), keeping order. The caller keeps
   * ownership of its fds and may close them once send() has returned.
   */
  send(data: Uint8Array, fds: number[] = []): Promise<void> {
    if (!(data instanceof Uint8Array)) {
      return Promise.reject(new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `seqpacket record must be a Uint8Array, got ${typeof data}`));
    }
    if (!Array.isArray(fds) || fds.some((fd) => !Number.isInteger(fd) || fd < 0)) {
      return Promise.reject(new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `fds must be non-negative integers, got ${JSON.stringify(fds)}`));
    }
    if (this.#closed) return Promise.reject(new NetnsError('ERR_SEQPACKET_CLOSED', `seqpacket socket fd ${this.#fd} is closed`));
    if (this.#queue.length === 0) {
      try {
        if (native.seqSend(this.#fd, data, fds)) return Promise.resolve();
      } catch (e) {
        return Promise.reject(this.#sendFailed(e, data.byteLength, fds.length));
      }
    }
    let dups: number[];
    try {
      dups = fds.map((fd) => sys(`seqpacket send: fd ${fd} to pass`, () => native.dupFd(fd)));
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<void>((resolve, reject) => {
      // The record is copied too: the caller may reuse its buffer.
      this.#queue.push({ data: Uint8Array.prototype.slice.call(data), fds: dups, resolve, reject });
      this.#updatePoll();
    });
  }

  /** Stops delivering 'message' events (the kernel queue then pushes back on the sender). */
  pause(): void {
    this.#paused = true;
    this.#updatePoll();
  }

  resume(): void {
    this.#paused = false;
    this.#updatePoll();
  }

  /** Closes the socket; pending sends reject with ERR_SEQPACKET_CLOSED. Idempotent. */
  close(): void {
    this.#destroy(undefined);
  }

  #sendFailed(e: unknown, size: number, nfds: number): NetnsError {
    const err = wrapNative(e, `seqpacket send of a ${size}-byte record with ${nfds} fd(s) on fd ${this.#fd}`);
    // A peer that is gone will never take another record.
    if (err.code === 'ERR_SEQPACKET_CLOSED') queueMicrotask(() => this.#destroy(undefined));
    return err;
  }

  #updatePoll(): void {
    if (this.#closed) return;
    const events = (this.#reading && !this.#paused ? READABLE : 0) | (this.#queue.length > 0 ? WRITABLE : 0);
    if (events === 0) this.#poller.stop();
    else this.#poller.start(events);
  }

  #onPoll(status: number, events: number): void {
    if (this.#closed) return;
    if (status < 0) {
      // libuv reports POLLERR as a poll error and stops watching: SO_ERROR says what happened.
      const err = pollError(this.#fd, status, `seqpacket socket fd ${this.#fd}`);
      if (this.#peerReset(err)) this.#updatePoll();
      else this.#destroy(err);
      return;
    }
    if (events & WRITABLE) this.#flush();
    if (events & READABLE) this.#readSome();
  }

  #flush(): void {
    while (this.#queue.length > 0 && !this.#closed) {
      const head = this.#queue[0]!;
      let sent: boolean;
      try {
        sent = native.seqSend(this.#fd, head.data, head.fds);
      } catch (e) {
        this.#queue.shift();
        closeAll(head.fds);
        head.reject(this.#sendFailed(e, head.data.byteLength, head.fds.length));
        continue;
      }
      if (!sent) break;
      this.#queue.shift();
      closeAll(head.fds);
      head.resolve();
    }
    this.#updatePoll();
  }

  #readSome(): void {
    for (let i = 0; i < RECORDS_PER_WAKEUP && !this.#closed && !this.#paused; i++) {
      if (this.listenerCount('message') === 0) {
        // Nobody to hand records to: leave them queued in the kernel until a listener comes back.
        this.#reading = false;
        this.#updatePoll();
        return;
      }
      let record: ReturnType<typeof native.seqRecv>;
      try {
        record = native.seqRecv(this.#fd);
      } catch (e) {
        const err = wrapNative(e, `seqpacket receive on fd ${this.#fd}`);
        if (this.#peerReset(err)) continue;
        this.#destroy(err);
        return;
      }
      if (record === null) return;
      if (record === 0) {
        this.#destroy(this.#reset);
        return;
      }
      const [data, fds, flags] = record;
      if (flags !== 0 || data === null) {
        const what = [flags & native.MSG_TRUNC ? `data longer than ${native.MAX_RECORD} bytes (MSG_TRUNC)` : '', flags & native.MSG_CTRUNC ? 'fds that did not fit (MSG_CTRUNC)' : '']
          .filter(Boolean)
          .join(' and ');
        this.#destroy(new NetnsError('ERR_SEQPACKET_TRUNCATED', `seqpacket record on fd ${this.#fd} was truncated: ${what}; the record and its fds were dropped`));
        return;
      }
      this.emit('message', data, fds);
    }
  }

  /**
   * A unix socket reports ECONNRESET once when the peer closed with records of ours unread. The
   * records it sent before closing are still queued for us: remember the reset, deliver them, and
   * report the reset with the close.
   */
  #peerReset(err: NetnsError): boolean {
    if (err.errno !== constants.errno.ECONNRESET || this.#reset) return false;
    this.#reset = new NetnsError('ERR_SEQPACKET_CLOSED', `seqpacket peer of fd ${this.#fd} closed the connection before reading all records sent to it (ECONNRESET)`, {
      cause: err,
      errno: err.errno,
      syscall: err.syscall,
    });
    return true;
  }

  #destroy(err: NetnsError | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    native.closeFd(this.#fd);
    for (const p of this.#queue.splice(0)) {
      closeAll(p.fds);
      p.reject(new NetnsError('ERR_SEQPACKET_CLOSED', `seqpacket socket fd ${this.#fd} closed before the record was sent`, { cause: err }));
    }
    process.nextTick(() => {
      if (err) this.emit('error', err);
      this.emit('close');
    });
  }
}

/**
 * A listening AF_UNIX SOCK_SEQPACKET socket. Emits `'connection'(socket: SeqpacketSocket)` and
 * `'error'(err)`; close() stops accepting (open connections stay) and removes the socket file if
 * it is still ours.
 */
export class SeqpacketServer extends EventEmitter {
  readonly path: string;
  readonly #fd: number;
  readonly #ino: number;
  readonly #poller: NativePoller;
  #closed = false;
  #backoff: NodeJS.Timeout | undefined;

  /** @internal made by listenSeqpacket */
  constructor(path: string, fd: number, ino: number) {
    super();
    this.path = path;
    this.#fd = fd;
    this.#ino = ino;
    this.#poller = new native.Poller(fd, (status) => this.#onPoll(status));
    this.#poller.start(READABLE);
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#backoff) clearTimeout(this.#backoff);
      this.#poller.close();
      native.closeFd(this.#fd);
      try {
        // Only our own socket file: a successor may already have bound the same path.
        if (lstatSync(this.path).ino === this.#ino) unlinkSync(this.path);
      } catch {
        // Already removed by someone else.
      }
      process.nextTick(() => this.emit('close'));
    }
    return Promise.resolve();
  }

  #onPoll(status: number): void {
    if (this.#closed) return;
    if (status < 0) {
      this.emit('error', pollError(this.#fd, status, `seqpacket server ${this.path}`));
      return;
    }
    for (let i = 0; i < RECORDS_PER_WAKEUP && !this.#closed; i++) {
      let fd: number;
      try {
        fd = native.seqAccept(this.#fd);
      } catch (e) {
        const err = wrapNative(e, `seqpacket server ${this.path}: accept`);
        if (err.code === 'ERR_NETNS_TOO_MANY_FILES') {
          // Out of fds: a level-triggered poller would spin; retry shortly instead.
          this.#poller.stop();
          this.#backoff = setTimeout(() => {
            this.#backoff = undefined;
            if (!this.#closed) this.#poller.start(READABLE);
          }, 100);
        }
        this.emit('error', err);
        return;
      }
      if (fd < 0) return;
      const socket = new SeqpacketSocket(fd);
      if (!this.emit('connection', socket)) socket.close();
    }
  }
}

/**
 * Listens on `path` (AF_UNIX SOCK_SEQPACKET). A stale socket file (nobody accepting) is removed
 * first; a live one, or a path that is not a socket, fails with ERR_NETNS_ADDRESS_IN_USE. The
 * file gets `mode` (default 0o600) before anyone can connect. Creates no directories.
 */
export function listenSeqpacket(path: string, o: { mode?: number; backlog?: number } = {}): SeqpacketServer {
  if (typeof path !== 'string' || path === '') {
    throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `seqpacket path must be a non-empty string, got ${JSON.stringify(path)}`);
  }
  const mode = o.mode ?? 0o600;
  const backlog = o.backlog ?? 128;
  removeStale(path);
  const fd = sys(`seqpacket listen on ${path}`, () => native.seqListen(path, backlog, mode));
  return new SeqpacketServer(path, fd, lstatSync(path).ino);
}

function removeStale(path: string): void {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return;
  }
  if (!isSocket) {
    throw new NetnsError('ERR_NETNS_ADDRESS_IN_USE', `seqpacket path ${path} exists and is not a socket; not removing it`);
  }
  let probe: number;
  try {
    probe = native.seqConnect(path);
  } catch (e) {
    const err = e as { errno?: number };
    if (err.errno === constants.errno.ECONNREFUSED) {
      unlinkSync(path);
      return;
    }
    if (err.errno === constants.errno.ENOENT) return;
    throw wrapNative(e, `seqpacket path ${path}: probing the existing socket`);
  }
  if (probe >= 0) native.closeFd(probe);
  throw new NetnsError('ERR_NETNS_ADDRESS_IN_USE', `seqpacket path ${path} has a live listener; not replacing it`);
}

/**
 * Connects to a SOCK_SEQPACKET listener. A full accept backlog is retried every 10 ms until
 * `timeoutMs` (default 5000); a missing path is ERR_NETNS_NOT_FOUND, nobody listening is
 * ERR_NETNS_CONNECTION_REFUSED.
 */
export async function connectSeqpacket(path: string, o: { timeoutMs?: number } = {}): Promise<SeqpacketSocket> {
  const deadline = Date.now() + (o.timeoutMs ?? 5000);
  for (;;) {
    const fd = sys(`seqpacket connect to ${path}`, () => native.seqConnect(path));
    if (fd >= 0) return new SeqpacketSocket(fd);
    if (Date.now() >= deadline) {
      throw new NetnsError('ERR_NETNS_TIMEOUT', `seqpacket connect to ${path}: the listener's backlog stayed full for ${o.timeoutMs ?? 5000} ms`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
