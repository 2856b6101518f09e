// One HTTP/2 connection carrying CONNECT tunnels (RFC 9113, §8.5), client or server role, over any
// Duplex (a TLSSocket in production, a net.Socket for h2c). Built on our own codec (frames.ts,
// hpack.ts) instead of node:http2: a tunnel here is a small Duplex plus a few numbers, no per-stream
// closures, which is what keeps an idle tunnel's memory small. Stream-level faults reset the stream,
// connection-level faults end the connection with GOAWAY; nothing is thrown out of an event handler.
import { Duplex } from 'node:stream';
import { H2ProtocolError, H2_ERROR_CODES, HboneError } from '../errors.js';
import type { H2ErrorCodeName } from '../errors.js';
import {
  CLIENT_PREFACE,
  DEFAULT_MAX_FRAME_SIZE,
  FrameReader,
  MAX_MAX_FRAME_SIZE,
  FrameType,
  MAX_WINDOW,
  encodeDataHeader,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSettingsAck,
  encodeWindowUpdate,
} from './frames.js';
import type { DataFrame, Frame, HeadersFrame, Settings } from './frames.js';
import { HpackDecoder, HpackEncoder } from './hpack.js';

const MiB = 1024 * 1024;
const DEFAULT_WINDOW = 65535;
/** nghttp2 refuses a field block spread over more CONTINUATION frames than this. */
const MAX_CONTINUATIONS = 8;
const MAX_OUTSTANDING_PINGS = 10;
/**
 * Bytes the connection may have queued before a tunnel's write waits for it to drain. Not the socket's
 * high-water mark (16 KiB): a socket read's worth of DATA is over it as soon as it is written (corked
 * until the end of the turn), and waiting for each write to reach the kernel before taking the next
 * left the connection idle between writes when the kernel's buffer was full (a veth, not loopback).
 */
const WRITE_QUEUE_LIMIT = 512 * 1024;
const { NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL } = H2_ERROR_CODES;

// Tunnel.flags bits.
const LOCAL_END = 1; // END_STREAM sent
const REMOTE_END = 2; // END_STREAM received
const PAUSED = 4; // the reader stopped reading: what arrives is not credited back
const DONE = 8; // closed and removed from the session
const RESPONDED = 16; // 200 sent (server) or received (client)
const BLOCKED = 32; // waiting in the session's list for connection send window
const END_PENDING = 64; // end() called while DATA or the response was still waiting

export interface H2SessionOptions {
  role: 'client' | 'server';
  /**
   * Server: a new CONNECT stream. Call `tunnel.respond(status)` (now or later): 200 opens the tunnel,
   * anything else (400, 401, 503…) refuses it. Attach an 'error' listener to the tunnel at once.
   */
  onConnect?: (tunnel: Tunnel, request: ConnectRequest) => void;
  /** The connection is gone; `error` unless it ended cleanly (GOAWAY NO_ERROR both ways / close()). */
  onClose?: (error: HboneError | undefined) => void;
  /** The peer sent GOAWAY: open no more tunnels on this session. */
  onGoaway?: (errorCode: number, lastStreamId: number) => void;
  /** The peer's SETTINGS arrived (the first one: the connection is usable; later ones may change its limits). */
  onRemoteSettings?: () => void;
  /** A tunnel left the session (ended both ways, reset or failed), before its 'close' event: one hook for all, no listener per tunnel. */
  onStreamClosed?: (tunnel: Tunnel) => void;
  /** SETTINGS_MAX_CONCURRENT_STREAMS we announce and enforce (server; default 100). */
  maxConcurrentStreams?: number;
  /** Receive window per stream (default 4 MiB, as ztunnel). */
  streamWindow?: number;
  /** Receive window of the connection (default 16 MiB). */
  connectionWindow?: number;
  /** The peer must ACK our SETTINGS within this (default 10 s), else GOAWAY SETTINGS_TIMEOUT. */
  settingsTimeoutMs?: number;
  /** Rapid reset guard: RST_STREAMs received (plus streams we refuse) per window (default 1000 / 30 s). */
  maxResets?: number;
  resetWindowMs?: number;
  /** Control frames we answer (PING/SETTINGS ACK, RST_STREAM) queued while the socket does not drain (default 1000). */
  maxQueuedControlFrames?: number;
  /** Empty DATA frames without END_STREAM in a row (default 100). */
  maxEmptyDataFrames?: number;
  /** Our SETTINGS_MAX_HEADER_LIST_SIZE (default 16384). */
  maxHeaderListSize?: number;
  /**
   * Our SETTINGS_MAX_FRAME_SIZE (default 1 MiB, as ztunnel): a peer that takes it sends a socket read's
   * worth of tunnel bytes as one DATA frame instead of one per 16 KiB.
   */
  maxFrameSize?: number;
}

export interface ConnectRequest {
  /** `:authority`, as sent (the caller parses it). */
  authority: string;
  /** The request's regular fields, flat: [name, value, name, value, …]. */
  headers: string[];
}

/** Who waits for the answer to a CONNECT: settled once, by the response, a reset or the session's end. */
export interface OpenWaiter {
  resolve: (t: Tunnel) => void;
  reject: (err: HboneError) => void;
}

interface PendingPing {
  key: string;
  sent: number;
  resolve: (rttMs: number) => void;
  reject: (err: HboneError) => void;
}

// allowHalfOpen (the default): each direction ends on its own. The readable buffer is fixed at 16 KiB
// (Node 22 raised the default to 64 KiB): what is credited to the peer before a paused reader stops
// crediting is that buffer, so it stays the same on every Node version.
const TUNNEL_OPTIONS = { readableHighWaterMark: 16384 } as const;

/**
 * One CONNECT stream as a Duplex: end() sends END_STREAM, END_STREAM received ends the readable;
 * destroy() resets the stream (CANCEL, or INTERNAL_ERROR with an error); close(code) resets it with
 * `code`. `rstCode` is set once the stream is closed (0 when it ended cleanly), as on node:http2
 * streams, which the bridge reads. The fields below the public ones belong to the session.
 */
export class Tunnel extends Duplex {
  rstCode: number | undefined = undefined;
  /** @internal */ flags = 0;
  /** @internal what the peer lets us send */ sendWindow: number;
  /** @internal what the peer may still send */ recvWindow: number;
  /** @internal consumed, not yet given back by WINDOW_UPDATE */ credit = 0;
  /** @internal received while PAUSED */ unread = 0;
  /** @internal a write waiting for window (chunk from pendingOff), or its callback waiting for drain */
  pendingChunk: Buffer | undefined = undefined;
  /** @internal */ pendingOff = 0;
  /** @internal */ pendingCb: ((err?: Error | null) => void) | undefined = undefined;
  /** @internal client: the connect() promise until the response */ waiter: OpenWaiter | undefined = undefined;

  constructor(
    readonly session: H2Session,
    readonly id: number,
    sendWindow: number,
    recvWindow: number,
  ) {
    super(TUNNEL_OPTIONS);
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
  }

  /** Server: answers the CONNECT (200 opens the tunnel, anything else refuses it). */
  respond(status: number, headers: readonly string[] = []): void {
    this.session.respondTo(this, status, headers);
  }

  /** Resets the stream with `code` (RST_STREAM) and destroys the tunnel, as node:http2's close(). */
  close(code: number = NO_ERROR): void {
    this.session.resetStream(this, code);
    this.destroy();
  }

  override _read(): void {
    this.session.readResumed(this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.session.sendData(this, chunk, 0, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.session.sendEnd(this, cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.session.streamDestroyed(this, err);
    cb(err);
  }
}

const CODE_NAMES = new Map<number, H2ErrorCodeName>(Object.entries(H2_ERROR_CODES).map(([k, v]) => [v, k as H2ErrorCodeName]));
const codeName = (code: number): string => CODE_NAMES.get(code) ?? `0x${code.toString(16)}`;

function sessionError(message: string, cause?: unknown): HboneError {
  return new HboneError('ERR_HBONE_SESSION', message, { cause });
}

/** A tunnel refused before the peer processed it (GOAWAY, REFUSED_STREAM, stream limit): open it elsewhere. */
export function isRetryable(err: unknown): boolean {
  return err instanceof HboneError && err.cause instanceof H2ProtocolError && err.cause.h2Code === 'REFUSED_STREAM';
}

function refused(streamId: number, message: string): HboneError {
  return sessionError(message, new H2ProtocolError('REFUSED_STREAM', 'stream', streamId, message));
}

function streamProtocolError(streamId: number, message: string): H2ProtocolError {
  return new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, message);
}

const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

/** §8.2.2, §8.3: checks the regular fields of a block; returns a message for the first fault. */
function badField(name: string, value: string): string | undefined {
  if (CONNECTION_SPECIFIC.has(name)) return `connection-specific field ${name}`;
  if (name === 'te' && value !== 'trailers') return `te: ${value}`;
  if (name !== name.toLowerCase()) return `uppercase field name ${JSON.stringify(name)}`;
  return undefined;
}

/** Shared (no closure per session): flushes what a turn of the event loop wrote. */
function uncork(session: H2Session): void {
  session.flush();
}

/** Shared 'end' listener (no closure per tunnel). */
function readToEnd(this: Tunnel): void {
  this.session.readEnded(this);
}

function ignoreError(): void {
  // A tunnel refused before anyone held it: its error has no listener to go to.
}

export class H2Session {
  readonly #socket: Duplex;
  readonly #server: boolean;
  readonly #reader: FrameReader;
  readonly #encoder = new HpackEncoder();
  readonly #decoder: HpackDecoder;
  readonly #streams = new Map<number, Tunnel>();
  readonly #onConnect: ((tunnel: Tunnel, request: ConnectRequest) => void) | undefined;
  readonly #onClose: ((error: HboneError | undefined) => void) | undefined;
  readonly #onGoaway: ((errorCode: number, lastStreamId: number) => void) | undefined;
  readonly #onRemoteSettings: (() => void) | undefined;
  readonly #onStreamClosed: ((tunnel: Tunnel) => void) | undefined;
  // Our side.
  readonly #maxConcurrent: number;
  readonly #streamWindow: number;
  readonly #connWindow: number;
  readonly #maxResets: number;
  readonly #resetWindowMs: number;
  readonly #maxQueuedControl: number;
  readonly #maxEmptyData: number;
  readonly #maxFrameSize: number;
  #localInitialWindow = DEFAULT_WINDOW; // ours as the peer has ACKed it
  #settingsTimer: NodeJS.Timeout | undefined;
  #nextId: number;
  #lastPeerId = 0;
  // The peer's side.
  #peerSettingsSeen = false;
  #peerMaxConcurrent = Infinity;
  #peerInitialWindow = DEFAULT_WINDOW;
  #peerMaxFrame = DEFAULT_MAX_FRAME_SIZE;
  // Connection flow control.
  #sendWindow = DEFAULT_WINDOW;
  #recvWindow: number;
  #connCredit = 0;
  #blocked: Tunnel[] = [];
  #drainWaiters: Tunnel[] = [];
  // DATA frame being received: its tunnel (undefined: discarded) and flow bytes not yet delivered (padding).
  #dataTunnel: Tunnel | undefined;
  #dataLeft = 0;
  // Guards.
  #queuedControl = 0;
  #resets = 0;
  #resetWindowStart = 0;
  #emptyData = 0;
  // Lifecycle.
  #corked = false;
  #goawaySent = false;
  #goawayReceived = -1;
  #closed = false;
  #error: HboneError | undefined;
  #destroyTimer: NodeJS.Timeout | undefined;
  #closeWaiters: (() => void)[] = [];
  #pings: PendingPing[] = [];
  #pingSeq = 0;

  constructor(socket: Duplex, options: H2SessionOptions) {
    this.#socket = socket;
    this.#server = options.role === 'server';
    if (this.#server && options.onConnect === undefined) throw new HboneError('ERR_HBONE_CONFIG', 'an HTTP/2 server session needs onConnect');
    this.#onConnect = options.onConnect;
    this.#onClose = options.onClose;
    this.#onGoaway = options.onGoaway;
    this.#onRemoteSettings = options.onRemoteSettings;
    this.#onStreamClosed = options.onStreamClosed;
    this.#maxConcurrent = options.maxConcurrentStreams ?? 100;
    this.#streamWindow = options.streamWindow ?? 4 * MiB;
    this.#connWindow = options.connectionWindow ?? 16 * MiB;
    this.#maxResets = options.maxResets ?? 1000;
    this.#resetWindowMs = options.resetWindowMs ?? 30_000;
    this.#maxQueuedControl = options.maxQueuedControlFrames ?? 1000;
    this.#maxEmptyData = options.maxEmptyDataFrames ?? 100;
    this.#maxFrameSize = options.maxFrameSize ?? MiB;
    if (!Number.isInteger(this.#maxFrameSize) || this.#maxFrameSize < DEFAULT_MAX_FRAME_SIZE || this.#maxFrameSize > MAX_MAX_FRAME_SIZE) {
      throw new HboneError('ERR_HBONE_CONFIG', `maxFrameSize ${this.#maxFrameSize} outside ${DEFAULT_MAX_FRAME_SIZE}..${MAX_MAX_FRAME_SIZE}`);
    }
    for (const [k, v] of [
      ['streamWindow', this.#streamWindow],
      ['connectionWindow', this.#connWindow],
    ] as const) {
      if (!Number.isInteger(v) || v < 1 || v > MAX_WINDOW) throw new HboneError('ERR_HBONE_CONFIG', `${k} ${v} outside 1..2^31-1`);
    }
    this.#recvWindow = this.#connWindow;
    this.#nextId = this.#server ? 2 : 1;
    const maxHeaderListSize = options.maxHeaderListSize ?? 16384;
    this.#decoder = new HpackDecoder({ maxHeaderListSize });
    this.#reader = new FrameReader(
      { frame: (f) => this.#frame(f), streamError: (e) => this.#readerStreamError(e) },
      { expectPreface: this.#server, maxHeaderBlockSize: Math.max(65536, maxHeaderListSize * 2) },
    );
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => this.#onDrain());
    socket.on('error', (err: Error) => {
      this.#error ??= sessionError(`HTTP/2 connection failed: ${err.message}`, err);
    });
    socket.on('close', () => this.#onSocketClose());

    const settings: Settings = { initialWindowSize: this.#streamWindow, maxHeaderListSize };
    if (this.#maxFrameSize !== DEFAULT_MAX_FRAME_SIZE) settings.maxFrameSize = this.#maxFrameSize;
    if (this.#server) settings.maxConcurrentStreams = this.#maxConcurrent;
    else settings.enablePush = 0;
    if (!this.#server) this.#out(CLIENT_PREFACE);
    this.#out(encodeSettings(settings));
    // The connection window is no setting: raised at once by WINDOW_UPDATE.
    if (this.#connWindow > DEFAULT_WINDOW) this.#out(encodeWindowUpdate(0, this.#connWindow - DEFAULT_WINDOW));
    else this.#recvWindow = DEFAULT_WINDOW;
    this.#settingsTimer = setTimeout(() => this.#fail(new H2ProtocolError('SETTINGS_TIMEOUT', 'connection', 0, 'peer did not ACK our SETTINGS in time')), options.settingsTimeoutMs ?? 10_000);
    this.#settingsTimer.unref();
  }

  /** Streams open on this connection. */
  get activeStreams(): number {
    return this.#streams.size;
  }

  /** The peer's SETTINGS_MAX_CONCURRENT_STREAMS (Infinity until it says). */
  get peerMaxConcurrentStreams(): number {
    return this.#peerMaxConcurrent;
  }

  /** Client: a connect() now would not be refused for the session's state. */
  get canOpen(): boolean {
    return !this.#closed && !this.#goawaySent && this.#goawayReceived < 0 && this.#streams.size < this.#peerMaxConcurrent && this.#nextId <= MAX_WINDOW;
  }

  get closed(): boolean {
    return this.#closed;
  }

  // ---- client API ----

  /**
   * Opens a CONNECT tunnel to `authority`; resolves once the peer answers 200. A refused CONNECT
   * rejects with ERR_HBONE_STATUS (`status`), anything else with ERR_HBONE_SESSION; isRetryable()
   * says whether the peer never processed it (GOAWAY, stream limit) so another session may take it.
   */
  connect(authority: string, headers: readonly string[] = []): Promise<Tunnel> {
    return new Promise<Tunnel>((resolve, reject) => {
      try {
        this.open(authority, headers, { resolve, reject });
      } catch (err) {
        reject(err as HboneError);
      }
    });
  }

  /**
   * connect() without a promise of its own: sends the CONNECT and returns its tunnel at once (to
   * reset it before the answer: `tunnel.close(CANCEL)`, after clearing `tunnel.waiter` to settle the
   * open yourself); `waiter` is settled as connect()'s promise would be. Throws the HboneError
   * connect() would reject with when the CONNECT cannot be sent.
   */
  open(authority: string, headers: readonly string[], waiter: OpenWaiter): Tunnel {
    if (this.#server) throw new HboneError('ERR_HBONE_CONFIG', 'open() on a server session');
    if (!this.canOpen) {
      throw this.#closed
        ? (this.#error ?? sessionError('HTTP/2 session is closed'))
        : refused(this.#nextId, `HTTP/2 session cannot open a stream (goaway=${this.#goawaySent || this.#goawayReceived >= 0}, ${this.#streams.size} of ${this.#peerMaxConcurrent} streams)`);
    }
    const fields = [':method', 'CONNECT', ':authority', authority, ...headers];
    const fault = this.#checkOutgoing(fields);
    if (fault !== undefined) throw new HboneError('ERR_HBONE_CONFIG', fault);
    const block = this.#encoder.encode(fields);
    if (block.length > (MAX_CONTINUATIONS + 1) * this.#peerMaxFrame) {
      throw new HboneError('ERR_HBONE_CONFIG', `CONNECT header block of ${block.length} bytes needs more than ${MAX_CONTINUATIONS} CONTINUATION frames`);
    }
    const id = this.#nextId;
    this.#nextId += 2;
    const t = new Tunnel(this, id, this.#peerInitialWindow, this.#localInitialWindow);
    t.waiter = waiter;
    this.#streams.set(id, t);
    this.#out(encodeHeaders(id, block, false, this.#peerMaxFrame));
    return t;
  }

  /** Sends a PING; resolves with the round-trip time in ms (keepalive). */
  ping(): Promise<number> {
    if (this.#closed) return Promise.reject(this.#error ?? sessionError('HTTP/2 session is closed'));
    if (this.#pings.length >= MAX_OUTSTANDING_PINGS) return Promise.reject(sessionError(`${MAX_OUTSTANDING_PINGS} PINGs already unanswered`));
    const opaque = Buffer.alloc(8);
    opaque.writeUInt32BE(++this.#pingSeq >>> 0, 4);
    return new Promise<number>((resolve, reject) => {
      this.#pings.push({ key: opaque.toString('hex'), sent: performance.now(), resolve, reject });
      this.#out(encodePing(opaque, false));
    });
  }

  /** Graceful end: GOAWAY NO_ERROR, no new streams; the connection closes once open streams finish. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const p = new Promise<void>((resolve) => this.#closeWaiters.push(resolve));
    this.#sendGoaway(NO_ERROR, '');
    this.#maybeFinish();
    return p;
  }

  /** Ends the connection now: every stream is reset; `error` is reported to onClose. */
  destroy(error?: HboneError): void {
    if (this.#closed) return;
    if (error !== undefined) this.#error ??= error;
    this.#sendGoaway(error === undefined ? NO_ERROR : INTERNAL_ERROR, error?.message ?? '');
    this.flush();
    this.#teardown();
    this.#socket.destroy();
  }

  /**
   * Ends the connection with GOAWAY(`code`) carrying `reason` as its debug data (e.g. INADEQUATE_SECURITY
   * for a peer refused after the handshake), then closes it: every stream is reset, `reason` reported to
   * onClose. The socket is ended, not destroyed, so the GOAWAY is not lost to a TCP reset.
   */
  terminate(code: number, reason: string): void {
    if (this.#closed) return;
    this.#error ??= sessionError(`HTTP/2 session terminated (${codeName(code)}): ${reason}`);
    this.#sendGoaway(code, reason);
    this.flush();
    this.#teardown();
    this.#socket.end();
    this.#destroyLater();
  }

  // ---- tunnel hooks (called by Tunnel) ----

  /** @internal */
  respondTo(t: Tunnel, status: number, headers: readonly string[]): void {
    if (!this.#server) throw new HboneError('ERR_HBONE_CONFIG', 'respond() on a client tunnel');
    if (!Number.isInteger(status) || status < 200 || status > 599) throw new HboneError('ERR_HBONE_CONFIG', `response status ${status} outside 200..599`);
    if (t.flags & (DONE | RESPONDED | LOCAL_END)) return;
    const fields = [':status', String(status), ...headers];
    const fault = this.#checkOutgoing(fields);
    if (fault !== undefined) throw new HboneError('ERR_HBONE_CONFIG', fault);
    const block = this.#encoder.encode(fields);
    if (status === 200) {
      t.flags |= RESPONDED;
      this.#out(encodeHeaders(t.id, block, false, this.#peerMaxFrame));
      this.#resume(t);
      return;
    }
    // Refused: the answer ends our side; the request side is cut short with NO_ERROR (§8.1). Counted as
    // a frame we owe: a client that sends refused requests and reads nothing is cut off, not queued for.
    t.flags |= LOCAL_END;
    this.#control(encodeHeaders(t.id, block, true, this.#peerMaxFrame));
    if ((t.flags & REMOTE_END) === 0) this.#control(encodeRstStream(t.id, NO_ERROR));
    t.rstCode = NO_ERROR;
    this.#remove(t);
    t.destroy();
  }

  /** @internal */
  resetStream(t: Tunnel, code: number): void {
    if (t.flags & DONE) return;
    t.rstCode = code;
    this.#control(encodeRstStream(t.id, code));
    this.#remove(t);
    this.#rejectWaiter(t, sessionError(`stream ${t.id} reset locally (${codeName(code)})`));
  }

  /** @internal a paused tunnel the peer ended was read to its end: the connection gets its window back. */
  readEnded(t: Tunnel): void {
    if (t.flags & DONE || t.unread === 0) return;
    t.flags &= ~PAUSED;
    const n = t.unread;
    t.unread = 0;
    this.#creditConnection(n);
  }

  /** @internal the tunnel's reader wants more: credit what it held back. */
  readResumed(t: Tunnel): void {
    if ((t.flags & PAUSED) === 0) return;
    t.flags &= ~PAUSED;
    const n = t.unread;
    t.unread = 0;
    if ((t.flags & DONE) === 0) this.#consumed(t, n);
  }

  /** @internal */
  sendData(t: Tunnel, chunk: Buffer, off: number, cb: (err?: Error | null) => void): void {
    if (t.flags & (DONE | LOCAL_END)) {
      cb(sessionError(`write on closed stream ${t.id}`));
      return;
    }
    if (this.#closed) {
      cb(this.#error ?? sessionError('HTTP/2 session is closed'));
      return;
    }
    if (this.#server && (t.flags & RESPONDED) === 0) {
      this.#hold(t, chunk, off, cb); // sent once respond(200) comes
      return;
    }
    while (off < chunk.length) {
      const n = Math.min(chunk.length - off, t.sendWindow, this.#sendWindow, this.#peerMaxFrame);
      if (n <= 0) {
        this.#hold(t, chunk, off, cb);
        if (this.#sendWindow <= 0 && (t.flags & BLOCKED) === 0) {
          t.flags |= BLOCKED;
          this.#blocked.push(t);
        }
        return;
      }
      this.#out(encodeDataHeader(t.id, n, false));
      this.#out(off === 0 && n === chunk.length ? chunk : chunk.subarray(off, off + n));
      t.sendWindow -= n;
      this.#sendWindow -= n;
      off += n;
    }
    // Only when 'drain' will come: a socket whose high-water mark is above the limit emits none below it.
    if (this.#socket.writableLength > WRITE_QUEUE_LIMIT && this.#socket.writableNeedDrain) {
      // Backpressure: the tunnel's next write waits until the connection drains.
      t.pendingCb = cb;
      this.#drainWaiters.push(t);
    } else cb();
  }

  /** @internal */
  sendEnd(t: Tunnel, cb: (err?: Error | null) => void): void {
    if (t.flags & DONE) {
      cb();
      return;
    }
    if (this.#server && (t.flags & RESPONDED) === 0) {
      t.flags |= END_PENDING;
      t.pendingCb = cb;
      return;
    }
    t.flags |= LOCAL_END;
    this.#out(encodeDataHeader(t.id, 0, true));
    if (t.flags & REMOTE_END) this.#completed(t);
    cb();
  }

  /** @internal */
  streamDestroyed(t: Tunnel, err: Error | null): void {
    if (t.flags & DONE) return;
    // destroy() mid-stream tells the peer the tunnel is gone (CANCEL); a failure is INTERNAL_ERROR.
    const code = err instanceof H2ProtocolError ? err.h2CodeNumber : err === null ? CANCEL : INTERNAL_ERROR;
    this.resetStream(t, code);
  }

  /** @internal flushes the frames corked during this turn. */
  flush(): void {
    if (!this.#corked) return;
    this.#corked = false;
    this.#socket.uncork();
  }

  // ---- reading ----

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    try {
      this.#reader.push(chunk);
    } catch (err) {
      if (err instanceof H2ProtocolError) this.#fail(err);
      else this.#fail(new H2ProtocolError('INTERNAL_ERROR', 'connection', 0, `internal error handling a frame: ${(err as Error).message}`, { cause: err }));
    }
  }

  #frame(f: Frame): void {
    if (this.#closed) return;
    if (f.type === FrameType.DATA && !f.first) {
      this.#dataPiece(f);
      return;
    }
    if (this.#dataLeft > 0) this.#settlePadding();
    if (!this.#peerSettingsSeen && !(f.type === FrameType.SETTINGS && !f.ack)) {
      throw new H2ProtocolError('PROTOCOL_ERROR', 'connection', f.streamId, `first frame from the peer is ${f.type === FrameType.SETTINGS ? 'a SETTINGS ACK' : `type ${f.type}`}, not SETTINGS`);
    }
    switch (f.type) {
      case FrameType.DATA:
        this.#dataStart(f);
        return;
      case FrameType.HEADERS:
        this.#headers(f);
        return;
      case FrameType.PRIORITY:
        return; // deprecated (§5.3.2); allowed on any stream, idle included
      case FrameType.RST_STREAM: {
        this.#idleCheck(f.streamId, 'RST_STREAM');
        // The rapid-reset guard is a server's (CVE-2023-44487): a client is told NO_ERROR after every
        // refused CONNECT (§8.1), and a busy one is refused more than the guard's limit.
        if (this.#server) this.#countReset();
        const t = this.#streams.get(f.streamId);
        if (t === undefined) return; // closed: nothing to do
        t.rstCode = f.errorCode;
        this.#remove(t);
        const message = `stream ${t.id} reset by peer (${codeName(f.errorCode)})`;
        const err =
          f.errorCode === REFUSED_STREAM
            ? refused(t.id, message)
            : sessionError(message, new H2ProtocolError(CODE_NAMES.get(f.errorCode) ?? 'INTERNAL_ERROR', 'stream', t.id, message));
        if (t.waiter !== undefined) {
          this.#rejectWaiter(t, err);
          t.destroy();
        } else t.destroy(f.errorCode === NO_ERROR ? undefined : err);
        return;
      }
      case FrameType.SETTINGS:
        if (f.ack) this.#settingsAcked();
        else this.#peerSettings(f.settings);
        return;
      case FrameType.PING:
        if (!f.ack) {
          this.#control(encodePing(f.opaque, true));
          return;
        }
        this.#pingAck(f.opaque);
        return;
      case FrameType.GOAWAY:
        this.#goaway(f.lastStreamId, f.errorCode, f.debugData);
        return;
      case FrameType.WINDOW_UPDATE:
        this.#windowUpdate(f.streamId, f.increment);
        return;
    }
  }

  #readerStreamError(e: H2ProtocolError): void {
    const t = this.#streams.get(e.streamId);
    if (t !== undefined) this.#streamError(t, e);
    else {
      this.#countReset();
      this.#control(encodeRstStream(e.streamId, e.h2CodeNumber));
    }
  }

  /** Frames other than HEADERS/PRIORITY on a stream never opened are a connection error (§5.1). */
  #idleCheck(id: number, what: string): void {
    const ours = (id & 1) === (this.#server ? 0 : 1);
    const idle = ours ? id >= this.#nextId : id > this.#lastPeerId;
    if (idle) throw new H2ProtocolError('PROTOCOL_ERROR', 'connection', id, `${what} on idle stream ${id}`);
  }

  #dataStart(f: DataFrame): void {
    const id = f.streamId;
    this.#idleCheck(id, 'DATA');
    this.#recvWindow -= f.flowLength;
    if (this.#recvWindow < 0) {
      throw new H2ProtocolError('FLOW_CONTROL_ERROR', 'connection', id, `DATA on stream ${id} exceeds the connection window by ${-this.#recvWindow} bytes`);
    }
    if (f.flowLength === 0 && !f.endStream) {
      if (++this.#emptyData > this.#maxEmptyData) throw new H2ProtocolError('ENHANCE_YOUR_CALM', 'connection', id, `more than ${this.#maxEmptyData} empty DATA frames in a row`);
    } else this.#emptyData = 0;
    const t = this.#streams.get(id);
    this.#dataTunnel = undefined;
    this.#dataLeft = 0;
    if (t === undefined) {
      // A stream already closed (we may have reset it, §5.1): discarded, the connection window given back.
      this.#creditConnection(f.flowLength);
      return;
    }
    let fault: H2ProtocolError | undefined;
    if (t.flags & REMOTE_END) fault = new H2ProtocolError('STREAM_CLOSED', 'stream', id, `DATA on stream ${id} after END_STREAM`);
    else if (!this.#server && (t.flags & RESPONDED) === 0) fault = streamProtocolError(id, `DATA on stream ${id} before the response`);
    else {
      t.recvWindow -= f.flowLength;
      if (t.recvWindow < 0) fault = new H2ProtocolError('FLOW_CONTROL_ERROR', 'stream', id, `DATA on stream ${id} exceeds its window by ${-t.recvWindow} bytes`);
    }
    if (fault !== undefined) {
      this.#creditConnection(f.flowLength);
      this.#streamError(t, fault);
      return;
    }
    this.#dataTunnel = t;
    this.#dataLeft = f.flowLength;
    this.#dataPiece(f);
  }

  #dataPiece(f: DataFrame): void {
    const t = this.#dataTunnel;
    if (t === undefined) return;
    const n = f.data.length;
    this.#dataLeft -= n;
    if (t.flags & DONE) {
      this.#creditConnection(n);
    } else if (n > 0) {
      // Credited back only if the reader's buffer took it below its mark: a paused tunnel then holds
      // at most that mark plus its window, whatever the frame size.
      const more = t.push(f.data);
      if (t.flags & PAUSED) t.unread += n;
      else if (more) this.#consumed(t, n);
      else {
        t.flags |= PAUSED;
        t.unread += n;
      }
    }
    if (f.endStream) {
      if (this.#dataLeft > 0) this.#settlePadding();
      this.#dataTunnel = undefined;
      if ((t.flags & DONE) === 0) this.#remoteEnd(t);
    }
  }

  /** Padding counts against the windows but is never read: given back as soon as the frame is over. */
  #settlePadding(): void {
    const t = this.#dataTunnel;
    const n = this.#dataLeft;
    this.#dataLeft = 0;
    if (t === undefined) return;
    if (t.flags & DONE) this.#creditConnection(n);
    else this.#consumed(t, n);
  }

  /** n bytes of `t` were read (or discarded): the peer may send them again. */
  #consumed(t: Tunnel, n: number): void {
    if (n === 0) return;
    t.credit += n;
    if (t.credit >= this.#streamWindow / 4 && (t.flags & REMOTE_END) === 0) {
      this.#out(encodeWindowUpdate(t.id, t.credit));
      t.recvWindow += t.credit;
      t.credit = 0;
    }
    this.#creditConnection(n);
  }

  #creditConnection(n: number): void {
    this.#connCredit += n;
    if (this.#connCredit >= this.#connWindow / 4 && this.#connCredit > 0) {
      this.#out(encodeWindowUpdate(0, this.#connCredit));
      this.#recvWindow += this.#connCredit;
      this.#connCredit = 0;
    }
  }

  #headers(f: HeadersFrame): void {
    const id = f.streamId;
    let fields: string[] | undefined;
    let fault: H2ProtocolError | undefined;
    try {
      // Always decoded, even for a stream about to be refused: the HPACK state is the connection's.
      fields = this.#decoder.decode(f.block, id);
    } catch (err) {
      if (!(err instanceof H2ProtocolError) || err.scope === 'connection') throw err;
      fault = err;
    }
    const t = this.#streams.get(id);
    if (t === undefined) {
      if (this.#server && (id & 1) === 1 && id > this.#lastPeerId) {
        this.#lastPeerId = id;
        if (fault !== undefined) this.#refuse(id, fault.h2CodeNumber);
        else this.#request(id, fields ?? [], f.endStream);
        return;
      }
      const ours = (id & 1) === (this.#server ? 0 : 1);
      if (ours ? id >= this.#nextId : id > this.#lastPeerId) {
        throw new H2ProtocolError('PROTOCOL_ERROR', 'connection', id, `HEADERS on stream ${id}, which ${this.#server ? 'a client may not open (even or not increasing)' : 'we never opened'}`);
      }
      return; // a stream already closed (possibly reset by us): ignored (§5.1)
    }
    if (fault !== undefined) {
      this.#streamError(t, fault);
      return;
    }
    if (this.#server || (t.flags & RESPONDED) !== 0) {
      // Trailers: they must end the stream and carry no pseudo-fields (§8.1).
      const list = fields ?? [];
      if ((t.flags & REMOTE_END) !== 0) this.#streamError(t, new H2ProtocolError('STREAM_CLOSED', 'stream', id, `HEADERS on stream ${id} after END_STREAM`));
      else if (!f.endStream) this.#streamError(t, streamProtocolError(id, `HEADERS on stream ${id} after the ${this.#server ? 'request' : 'response'} without END_STREAM`));
      else if (list.some((v, i) => i % 2 === 0 && v.startsWith(':'))) this.#streamError(t, streamProtocolError(id, `trailers on stream ${id} carry a pseudo-field`));
      else this.#remoteEnd(t);
      return;
    }
    this.#response(t, fields ?? [], f.endStream);
  }

  /** Server: a new stream's request. Malformed ones are stream errors (§8.1.1). */
  #request(id: number, fields: string[], endStream: boolean): void {
    if (this.#goawaySent) {
      this.#refuse(id, REFUSED_STREAM);
      return;
    }
    let method: string | undefined;
    let authority: string | undefined;
    let fault: string | undefined;
    let pathOrScheme: string | undefined;
    const headers: string[] = [];
    for (let i = 0; i + 1 < fields.length && fault === undefined; i += 2) {
      const name = fields[i] ?? '';
      const value = fields[i + 1] ?? '';
      if (name.startsWith(':')) {
        if (headers.length > 0) fault = `pseudo-field ${name} after a regular field`;
        else if (name === ':method' && method === undefined) method = value;
        else if (name === ':authority' && authority === undefined) authority = value;
        else if (name === ':path' || name === ':scheme' || name === ':protocol') pathOrScheme ??= name;
        else fault = `${name === ':method' || name === ':authority' ? 'repeated' : 'unknown'} pseudo-field ${name}`;
      } else {
        fault = badField(name, value);
        headers.push(name, value);
      }
    }
    if (fault === undefined && method === undefined) fault = 'request without :method';
    if (fault === undefined && method === 'CONNECT') {
      // §8.5: no :scheme or :path (we do not offer RFC 8441's extended CONNECT, so no :protocol).
      if (pathOrScheme !== undefined) fault = `CONNECT request carries ${pathOrScheme}`;
      else if (authority === undefined || authority.length === 0) fault = 'CONNECT request without :authority';
    }
    if (fault !== undefined) {
      this.#refuse(id, PROTOCOL_ERROR);
      return;
    }
    if (this.#streams.size >= this.#maxConcurrent) {
      this.#refuse(id, REFUSED_STREAM);
      return;
    }
    const t = new Tunnel(this, id, this.#peerInitialWindow, this.#localInitialWindow);
    this.#streams.set(id, t);
    if (method !== 'CONNECT') {
      // Well-formed but not what this server does: 405 names the one method it serves (RFC 9110 §15.5.6).
      t.on('error', ignoreError);
      this.respondTo(t, 405, ['allow', 'CONNECT']);
      return;
    }
    if (endStream) this.#remoteEnd(t);
    try {
      this.#onConnect?.(t, { authority: authority ?? '', headers });
    } catch (err) {
      if ((t.flags & DONE) === 0) {
        t.rstCode = INTERNAL_ERROR;
        this.#control(encodeRstStream(id, INTERNAL_ERROR));
        this.#remove(t);
        // The error goes to the tunnel only if the handler got as far as listening for one.
        t.destroy(t.listenerCount('error') > 0 ? sessionError(`onConnect failed for stream ${id}: ${(err as Error).message}`, err) : undefined);
      }
    }
  }

  /** Client: the answer to our CONNECT. */
  #response(t: Tunnel, fields: string[], endStream: boolean): void {
    const id = t.id;
    let status: string | undefined;
    let fault: string | undefined;
    let regular = false;
    for (let i = 0; i + 1 < fields.length && fault === undefined; i += 2) {
      const name = fields[i] ?? '';
      if (name.startsWith(':')) {
        if (regular) fault = `pseudo-field ${name} after a regular field`;
        else if (name === ':status' && status === undefined) status = fields[i + 1];
        else fault = `${name === ':status' ? 'repeated' : 'unexpected'} pseudo-field ${name} in a response`;
      } else {
        regular = true;
        fault = badField(name, fields[i + 1] ?? '');
      }
    }
    const code = status !== undefined && /^[1-5]\d\d$/.test(status) ? Number(status) : 0;
    if (fault === undefined && code === 0) fault = `response without a valid :status (${status})`;
    if (fault === undefined && code >= 100 && code < 200 && (endStream || code === 101)) fault = `interim response ${code}${endStream ? ' with END_STREAM' : ''}`;
    if (fault !== undefined) {
      this.#streamError(t, streamProtocolError(id, `stream ${id}: ${fault}`));
      return;
    }
    if (code < 200) return; // interim: the final answer follows
    if (code !== 200) {
      const err = new HboneError('ERR_HBONE_STATUS', `CONNECT on stream ${id} answered ${code}`, { status: code });
      if (!endStream) this.#control(encodeRstStream(id, CANCEL));
      t.rstCode = endStream ? NO_ERROR : CANCEL;
      this.#remove(t);
      this.#rejectWaiter(t, err);
      t.destroy();
      return;
    }
    t.flags |= RESPONDED;
    const w = t.waiter;
    t.waiter = undefined;
    w?.resolve(t);
    if (endStream) this.#remoteEnd(t);
  }

  #refuse(id: number, code: number): void {
    this.#countReset();
    this.#control(encodeRstStream(id, code));
  }

  #countReset(): void {
    const now = performance.now();
    if (now - this.#resetWindowStart > this.#resetWindowMs) {
      this.#resetWindowStart = now;
      this.#resets = 0;
    }
    if (++this.#resets > this.#maxResets) {
      throw new H2ProtocolError('ENHANCE_YOUR_CALM', 'connection', 0, `more than ${this.#maxResets} stream resets in ${this.#resetWindowMs} ms`);
    }
  }

  #peerSettings(s: Settings): void {
    this.#peerSettingsSeen = true;
    if (!this.#server && s.enablePush === 1) throw new H2ProtocolError('PROTOCOL_ERROR', 'connection', 0, 'server SETTINGS has ENABLE_PUSH=1');
    if (s.maxConcurrentStreams !== undefined) this.#peerMaxConcurrent = s.maxConcurrentStreams;
    if (s.maxFrameSize !== undefined) this.#peerMaxFrame = s.maxFrameSize;
    if (s.initialWindowSize !== undefined) {
      // §6.9.2: every stream's send window moves by the difference, possibly below zero.
      const delta = s.initialWindowSize - this.#peerInitialWindow;
      this.#peerInitialWindow = s.initialWindowSize;
      for (const t of this.#streams.values()) {
        t.sendWindow += delta;
        if (t.sendWindow > MAX_WINDOW) throw new H2ProtocolError('FLOW_CONTROL_ERROR', 'connection', t.id, `INITIAL_WINDOW_SIZE ${s.initialWindowSize} overflows the window of stream ${t.id}`);
      }
      if (delta > 0) for (const t of [...this.#streams.values()]) this.#resume(t);
    }
    this.#control(encodeSettingsAck());
    this.#onRemoteSettings?.();
  }

  #settingsAcked(): void {
    if (this.#settingsTimer === undefined) return; // we send SETTINGS once: a second ACK is harmless
    clearTimeout(this.#settingsTimer);
    this.#settingsTimer = undefined;
    const delta = this.#streamWindow - this.#localInitialWindow;
    this.#localInitialWindow = this.#streamWindow;
    // Larger frames are accepted only once the peer knows it may send them.
    this.#reader.setMaxFrameSize(this.#maxFrameSize);
    for (const t of this.#streams.values()) t.recvWindow += delta;
  }

  #pingAck(opaque: Buffer): void {
    const key = opaque.toString('hex');
    const i = this.#pings.findIndex((p) => p.key === key);
    if (i < 0) return; // not ours (or answered twice): ignored
    const [p] = this.#pings.splice(i, 1);
    p?.resolve(performance.now() - p.sent);
  }

  #goaway(lastStreamId: number, errorCode: number, debug: Buffer): void {
    this.#goawayReceived = this.#goawayReceived < 0 ? lastStreamId : Math.min(this.#goawayReceived, lastStreamId);
    if (errorCode !== NO_ERROR) {
      const message = `peer sent GOAWAY ${codeName(errorCode)}: ${debug.toString('latin1').slice(0, 200)}`;
      this.#error ??= sessionError(message, new H2ProtocolError(CODE_NAMES.get(errorCode) ?? 'INTERNAL_ERROR', 'connection', lastStreamId, message));
    }
    // First: whoever retries the refused streams below must already know this session is going.
    this.#onGoaway?.(errorCode, lastStreamId);
    // Streams we opened that the peer will not process: safe to open again elsewhere (§6.8).
    for (const t of [...this.#streams.values()]) {
      if ((t.id & 1) !== (this.#server ? 0 : 1) || t.id <= lastStreamId) continue;
      t.rstCode = REFUSED_STREAM;
      this.#remove(t);
      const err = refused(t.id, `stream ${t.id} not processed before GOAWAY (last stream ${lastStreamId}, ${codeName(errorCode)})`);
      if (t.waiter !== undefined) {
        this.#rejectWaiter(t, err);
        t.destroy();
      } else t.destroy(err);
    }
    if (errorCode === NO_ERROR) {
      this.#maybeFinish();
      return;
    }
    // An error code ends the connection (§5.4.1): what it still carries fails now, not at some timeout.
    this.flush();
    this.#teardown();
    this.#socket.end();
    this.#destroyLater();
  }

  #windowUpdate(id: number, increment: number): void {
    if (id === 0) {
      this.#sendWindow += increment;
      if (this.#sendWindow > MAX_WINDOW) throw new H2ProtocolError('FLOW_CONTROL_ERROR', 'connection', 0, `WINDOW_UPDATE of ${increment} overflows the connection window`);
      const blocked = this.#blocked;
      this.#blocked = [];
      for (const t of blocked) {
        t.flags &= ~BLOCKED;
        this.#resume(t);
      }
      return;
    }
    this.#idleCheck(id, 'WINDOW_UPDATE');
    const t = this.#streams.get(id);
    if (t === undefined) return;
    t.sendWindow += increment;
    if (t.sendWindow > MAX_WINDOW) {
      this.#streamError(t, new H2ProtocolError('FLOW_CONTROL_ERROR', 'stream', id, `WINDOW_UPDATE of ${increment} overflows the window of stream ${id}`));
      return;
    }
    this.#resume(t);
  }

  // ---- stream state ----

  #hold(t: Tunnel, chunk: Buffer, off: number, cb: (err?: Error | null) => void): void {
    t.pendingChunk = chunk;
    t.pendingOff = off;
    t.pendingCb = cb;
  }

  /** Sends what a tunnel holds back (window opened, response sent). */
  #resume(t: Tunnel): void {
    if (t.flags & DONE) return;
    const chunk = t.pendingChunk;
    const cb = t.pendingCb;
    if (chunk !== undefined && cb !== undefined) {
      // Connection window short: sendData() queues the tunnel on the blocked list again.
      if (t.sendWindow <= 0 || (this.#server && (t.flags & RESPONDED) === 0)) return;
      t.pendingChunk = undefined;
      t.pendingCb = undefined;
      this.sendData(t, chunk, t.pendingOff, cb);
    } else if (t.flags & END_PENDING && cb !== undefined && (t.flags & RESPONDED) !== 0) {
      t.flags &= ~END_PENDING;
      t.pendingCb = undefined;
      this.sendEnd(t, cb);
    }
  }

  #onDrain(): void {
    this.#queuedControl = 0;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const t of waiters) {
      const cb = t.pendingCb;
      if (t.pendingChunk !== undefined || cb === undefined) continue;
      t.pendingCb = undefined;
      if ((t.flags & DONE) === 0) cb();
    }
  }

  #remoteEnd(t: Tunnel): void {
    t.flags |= REMOTE_END;
    t.push(null);
    // Node calls no _read() after the end is pushed, so what a paused reader held would never be given
    // back that way: it is, once the reader has taken it all ('end'), or when the stream is removed.
    if (t.flags & PAUSED) t.once('end', readToEnd);
    if (t.flags & LOCAL_END) this.#completed(t);
  }

  /** Both directions ended: closed cleanly. */
  #completed(t: Tunnel): void {
    t.rstCode = NO_ERROR;
    this.#remove(t);
  }

  #streamError(t: Tunnel, err: H2ProtocolError): void {
    if (t.flags & DONE) return;
    this.#countReset();
    t.rstCode = err.h2CodeNumber;
    this.#control(encodeRstStream(t.id, err.h2CodeNumber));
    this.#remove(t);
    const e = sessionError(err.message, err);
    if (t.waiter !== undefined) {
      this.#rejectWaiter(t, e);
      t.destroy();
    } else t.destroy(e);
  }

  #rejectWaiter(t: Tunnel, err: HboneError): void {
    const w = t.waiter;
    t.waiter = undefined;
    w?.reject(err);
  }

  #remove(t: Tunnel): void {
    if (t.flags & DONE) return;
    t.flags |= DONE;
    t.pendingChunk = undefined;
    // Bytes it never let its reader have still hold the connection window.
    const unread = t.unread;
    t.unread = 0;
    if (this.#streams.get(t.id) === t) this.#streams.delete(t.id);
    this.#onStreamClosed?.(t);
    if (!this.#closed) {
      this.#creditConnection(unread);
      this.#maybeFinish();
    }
  }

  // ---- writing and lifecycle ----

  /** Queues a frame; frames written in one turn of the event loop go out together. */
  #out(b: Buffer): void {
    if (this.#closed) return;
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(uncork, this);
    }
    this.#socket.write(b);
  }

  /** A frame we owe the peer (ACK, RST_STREAM): a peer that makes us queue too many while not reading is cut off. */
  #control(b: Buffer): void {
    this.#out(b);
    if (this.#socket.writableNeedDrain && ++this.#queuedControl > this.#maxQueuedControl) {
      // Nothing more can reach it in time (not even GOAWAY): drop the connection.
      this.#error ??= sessionError(
        `peer made us queue more than ${this.#maxQueuedControl} control frames without reading`,
        new H2ProtocolError('ENHANCE_YOUR_CALM', 'connection', 0, 'control frame queue full'),
      );
      this.#teardown();
      this.#socket.destroy();
    }
  }

  #sendGoaway(code: number, message: string): void {
    if (this.#goawaySent || this.#closed) return;
    this.#goawaySent = true;
    this.#out(encodeGoaway(this.#lastPeerId, code, Buffer.from(message.slice(0, 256), 'utf8')));
  }

  #maybeFinish(): void {
    if (this.#closed || this.#streams.size > 0 || (!this.#goawaySent && this.#goawayReceived < 0)) return;
    this.#sendGoaway(NO_ERROR, '');
    this.flush();
    this.#teardown();
    this.#socket.end();
    this.#destroyLater();
  }

  /** A connection error (§5.4.1): GOAWAY with its code, every stream failed, the socket closed. */
  #fail(err: H2ProtocolError): void {
    if (this.#closed) return;
    this.#error ??= sessionError(`HTTP/2 connection error ${err.h2Code}: ${err.message}`, err);
    this.#sendGoaway(err.h2CodeNumber, err.message);
    this.flush();
    this.#teardown();
    this.#socket.end();
    this.#destroyLater();
  }

  #destroyLater(): void {
    // A peer that never reads would keep the socket open forever after our FIN.
    this.#destroyTimer ??= setTimeout(destroySocket, 1000, this.#socket);
    this.#destroyTimer.unref();
  }

  /** Marks the session closed and fails what is still open. */
  #teardown(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#settingsTimer !== undefined) clearTimeout(this.#settingsTimer);
    this.#settingsTimer = undefined;
    const err = this.#error ?? sessionError('HTTP/2 session closed');
    for (const t of [...this.#streams.values()]) {
      t.rstCode = CANCEL;
      this.#remove(t);
      if (t.waiter !== undefined) {
        this.#rejectWaiter(t, err);
        t.destroy();
      } else t.destroy(err);
    }
    for (const p of this.#pings.splice(0)) p.reject(err);
    this.#blocked = [];
    this.#drainWaiters = [];
  }

  #onSocketClose(): void {
    if (this.#destroyTimer !== undefined) clearTimeout(this.#destroyTimer);
    if (!this.#closed) {
      this.#error ??= this.#streams.size > 0 || !this.#goawaySent ? sessionError('HTTP/2 connection closed by the peer') : undefined;
      this.#teardown();
    }
    for (const w of this.#closeWaiters.splice(0)) w();
    this.#onClose?.(this.#error);
  }

  /** Refuses to send what the peer would take for a malformed message (names must be lowercase tokens). */
  #checkOutgoing(fields: readonly string[]): string | undefined {
    for (let i = 0; i < fields.length; i += 2) {
      const name = fields[i] ?? '';
      const value = fields[i + 1] ?? '';
      if (!/^:?[a-z0-9!#$%&'*+\-.^_`|~]+$/.test(name)) return `invalid header name ${JSON.stringify(name)}`;
      // Field values are octets (RFC 9110 §5.5): HPACK writes each character as one, so a character
      // past U+00FF would arrive as another one.
      if (/[^\t\x20-\x7e\x80-\xff]/.test(value)) return `header ${name} has a value with a control character or one outside Latin-1`;
      if (i >= 4 && !this.#server && name.startsWith(':')) return `extra pseudo-header ${name}`;
    }
    return undefined;
  }
}

function destroySocket(socket: Duplex): void {
  socket.destroy();
}
