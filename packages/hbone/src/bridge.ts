import * as http2 from 'node:http2';
import type { Duplex } from 'node:stream';

const { NGHTTP2_CONNECT_ERROR, NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;

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
   * Bytes a writer may hold before its reader is paused. Above Node's 16 KiB default so one
   * event-loop turn can hand a socket several HTTP/2 DATA frames as one write; still a hard bound.
   */
  maxBuffered?: number;
}

function isHttp2Stream(d: Duplex): d is http2.Http2Stream {
  return 'rstCode' in d && typeof (d as Partial<http2.Http2Stream>).close === 'function';
}

/**
 * Copies bytes both ways between an HBONE tunnel (an HTTP/2 stream) and a TCP socket until both are
 * done, honouring backpressure both ways. FIN ↔ END_STREAM are propagated as half-closes; a TCP reset
 * or socket error becomes RST_STREAM(CONNECT_ERROR) and an RST_STREAM becomes a TCP reset (RFC 9113 §8.5).
 */
export function bridge(tunnel: Duplex, socket: Duplex, o: BridgeOptions = {}): Promise<BridgeResult> {
  const maxBuffered = o.maxBuffered ?? 256 * 1024;
  // A FIN from the socket must only end the tunnel's sending side; without this a net.Socket made
  // with defaults would also end its own writable and lose what the tunnel still carries to it.
  (socket as Duplex & { allowHalfOpen: boolean }).allowHalfOpen = true;
  const result: BridgeResult = { tunnelToSocket: 0, socketToTunnel: 0, reset: false };
  return new Promise((resolve) => {
    let open = 2;
    const done = (): void => {
      if (--open === 0) resolve(result);
    };
    const resetSocket = (): void => {
      result.reset = true;
      const s = socket as Duplex & { resetAndDestroy?: () => void; pending?: boolean; destroyed: boolean };
      if (s.destroyed) return;
      if (typeof s.resetAndDestroy === 'function' && !s.pending) s.resetAndDestroy();
      else s.destroy();
    };
    const resetTunnel = (code: number): void => {
      result.reset = true;
      if (tunnel.destroyed) return;
      if (isHttp2Stream(tunnel)) tunnel.close(code);
      else tunnel.destroy();
    };

    pump(tunnel, socket, maxBuffered, (n) => (result.tunnelToSocket += n));
    pump(socket, tunnel, maxBuffered, (n) => (result.socketToTunnel += n));

    tunnel.on('error', () => {
      // Reported through 'close' (rstCode); the listener keeps an unhandled error from throwing.
    });
    socket.on('error', () => resetTunnel(NGHTTP2_CONNECT_ERROR));

    tunnel.once('close', () => {
      const code = isHttp2Stream(tunnel) ? tunnel.rstCode : undefined;
      if (code !== undefined && code !== NGHTTP2_NO_ERROR) {
        resetSocket();
      } else if (!socket.destroyed) {
        // The stream is gone: finish what was already written to the socket, then let it go.
        if (socket.writableFinished) socket.destroy();
        else {
          socket.once('finish', () => socket.destroy());
          if (!socket.writableEnded) socket.end();
        }
      }
      done();
    });
    socket.once('close', () => {
      const errored = (socket as Duplex & { errored?: unknown }).errored;
      if (errored) resetTunnel(NGHTTP2_CONNECT_ERROR);
      else if (!tunnel.destroyed) {
        if (!tunnel.readableEnded) resetTunnel(NGHTTP2_CANCEL);
        else if (!tunnel.writableEnded) tunnel.end();
      }
      done();
    });
  });
}

function pump(src: Duplex, dst: Duplex, maxBuffered: number, count: (n: number) => void): void {
  // Pausing below the high-water mark would wait for a 'drain' that never comes.
  const limit = Math.max(maxBuffered, dst.writableHighWaterMark);
  let corked = false;
  const uncork = (): void => {
    corked = false;
    dst.uncork();
  };
  src.on('data', (chunk: Buffer) => {
    count(chunk.length);
    if (dst.writableEnded || dst.destroyed) return;
    // Cork until the end of this event-loop turn: chunks that arrive together leave in one writev.
    if (!corked) {
      corked = true;
      dst.cork();
      setImmediate(uncork);
    }
    dst.write(chunk);
    if (dst.writableLength >= limit) src.pause();
  });
  // 'drain' fires once the writer's buffer empties after any write that went over its high-water mark.
  dst.on('drain', () => {
    if (src.isPaused()) src.resume();
  });
  const forwardEnd = (): void => {
    if (isHttp2Stream(src) && src.rstCode !== undefined && src.rstCode !== NGHTTP2_NO_ERROR) return;
    if (!dst.writableEnded && !dst.destroyed) dst.end();
  };
  src.once('end', () => {
    // nghttp2 ends a stream's readable before Node records an RST_STREAM's code: look again after
    // this turn so a reset becomes a TCP reset (on 'close'), not a FIN.
    if (isHttp2Stream(src)) setImmediate(forwardEnd);
    else forwardEnd();
  });
}
