import type * as net from 'node:net';
import { NetnsError } from './errors.js';

interface HandleWithFd {
  _handle?: { fd?: number } | null;
}

/** The fd under a net.Socket or net.Server (Linux exposes it on the libuv handle), if open. */
export function fdOf(socket: net.Socket | net.Server): number | undefined {
  const fd = (socket as unknown as HandleWithFd)._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** An fd given directly or taken from a socket/server; ERR_NETNS_BAD_FD when there is none. */
export function socketFd(socket: net.Socket | net.Server | number, what: string): number {
  if (typeof socket === 'number') {
    if (!Number.isInteger(socket) || socket < 0) throw new NetnsError('ERR_NETNS_BAD_FD', `${what}: fd must be a non-negative integer, got ${socket}`);
    return socket;
  }
  const fd = fdOf(socket);
  if (fd === undefined) throw new NetnsError('ERR_NETNS_BAD_FD', `${what}: the socket has no open fd (not connected or listening, or destroyed)`);
  return fd;
}
