import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { HboneError, bridge, type HboneAbortSignal } from '@weir/hbone';
import type { ConnectionRecord } from './connection-record.js';
import type { ResponseFlag } from './metrics.js';

/**
 * The downstream socket's close as the abort signal of its tunnel open: an AbortController, its
 * signal and a closure per connection were ~3% of the outbound ztunnel's CPU per new connection.
 */
export class DownstreamClosed implements HboneAbortSignal {
  constructor(readonly socket: Socket) {}

  get aborted(): boolean {
    return this.socket.destroyed;
  }

  get reason(): Error {
    return new Error('downstream closed');
  }

  addEventListener(_type: 'abort', listener: () => void): void {
    // 'close' fires once: on(), not once() (a wrapper per call); the client removes it when settled.
    this.socket.on('close', listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    this.socket.off('close', listener);
  }
}

/** The access log's response flag for a tunnel open that failed. */
export function flagFor(err: unknown): ResponseFlag {
  if (err instanceof HboneError) {
    if (err.code === 'ERR_HBONE_TLS' || err.code === 'ERR_HBONE_IDENTITY_MISMATCH') return 'TLS_FAILURE';
    // Only a tunnel that was never established hints at a NetworkPolicy; an unanswered CONNECT is CONNECT.
    if (err.code === 'ERR_HBONE_TIMEOUT') return 'NETWORK_POLICY';
    if (err.code === 'ERR_HBONE_STATUS' && err.status === 401) return 'DENY';
  }
  return 'CONNECT';
}

/**
 * Opens the HBONE tunnel for a captured connection and bridges the two, recording the outcome:
 * on a failed open the socket is destroyed and `record` says why (`what` goes before the error).
 */
export async function tunnelOutbound(socket: Socket, record: ConnectionRecord, open: (signal: HboneAbortSignal) => Promise<Duplex>, what = ''): Promise<void> {
  let tunnel: Duplex;
  try {
    tunnel = await open(new DownstreamClosed(socket));
  } catch (err) {
    const flag = flagFor(err);
    const hint = flag === 'NETWORK_POLICY' ? ' (maybe a NetworkPolicy is blocking HBONE port 15008?)' : '';
    record.fail(flag, `${what}${(err as Error).message}${hint}`);
    socket.destroy();
    return;
  }
  if (socket.destroyed) {
    tunnel.destroy();
    record.fail('CONNECT', 'downstream closed before the tunnel was up');
    return;
  }
  const bridged = bridge(tunnel, socket);
  // A socket handed over paused (the SOCKS5 listener stops it after the handshake) stays paused
  // with only 'data' listeners attached: start it explicitly, now that the bridge is listening.
  socket.resume();
  // Not awaited: an idle connection then holds one small callback, not this whole async frame.
  void bridged.then((r) => record.complete(r.tunnelToSocket, r.socketToTunnel));
}
