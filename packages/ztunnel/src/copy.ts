import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { setTcpKeepalive, type TcpKeepalive } from '@weir/netns';

export interface CopyResult {
  /** Bytes read from the downstream side and written upstream. */
  received: number;
  /** Bytes read from the upstream side and written downstream. */
  sent: number;
  /** The first error seen on either side (a reset counts as a close, not a failure of the copy). */
  error?: Error;
}

/**
 * Istio ztunnel's TCP keepalive: idle 180 s, then 9 probes 180 s apart. Pod listeners and dialled
 * sockets get it in their creating call (`keepalive` of @weir/netns listenTcp/connectTcp; accepted
 * sockets inherit the listener's), not a setTcpKeepalive per connection.
 */
export const TCP_KEEPALIVE: TcpKeepalive = Object.freeze({ idleS: 180, intervalS: 180, count: 9 });

/**
 * ztunnel's keepalive and no-delay settings for a socket that did not get them when it was made
 * (one handed over by a listener without them). Not Node's setKeepAlive, which sets only the idle
 * time (libuv forces interval 1 s, count 10).
 */
export function tuneSocket(socket: Socket): void {
  socket.setNoDelay(true);
  try {
    setTcpKeepalive(socket, TCP_KEEPALIVE);
  } catch {
    // Best effort, as in Istio: a socket already closed by its peer has no fd left to tune.
  }
}

/**
 * Copies both ways with backpressure, propagating half-close (one side's end ends the other's
 * writer). Resolves once both sides are closed; an error or abrupt close on one side destroys the
 * other.
 */
export function copyBidirectional(down: Duplex, up: Duplex): Promise<CopyResult> {
  return new Promise((resolve) => {
    const result: CopyResult = { received: 0, sent: 0 };
    down.on('data', (c: Buffer) => (result.received += c.length));
    up.on('data', (c: Buffer) => (result.sent += c.length));
    const onError = (err: Error): void => {
      result.error ??= err;
      down.destroy();
      up.destroy();
    };
    down.on('error', onError);
    up.on('error', onError);
    let closed = 0;
    const onClose = (self: Duplex, other: Duplex) => (): void => {
      // A side that closed without finishing both directions was cut off: cut the other too.
      if (!self.readableEnded || !self.writableFinished) other.destroy();
      if (++closed === 2) resolve(result);
    };
    down.once('close', onClose(down, up));
    up.once('close', onClose(up, down));
    down.pipe(up);
    up.pipe(down);
  });
}
