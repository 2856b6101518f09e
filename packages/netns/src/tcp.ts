import { fstatSync } from 'node:fs';
import * as net from 'node:net';
import { constants } from 'node:os';
import { NetnsError, codeForErrno, errnoName, sys, wrapNative, type NetnsErrorCode } from './errors.js';
import { Netns } from './netns.js';
import { fdOf, socketFd } from './fd.js';
import { checkKeepalive, type TcpKeepalive } from './keepalive.js';
import { native, WRITABLE, type NativePoller, type NativeTcpSpec } from './native.js';

export interface TcpListenerOptions {
  /** The namespace the listener lives in. */
  netns: Netns;
  /** IP literal to bind (`0.0.0.0`, `::`, `127.0.0.1`, …); its family picks the socket's. */
  host: string;
  /** 0 picks a free port; read it with socketLocalAddress(fd) or server.address(). */
  port: number;
  backlog?: number;
  /** SO_MARK (needs CAP_NET_ADMIN). */
  mark?: number;
  /** IP_TRANSPARENT / IPV6_TRANSPARENT. */
  transparent?: boolean;
  /** SO_REUSEPORT. */
  reusePort?: boolean;
  /** IPV6_V6ONLY for an IPv6 host; unset leaves the kernel default (dual-stack). */
  ipv6Only?: boolean;
  /**
   * SO_KEEPALIVE with these timers on the listener, set in the same native call: Linux copies them
   * to every accepted socket, so none needs a setTcpKeepalive of its own.
   */
  keepalive?: TcpKeepalive;
}

export interface TcpSocketOptions {
  netns: Netns;
  family: 4 | 6;
  /** SO_MARK (needs CAP_NET_ADMIN). */
  mark?: number;
  /** IP_TRANSPARENT / IPV6_TRANSPARENT: bind to a non-local address (source spoofing). */
  transparent?: boolean;
  /** IP_FREEBIND / IPV6_FREEBIND. */
  freebind?: boolean;
  /** Local IP literal to bind before connecting (same family). */
  bindAddress?: string;
  /** Local port to bind (0 or unset: any). */
  bindPort?: number;
  /** SO_KEEPALIVE with these timers, set natively with the other options (no setTcpKeepalive call after). */
  keepalive?: TcpKeepalive;
}

export interface ConnectTcpOptions extends TcpSocketOptions {
  /** Destination IP literal, same family as `family`: never a hostname (DNS would run in the host netns). */
  host: string;
  port: number;
  /** Fails with ERR_NETNS_TIMEOUT after this long; unset waits for the kernel's own timeout. */
  timeoutMs?: number;
  /**
   * Aborts the connect. A function is called only when the connect has to wait (not for one that
   * completed inside connect(), e.g. to a local address): for a signal made lazily per connection.
   */
  signal?: AbortSignal | (() => AbortSignal);
  /** Passed to net.Socket: keep writing after the peer's FIN (half-close). Default false, like Node. */
  allowHalfOpen?: boolean;
  /**
   * TCP_NODELAY, set natively before connect (so no segment, not even the first, waits for Nagle)
   * and recorded on the net.Socket, so a later `setNoDelay(true)` costs no syscall. Default false.
   */
  noDelay?: boolean;
}

/** An address as getsockname or SO_ORIGINAL_DST report it. */
export interface SocketAddress {
  address: string;
  port: number;
  family: 4 | 6;
}

export function invalid(message: string): NetnsError {
  return new NetnsError('ERR_NETNS_INVALID_ARGUMENT', message);
}

export function checkNetns(netns: unknown): Netns {
  if (!(netns instanceof Netns)) throw invalid(`netns must be a Netns (from openNetns/adoptNetnsFd/currentNetns), got ${String(netns)}`);
  return netns;
}

export function checkPort(port: unknown, what: string): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw invalid(`${what} must be an integer 0..65535, got ${String(port)}`);
  }
  return port;
}

export function checkMark(mark: unknown): number | undefined {
  if (mark === undefined) return undefined;
  if (typeof mark !== 'number' || !Number.isInteger(mark) || mark < 0 || mark > 0xffffffff) {
    throw invalid(`mark must be an integer 0..0xffffffff, got ${String(mark)}`);
  }
  return mark;
}

export function ipFamily(address: unknown, what: string): 4 | 6 {
  const family = typeof address === 'string' ? net.isIP(address) : 0;
  if (family !== 4 && family !== 6) throw invalid(`${what} must be an IPv4 or IPv6 literal, got ${JSON.stringify(address)}`);
  return family;
}

/**
 * For family 4, an IPv4-mapped IPv6 literal (`::ffff:10.0.0.1`, what a dual-stack listener reports
 * as remoteAddress) means its IPv4 address.
 */
export function forFamily(address: string, family: 4 | 6): string {
  const mapped = family === 4 && address.startsWith('::') ? /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address) : null;
  return mapped ? mapped[1]! : address;
}

export function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * A listening TCP socket created inside `netns` (nonblocking, CLOEXEC, SO_REUSEADDR like Node's
 * own listeners). Returns the fd, owned by the caller: hand it to `server.listen({ fd })`.
 */
export function createTcpListener(o: TcpListenerOptions): number {
  const netns = checkNetns(o.netns);
  const family = ipFamily(o.host, 'listener host');
  const port = checkPort(o.port, 'listener port');
  if (o.backlog !== undefined && (!Number.isInteger(o.backlog) || o.backlog < 1)) {
    throw invalid(`backlog must be a positive integer, got ${String(o.backlog)}`);
  }
  const spec: NativeTcpSpec = {
    family,
    mark: checkMark(o.mark),
    transparent: o.transparent === true,
    reuseAddr: true,
    reusePort: o.reusePort === true,
    ipv6Only: o.ipv6Only,
    bindAddress: o.host,
    bindPort: port,
    listen: true,
    backlog: o.backlog ?? 511,
  };
  if (o.keepalive !== undefined) withKeepalive(spec, o.keepalive, 'TCP listener keepalive');
  const nsFd = netns.checkedFd();
  return sys(
    () => `TCP listener on ${hostPort(o.host, port)} in netns ${netns.describe()}`,
    () => native.createTcp(nsFd, spec, netns.id),
  );
}

/**
 * Creates a listener with {@link createTcpListener} and makes `server` (default: a new
 * net.Server) listen on it. Resolves once listening; the server owns the fd from then on.
 */
export async function listenTcp(o: TcpListenerOptions, server: net.Server = net.createServer()): Promise<net.Server> {
  const fd = createTcpListener(o);
  return new Promise<net.Server>((resolve, reject) => {
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      reject(new NetnsError('ERR_NETNS_SYSCALL', `net.Server failed to listen on TCP fd ${fd} (${hostPort(o.host, o.port)} in netns ${o.netns.describe()}): ${err.message}`, { cause: err }));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve(server);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    try {
      server.listen({ fd, backlog: o.backlog ?? 511 });
    } catch (err) {
      server.off('error', onError);
      server.off('listening', onListening);
      native.closeFd(fd);
      reject(new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `net.Server cannot listen on TCP fd ${fd}: ${(err as Error).message}`, { cause: err }));
    }
  });
}

function withKeepalive(spec: NativeTcpSpec, k: TcpKeepalive, what: string): void {
  checkKeepalive(k, what);
  spec.keepIdle = k.idleS;
  spec.keepIntvl = k.intervalS;
  spec.keepCnt = k.count;
}

function socketSpec(o: TcpSocketOptions): NativeTcpSpec {
  if (o.family !== 4 && o.family !== 6) throw invalid(`family must be 4 or 6, got ${String(o.family)}`);
  let bindAddress = o.bindAddress === undefined ? undefined : forFamily(o.bindAddress, o.family);
  if (bindAddress !== undefined && ipFamily(bindAddress, 'bindAddress') !== o.family) {
    throw invalid(`bindAddress ${bindAddress} is not an IPv${o.family} address`);
  }
  const bindPort = o.bindPort === undefined ? 0 : checkPort(o.bindPort, 'bindPort');
  if (bindAddress === undefined && bindPort !== 0) bindAddress = o.family === 4 ? '0.0.0.0' : '::';
  const spec: NativeTcpSpec = {
    family: o.family,
    mark: checkMark(o.mark),
    transparent: o.transparent === true,
    freebind: o.freebind === true,
    bindAddress,
    bindPort,
  };
  if (o.keepalive !== undefined) withKeepalive(spec, o.keepalive, 'TCP socket keepalive');
  return spec;
}

/**
 * An unconnected TCP socket created inside `netns` (nonblocking, CLOEXEC), bound when bindAddress
 * or bindPort is given. Prefer {@link connectTcp}: wrapping this fd in `net.Socket` and calling
 * `connect()` yourself can silently produce a host-netns socket without the mark.
 */
export function createTcpSocket(o: TcpSocketOptions): number {
  const netns = checkNetns(o.netns);
  const spec = socketSpec(o);
  const nsFd = netns.checkedFd();
  return sys(
    () => `TCP socket (IPv${o.family}${spec.bindAddress ? ` bound to ${hostPort(spec.bindAddress, spec.bindPort ?? 0)}` : ''}) in netns ${netns.describe()}`,
    () => native.createTcp(nsFd, spec, netns.id),
  );
}

// Errno → code tables, made once: an object literal keyed by errno numbers gets an elements store as
// long as the largest errno (ESTALE 116: ~1.6 KiB), which per call was the largest allocation of a connect.
const CONNECT_CODES: Partial<Record<number, NetnsErrorCode>> = { [constants.errno.ESTALE]: 'ERR_NETNS_SOCKET_MISMATCH' };
const NO_ORIGINAL_DST: Partial<Record<number, NetnsErrorCode>> = {
  [constants.errno.ENOENT]: 'ERR_NETNS_NO_ORIGINAL_DST',
  [constants.errno.ENOPROTOOPT]: 'ERR_NETNS_NO_ORIGINAL_DST',
  [constants.errno.ENOTCONN]: 'ERR_NETNS_NO_ORIGINAL_DST',
};

/** `host:port from netns …`, for messages (built only when something fails). */
function connectTarget(host: string, port: number, netns: Netns): string {
  return `${hostPort(host, port)} from netns ${netns.describe()}`;
}

/**
 * Wraps our connected fd in a net.Socket and checks that Node wraps that very socket. `inode`: the
 * fd's identity when the connect spanned event-loop turns (other code ran: had it closed our fd
 * and the number been reused, the inode would differ); in the same turn the fd number suffices.
 * On failure the fd (or the socket around it) is closed and a NetnsError thrown.
 */
function wrapConnected(fd: number, o: ConnectTcpOptions, host: string, inode: number | undefined): net.Socket {
  let socket: net.Socket | undefined;
  try {
    // No SIOCGSKNS check of the fd's netns here: createTcp made it in `netns` by construction, and
    // Node never connects it itself (the README's Node 20 hazard), so what remains to check is that
    // Node wraps our very socket.
    // Node takes noDelay as already applied (no syscall; a later setNoDelay(true) is a no-op); @types/node omits it.
    const opts: net.SocketConstructorOpts & { noDelay?: boolean } = { fd, readable: true, writable: true, allowHalfOpen: o.allowHalfOpen === true, noDelay: o.noDelay === true };
    socket = new net.Socket(opts);
    const wrapped = fdOf(socket);
    if (wrapped !== fd || (inode !== undefined && fstatSync(fd).ino !== inode)) {
      throw new NetnsError('ERR_NETNS_SOCKET_MISMATCH', `connect to ${connectTarget(host, o.port, o.netns)}: net.Socket wraps fd ${String(wrapped)}, not the socket we created (fd ${fd})`);
    }
    return socket;
  } catch (e) {
    if (socket) socket.destroy();
    else native.closeFd(fd);
    throw e instanceof NetnsError ? e : new NetnsError('ERR_NETNS_SYSCALL', `connect to ${connectTarget(host, o.port, o.netns)}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Connects a socket made inside `netns` to `host:port` and resolves with a connected net.Socket.
 * The connect() runs natively on the fd we created and Node only wraps the connected fd, so Node
 * never gets the chance to replace it with a fresh socket in the host namespace. The socket lives in
 * `netns` by construction (made right after a setns into the namespace the handle was opened on),
 * and the net.Socket is verified to wrap that very socket before it is handed out.
 */
export function connectTcp(o: ConnectTcpOptions): Promise<net.Socket> {
  let fd: number;
  let host: string;
  try {
    const netns = checkNetns(o.netns);
    const spec = socketSpec(o);
    host = forFamily(o.host, o.family);
    if (ipFamily(host, 'connect host') !== o.family) throw invalid(`connect host ${o.host} is not an IPv${o.family} address`);
    spec.connectAddress = host;
    spec.connectPort = checkPort(o.port, 'connect port');
    if (o.noDelay === true) spec.noDelay = true;
    if (o.timeoutMs !== undefined && !(o.timeoutMs > 0)) throw invalid(`timeoutMs must be positive, got ${String(o.timeoutMs)}`);
    const signal = o.signal;
    if (typeof signal !== 'function' && signal?.aborted) {
      throw new NetnsError('ERR_NETNS_ABORTED', `connect to ${connectTarget(host, o.port, netns)} aborted before it started`, { cause: signal.reason });
    }
    const nsFd = netns.checkedFd();
    // Passing netns.id makes the native side refuse (ESTALE) an fd that no longer names this
    // namespace: the socket is then made in `netns` by construction (setns into it succeeded).
    try {
      fd = native.createTcp(nsFd, spec, netns.id);
    } catch (e) {
      throw wrapNative(e, `connect to ${connectTarget(host, o.port, netns)}`, CONNECT_CODES);
    }
  } catch (e) {
    return Promise.reject(e);
  }
  // A connect to a local address (the app in this pod, over lo) has usually completed inside
  // connect(): take it now, without a poller, a timer or a closure (POLLOUT without POLLERR/POLLHUP
  // means SO_ERROR is 0).
  let connected: boolean;
  try {
    connected = native.connectedNow(fd);
  } catch (e) {
    native.closeFd(fd);
    return Promise.reject(wrapNative(e, `connect to ${connectTarget(host, o.port, o.netns)}: polling the socket`));
  }
  if (connected) {
    try {
      return Promise.resolve(wrapConnected(fd, o, host, undefined));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  return awaitConnect(fd, o, host);
}

/** The connect is in progress: watch the fd with a poller until it completes, fails, times out or is aborted. */
function awaitConnect(fd: number, o: ConnectTcpOptions, host: string): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const target = (): string => connectTarget(host, o.port, o.netns);
    const signal = typeof o.signal === 'function' ? o.signal() : o.signal;
    if (signal?.aborted) {
      native.closeFd(fd);
      throw new NetnsError('ERR_NETNS_ABORTED', `connect to ${target()} aborted before it completed`, { cause: signal.reason });
    }
    let inode: number;
    try {
      inode = fstatSync(fd).ino;
    } catch (e) {
      native.closeFd(fd);
      throw wrapNative(e, `connect to ${target()}: fstat of the new socket`);
    }
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    let poller: NativePoller | undefined;
    function onPoll(status: number): void {
      // libuv reports POLLERR (a refused or unreachable connect) as status UV_EBADF, which says
      // nothing about the connect: SO_ERROR holds the real errno, so read it before the status.
      let err: number;
      try {
        err = native.socketError(fd);
      } catch (e) {
        return fail(wrapNative(e, `connect to ${target()}: reading SO_ERROR`));
      }
      if (err !== 0) return fail(connectError(err, target()));
      if (status < 0) {
        return fail(new NetnsError('ERR_NETNS_SYSCALL', `connect to ${target()} failed: the socket reported an error (libuv ${errnoName(-status)}) but SO_ERROR was empty`, { errno: -status, syscall: 'connect' }));
      }
      if (done) return;
      cleanup();
      try {
        resolve(wrapConnected(fd, o, host, inode));
      } catch (e) {
        reject(e);
      }
    }
    const onAbort = (): void =>
      fail(new NetnsError('ERR_NETNS_ABORTED', `connect to ${target()} aborted`, { cause: signal?.reason }));
    const cleanup = (): void => {
      done = true;
      poller?.close();
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (err: NetnsError): void => {
      if (done) return;
      cleanup();
      native.closeFd(fd);
      reject(err);
    };
    try {
      poller = new native.Poller(fd, onPoll);
    } catch (e) {
      native.closeFd(fd);
      throw wrapNative(e, `connect to ${target()}: watching the socket`);
    }
    poller.start(WRITABLE);
    if (o.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        fail(new NetnsError('ERR_NETNS_TIMEOUT', `connect to ${target()} timed out after ${o.timeoutMs} ms`, { errno: constants.errno.ETIMEDOUT, syscall: 'connect' }));
      }, o.timeoutMs);
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A failed connect as a typed error whose message names the destination and what the kernel said. */
function connectError(errno: number, target: string): NetnsError {
  const E = constants.errno;
  const why =
    errno === E.ECONNREFUSED ? 'connection refused (nothing listens there, or a reject rule)'
    : errno === E.ETIMEDOUT ? 'timed out in the kernel'
    : errno === E.ENETUNREACH || errno === E.EHOSTUNREACH ? 'no route to the destination'
    : 'failed';
  return new NetnsError(codeForErrno(errno), `connect to ${target}: ${why} (${errnoName(errno)})`, { errno, syscall: 'connect' });
}

/**
 * The destination a connection had before iptables REDIRECT/DNAT (SO_ORIGINAL_DST, then
 * IP6T_SO_ORIGINAL_DST). Throws ERR_NETNS_NO_ORIGINAL_DST when conntrack knows no such connection.
 */
export function originalDst(socket: net.Socket | number): SocketAddress {
  const fd = socketFd(socket, 'originalDst');
  // Once per proxied connection: no closures on the way to the answer.
  try {
    return native.originalDst(fd);
  } catch (e) {
    throw wrapNative(e, `original destination of socket fd ${fd}`, NO_ORIGINAL_DST);
  }
}

/** getsockname of a TCP socket fd (e.g. the port a listener bound to port 0 got). */
export function socketLocalAddress(socket: net.Socket | number): SocketAddress {
  const fd = socketFd(socket, 'socketLocalAddress');
  return sys(() => `local address of socket fd ${fd}`, () => native.localAddress(fd));
}
