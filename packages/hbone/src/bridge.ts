import type { Duplex } from 'node:stream';
import { H2_ERROR_CODES } from './errors.js';

const { CONNECT_ERROR, CANCEL, NO_ERROR } = H2_ERROR_CODES;

/** An HTTP/2 stream as a tunnel: ours (src/h2) or a node:http2 stream an embedder passes in. */
interface Http2Stream extends Duplex {
  readonly rstCode: number | undefined;
  close(code?: number): void;
}

/** Bytes moved by a finished bridge and how it ended. */
export interface BridgeResult {
  /** Bytes read from the tunnel and written to the socket. */
  tunnelToSocket: number;
  /** Bytes read from the socket and written to the tunnel. */
  socketToTunnel: number;
  /** True when either side ended with a reset (TCP RST, RST_STREAM with an error, or an error). */
  reset: boolean;
}

export interface BridgeOptions {
  /**
   * Bytes a writer may hold before its reader is paused. Above Node's default high-water mark (16 KiB
   * on Node 20, 64 KiB since 22) so one event-loop turn can hand a socket several HTTP/2 DATA frames as
   * one write; still a hard bound. A writer whose high-water mark is higher than this is paused at that mark.
   */
  maxBuffered?: number;
}

export const DEFAULT_MAX_BUFFERED = 256 * 1024;

function isHttp2Stream(d: Duplex): d is Http2Stream {
  return 'rstCode' in d && typeof (d as Partial<Http2Stream>).close === 'function';
}

/**
 * Copies bytes both ways between an HBONE tunnel (an HTTP/2 stream) and a TCP socket until both are
 * done, honouring backpressure both ways. FIN ↔ END_STREAM are propagated as half-closes; a TCP reset
 * or socket error becomes RST_STREAM(CONNECT_ERROR) and an RST_STREAM becomes a TCP reset (RFC 9113 §8.5).
 */
export function bridge(tunnel: Duplex, socket: Duplex, o: BridgeOptions = {}): Promise<BridgeResult> {
  return new Promise((resolve) => new CallbackBridge(tunnel, socket, o.maxBuffered ?? DEFAULT_MAX_BUFFERED, resolve).start());
}

// Idle tunnels are the common case (a proxy holds thousands): the listeners below are shared
// functions that find their bridge through one property on each side, not closures per tunnel,
// and a bridge is one object (its owner extends it) with its flags packed in one number.
const kBridge = Symbol('hbone.bridge');
type Side = Duplex & { [kBridge]?: Bridge };

/** The other side of a bridged tunnel or socket (the buffer budget counts what it queues), if bridged. */
export function bridgedPeer(side: Duplex): Duplex | undefined {
  const b = (side as Side)[kBridge];
  if (b === undefined) return undefined;
  return b.tunnel === side ? b.socket : b.tunnel;
}

const SOCKET_CORKED = 1;
const TUNNEL_CORKED = 2;
const TUNNEL_IS_H2 = 4;
const SOCKET_IS_H2 = 8;
const RESET = 16;
const TUNNEL_DONE = 32;
const SOCKET_DONE = 64;
/** A 'drain' listener is on that writer (added at its first pause: most tunnels never pause). */
const TUNNEL_DRAIN = 128;
const SOCKET_DRAIN = 256;

/** Both directions of one tunnel ↔ socket pair; `finished` runs once both sides are closed. */
export abstract class Bridge {
  tunnelToSocket = 0;
  socketToTunnel = 0;
  flags = 0;
  // Pausing below the high-water mark would wait for a 'drain' that never comes.
  readonly toSocketLimit: number;
  readonly toTunnelLimit: number;

  constructor(
    readonly tunnel: Side,
    readonly socket: Side,
    maxBuffered: number,
  ) {
    if (isHttp2Stream(tunnel)) this.flags |= TUNNEL_IS_H2;
    if (isHttp2Stream(socket)) this.flags |= SOCKET_IS_H2;
    this.toSocketLimit = Math.max(maxBuffered, socket.writableHighWaterMark);
    this.toTunnelLimit = Math.max(maxBuffered, tunnel.writableHighWaterMark);
  }

  protected abstract finished(r: BridgeResult): void;

  /** Starts copying; call once. */
  start(): void {
    const { tunnel, socket } = this;
    // A FIN from the socket must only end the tunnel's sending side; without this a net.Socket made
    // with defaults would also end its own writable and lose what the tunnel still carries to it.
    (socket as Duplex & { allowHalfOpen: boolean }).allowHalfOpen = true;
    tunnel[kBridge] = this;
    socket[kBridge] = this;
    // Only to keep an error from throwing: an owner's listener already does that.
    if (tunnel.listenerCount('error') === 0) tunnel.on('error', ignoreError);
    socket.on('error', onSocketError);
    tunnel.on('close', onTunnelClose);
    socket.on('close', onSocketClose);
    tunnel.on('end', onTunnelEnd);
    socket.on('end', onSocketEnd);
    tunnel.on('data', onTunnelData);
    socket.on('data', onSocketData);
  }

  /** One side closed: the second one finishes the bridge. */
  sideDone(side: number): void {
    if ((this.flags & side) !== 0) return;
    this.flags |= side;
    if ((this.flags & (TUNNEL_DONE | SOCKET_DONE)) === (TUNNEL_DONE | SOCKET_DONE)) {
      this.finished({ tunnelToSocket: this.tunnelToSocket, socketToTunnel: this.socketToTunnel, reset: (this.flags & RESET) !== 0 });
    }
  }
}

class CallbackBridge extends Bridge {
  constructor(
    tunnel: Duplex,
    socket: Duplex,
    maxBuffered: number,
    readonly onDone: (r: BridgeResult) => void,
  ) {
    super(tunnel, socket, maxBuffered);
  }

  protected finished(r: BridgeResult): void {
    this.onDone(r);
  }
}

/**
 * Chunks at least this big are bulk data (HTTP/2 DATA frames and TLS records carry up to 16 KiB): more
 * probably follow in this event-loop turn, so they are corked and leave together in one writev from a
 * setImmediate. A smaller chunk joins a batch already corked this turn (a bulk stream's frames straddle
 * TLS records, so bursts hold small fragments); otherwise it is a message of its own (a request, a
 * response) and is written at once: a round trip then waits for no deferral and allocates no immediate.
 */
export const COALESCE_MIN = 4096;

function onTunnelData(this: Side, chunk: Buffer): void {
  const b = this[kBridge]!;
  b.tunnelToSocket += chunk.length;
  const dst = b.socket;
  if (dst.writableEnded || dst.destroyed) return;
  if (chunk.length >= COALESCE_MIN && (b.flags & SOCKET_CORKED) === 0) {
    b.flags |= SOCKET_CORKED;
    dst.cork();
    setImmediate(uncorkSocket, b);
  }
  dst.write(chunk);
  if (dst.writableLength >= b.toSocketLimit) pauseUntilDrained(b, this, dst, SOCKET_DRAIN);
}

function onSocketData(this: Side, chunk: Buffer): void {
  const b = this[kBridge]!;
  b.socketToTunnel += chunk.length;
  const dst = b.tunnel;
  if (dst.writableEnded || dst.destroyed) return;
  // An HTTP/2 stream is not corked: its session already sends every DATA frame written in this turn
  // in one TLS write (ours from a nextTick, node:http2's from its own immediate); a cork released from
  // setImmediate would hold the bytes one more event-loop turn (an extra epoll_wait between the read and the write).
  if (chunk.length >= COALESCE_MIN && (b.flags & (TUNNEL_IS_H2 | TUNNEL_CORKED)) === 0) {
    b.flags |= TUNNEL_CORKED;
    dst.cork();
    setImmediate(uncorkTunnel, b);
  }
  dst.write(chunk);
  if (dst.writableLength >= b.toTunnelLimit) pauseUntilDrained(b, this, dst, TUNNEL_DRAIN);
}

/** `src` wrote past `dst`'s limit: paused until `dst` drains (its listener added once, at its first pause). */
function pauseUntilDrained(b: Bridge, src: Side, dst: Duplex, drainFlag: number): void {
  src.pause();
  // 'drain' fires once the writer's buffer empties after a write that went over its high-water
  // mark (never from inside write()), so a listener added now hears it.
  if ((b.flags & drainFlag) === 0) {
    b.flags |= drainFlag;
    dst.on('drain', onWriterDrain);
  }
}

function uncorkSocket(b: Bridge): void {
  b.flags &= ~SOCKET_CORKED;
  b.socket.uncork();
}

function uncorkTunnel(b: Bridge): void {
  b.flags &= ~TUNNEL_CORKED;
  b.tunnel.uncork();
}

/** A writer drained: its source, the other side, reads again. */
function onWriterDrain(this: Side): void {
  const src = bridgedPeer(this);
  if (src?.isPaused()) src.resume();
}

// node:http2 (an embedder's stream) ends a stream's readable before Node records an RST_STREAM's code:
// look again after this turn so a reset becomes a TCP reset (on 'close'), not a FIN.
function onTunnelEnd(this: Side): void {
  const b = this[kBridge]!;
  if ((b.flags & TUNNEL_IS_H2) !== 0) setImmediate(forwardEnd, b.tunnel, b.socket);
  else forwardEnd(b.tunnel, b.socket);
}

function onSocketEnd(this: Side): void {
  const b = this[kBridge]!;
  if ((b.flags & SOCKET_IS_H2) !== 0) setImmediate(forwardEnd, b.socket, b.tunnel);
  else forwardEnd(b.socket, b.tunnel);
}

function forwardEnd(src: Duplex, dst: Duplex): void {
  if (isHttp2Stream(src) && src.rstCode !== undefined && src.rstCode !== NO_ERROR) return;
  if (!dst.writableEnded && !dst.destroyed) dst.end();
}

function ignoreError(): void {
  // Reported through 'close' (rstCode); the listener keeps an unhandled error from throwing.
}

function onSocketError(this: Side): void {
  resetTunnel(this[kBridge]!, CONNECT_ERROR);
}

function resetSocket(b: Bridge): void {
  b.flags |= RESET;
  const s = b.socket as Side & { resetAndDestroy?: () => void; pending?: boolean };
  if (s.destroyed) return;
  if (typeof s.resetAndDestroy === 'function' && !s.pending) s.resetAndDestroy();
  else s.destroy();
}

function resetTunnel(b: Bridge, code: number): void {
  b.flags |= RESET;
  const t = b.tunnel;
  if (t.destroyed) return;
  if ((b.flags & TUNNEL_IS_H2) !== 0) (t as Http2Stream).close(code);
  else t.destroy();
}

function destroySocket(this: Duplex): void {
  this.destroy();
}

function onTunnelClose(this: Side): void {
  const b = this[kBridge]!;
  const socket = b.socket;
  const code = (b.flags & TUNNEL_IS_H2) !== 0 ? (b.tunnel as Http2Stream).rstCode : undefined;
  if (code !== undefined && code !== NO_ERROR) {
    resetSocket(b);
  } else if (!socket.destroyed) {
    // The stream is gone: finish what was already written to the socket, then let it go.
    if (socket.writableFinished) socket.destroy();
    else {
      socket.once('finish', destroySocket);
      if (!socket.writableEnded) socket.end();
    }
  }
  b.sideDone(TUNNEL_DONE);
}

function onSocketClose(this: Side): void {
  const b = this[kBridge]!;
  const tunnel = b.tunnel;
  const errored = (b.socket as Duplex & { errored?: unknown }).errored;
  if (errored) resetTunnel(b, CONNECT_ERROR);
  else if (!tunnel.destroyed) {
    if (!tunnel.readableEnded) resetTunnel(b, CANCEL);
    else if (!tunnel.writableEnded) tunnel.end();
  }
  b.sideDone(SOCKET_DONE);
}
