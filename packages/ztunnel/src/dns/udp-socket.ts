import * as dgram from 'node:dgram';
import { closeSync } from 'node:fs';

/** A UDP socket to create inside the pod's netns, bound before it is handed to Node. */
export interface UdpSocketSpec {
  family: 4 | 6;
  /** Bind address: `127.0.0.1`/`::1` for the listeners, `0.0.0.0`/`::` for upstream queries. */
  address: string;
  /** 0 for an ephemeral port (upstream queries get a fresh random source port each). */
  port: number;
  /** SO_MARK, so the pod's DNS capture rule lets the proxy's own upstream queries pass. */
  mark?: number;
  reusePort?: boolean;
}

/**
 * Makes bound UDP sockets inside one pod's netns. A failure carries the errno (`errno` number or
 * `code` 'EADDRNOTAVAIL' / 'EAFNOSUPPORT' …) so callers can tell "no IPv6 here" from a real error.
 */
export type UdpSocketFactory = (spec: UdpSocketSpec) => Promise<dgram.Socket>;

/**
 * A UdpSocketFactory from anything that returns the fd of a bound UDP socket made in the right netns
 * (a native `createUdpSocket({ netns, ...spec })`, or a helper that passes fds over SCM_RIGHTS).
 * The fd becomes owned by the returned dgram.Socket; if Node cannot adopt it, it is closed.
 */
export function fdUdpSocketFactory(createFd: (spec: UdpSocketSpec) => number | Promise<number>): UdpSocketFactory {
  return async (spec) => {
    const fd = await createFd(spec);
    const socket = dgram.createSocket({ type: spec.family === 6 ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      socket.once('error', onError);
      try {
        socket.bind({ fd }, () => {
          socket.off('error', onError);
          resolve();
        });
      } catch (err) {
        closeSync(fd);
        reject(err as Error);
      }
    });
    return socket;
  };
}

const NO_ADDRESS = new Set([97, 99, 'EAFNOSUPPORT', 'EADDRNOTAVAIL', 'ERR_NETNS_ADDRESS_NOT_AVAILABLE']);

/** True when an error says the address family or address is not there (IPv6 disabled in the pod). */
export function isAddressUnavailable(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { errno?: unknown; code?: unknown; sysCode?: unknown };
  return [e.errno, e.code, e.sysCode].some((v) => (typeof v === 'number' ? NO_ADDRESS.has(Math.abs(v)) : NO_ADDRESS.has(v as string)));
}
