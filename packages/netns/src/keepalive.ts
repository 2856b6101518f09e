import type * as net from 'node:net';
import { constants } from 'node:os';
import { NetnsError, sys } from './errors.js';
import { socketFd } from './fd.js';
import { native } from './native.js';

/** TCP keepalive timers, in the kernel's units. */
export interface TcpKeepalive {
  /** TCP_KEEPIDLE: seconds of silence before the first probe (1..32767). */
  idleS: number;
  /** TCP_KEEPINTVL: seconds between unanswered probes (1..32767). */
  intervalS: number;
  /** TCP_KEEPCNT: unanswered probes before the connection is dropped (1..127). */
  count: number;
}

// A socket that is not TCP (UDP, AF_UNIX) answers these; it is the wrong fd, not a failed syscall.
const NOT_TCP = { [constants.errno.EOPNOTSUPP]: 'ERR_NETNS_BAD_FD', [constants.errno.ENOPROTOOPT]: 'ERR_NETNS_BAD_FD' } as const;

// The kernel's limits (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT).
function checkTimer(what: string, key: keyof TcpKeepalive, name: string, max: number, v: unknown): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) {
    throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `${what}: ${key} (${name}) must be an integer in 1..${max}, got ${String(v)}`);
  }
}

/**
 * Checks a TcpKeepalive (`what` names the caller in the error). Field by field, no per-call
 * objects: connectTcp runs it once per proxied connection.
 */
export function checkKeepalive(keepalive: TcpKeepalive, what: string): void {
  const k = keepalive as Partial<TcpKeepalive> | undefined;
  checkTimer(what, 'idleS', 'TCP_KEEPIDLE', 32767, k?.idleS);
  checkTimer(what, 'intervalS', 'TCP_KEEPINTVL', 32767, k?.intervalS);
  checkTimer(what, 'count', 'TCP_KEEPCNT', 127, k?.count);
}

/**
 * Turns SO_KEEPALIVE on and sets TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT. Use instead of
 * `socket.setKeepAlive()` (which sets only the idle time; libuv then forces interval 1 s, count 10),
 * and do not call that afterwards: it would overwrite these values. Sockets made by connectTcp or
 * createTcpListener can get the same in their creating call (their `keepalive` option).
 */
export function setTcpKeepalive(socket: net.Socket | number, keepalive: TcpKeepalive): void {
  checkKeepalive(keepalive, 'setTcpKeepalive');
  const fd = socketFd(socket, 'setTcpKeepalive');
  const { idleS, intervalS, count } = keepalive;
  sys(
    () => `keepalive ${idleS}s/${intervalS}s/${count} on socket fd ${fd}`,
    () => native.setTcpKeepalive(fd, idleS, intervalS, count),
    NOT_TCP,
  );
}

/** The keepalive settings the kernel has for a TCP socket (getsockopt). */
export function tcpKeepalive(socket: net.Socket | number): TcpKeepalive & { enabled: boolean } {
  const fd = socketFd(socket, 'tcpKeepalive');
  const [on, idleS, intervalS, count] = sys(() => `keepalive of socket fd ${fd}`, () => native.tcpKeepalive(fd), NOT_TCP);
  return { enabled: on !== 0, idleS, intervalS, count };
}
