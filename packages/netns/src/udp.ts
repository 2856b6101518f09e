import * as dgram from 'node:dgram';
import { constants } from 'node:os';
import { NetnsError, sys } from './errors.js';
import type { Netns } from './netns.js';
import { native } from './native.js';
import { checkMark, checkNetns, checkPort, forFamily, hostPort, invalid, ipFamily } from './tcp.js';

export interface UdpSocketOptions {
  /** The namespace the socket lives in. */
  netns: Netns;
  family: 4 | 6;
  /** IP literal of `family` to bind: `127.0.0.1`, `::1`, `0.0.0.0`, `::`, … */
  bindAddress: string;
  /** 0 picks a free (random) port. */
  bindPort: number;
  /** SO_MARK (needs CAP_NET_ADMIN). */
  mark?: number;
  /** SO_REUSEPORT. */
  reusePort?: boolean;
  /** IP_FREEBIND / IPV6_FREEBIND: bind an address the netns does not have (yet). */
  freebind?: boolean;
  /** IPV6_V6ONLY for family 6; default true (a v6 socket never takes IPv4 datagrams by surprise). */
  ipv6Only?: boolean;
}

// Made once: a literal keyed by errno 97 costs V8 a ~1.3 KiB elements store per call.
const UDP_ERRNO_CODES = { [constants.errno.EAFNOSUPPORT]: 'ERR_NETNS_ADDRESS_NOT_AVAILABLE' } as const;

/**
 * A bound UDP socket created inside `netns` (nonblocking, CLOEXEC). Returns the fd, owned by the
 * caller: hand it to `dgram.Socket#bind({ fd })` (or use {@link bindUdp}). A netns without IPv6
 * fails with ERR_NETNS_ADDRESS_NOT_AVAILABLE and `errno` 99 (EADDRNOTAVAIL: `::1` not on lo) or 97
 * (EAFNOSUPPORT: IPv6 off in the kernel).
 */
export function createUdpSocket(o: UdpSocketOptions): number {
  const netns = checkNetns(o.netns);
  if (o.family !== 4 && o.family !== 6) throw invalid(`family must be 4 or 6, got ${String(o.family)}`);
  const bindAddress = typeof o.bindAddress === 'string' ? forFamily(o.bindAddress, o.family) : o.bindAddress;
  if (ipFamily(bindAddress, 'UDP bindAddress') !== o.family) throw invalid(`UDP bindAddress ${bindAddress} is not an IPv${o.family} address`);
  const port = checkPort(o.bindPort, 'UDP bindPort');
  const spec = {
    family: o.family,
    mark: checkMark(o.mark),
    freebind: o.freebind === true,
    reusePort: o.reusePort === true,
    ipv6Only: o.family === 6 ? (o.ipv6Only ?? true) : undefined,
    bindAddress,
    bindPort: port,
  };
  const nsFd = netns.checkedFd();
  return sys(
    () => `UDP socket on ${hostPort(bindAddress, port)} in netns ${netns.describe()}`,
    () => native.createUdp(nsFd, spec, netns.id),
    UDP_ERRNO_CODES,
  );
}

/**
 * Creates a socket with {@link createUdpSocket} and resolves with a `dgram.Socket` (udp4/udp6)
 * listening on it; the dgram.Socket owns the fd from then on (close() closes it).
 */
export async function bindUdp(o: UdpSocketOptions, socketOptions: Omit<dgram.SocketOptions, 'type'> = {}): Promise<dgram.Socket> {
  const fd = createUdpSocket(o);
  const socket = dgram.createSocket({ ...socketOptions, type: o.family === 6 ? 'udp6' : 'udp4' });
  return new Promise<dgram.Socket>((resolve, reject) => {
    const where = `UDP fd ${fd} (${hostPort(o.bindAddress, o.bindPort)} in netns ${o.netns.describe()})`;
    const onError = (err: Error): void => {
      socket.off('listening', onListening);
      socket.close();
      reject(new NetnsError('ERR_NETNS_SYSCALL', `dgram.Socket failed to take ${where}: ${err.message}`, { cause: err }));
    };
    const onListening = (): void => {
      socket.off('error', onError);
      resolve(socket);
    };
    socket.once('error', onError);
    socket.once('listening', onListening);
    try {
      socket.bind({ fd });
    } catch (err) {
      socket.off('error', onError);
      socket.off('listening', onListening);
      native.closeFd(fd);
      reject(new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `dgram.Socket cannot bind to ${where}: ${(err as Error).message}`, { cause: err }));
    }
  });
}
