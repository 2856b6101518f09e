import { createRequire } from 'node:module';
import { NetnsError } from './errors.js';

/** Identity and kind of an open file, as the addon reports it. */
export interface NativeNsInfo {
  dev: number;
  ino: number;
  mode: number;
  nsfs: boolean;
  nstype: number;
}

export interface NativeNsId {
  dev: number;
  ino: number;
}

export interface NativeAddress {
  family: 4 | 6;
  address: string;
  port: number;
}

export interface NativeTcpSpec {
  family: 4 | 6;
  mark?: number;
  transparent?: boolean;
  freebind?: boolean;
  reuseAddr?: boolean;
  reusePort?: boolean;
  /** TCP_NODELAY, set before connect. */
  noDelay?: boolean;
  /** TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT and SO_KEEPALIVE, set when keepIdle is a number. */
  keepIdle?: number;
  keepIntvl?: number;
  keepCnt?: number;
  ipv6Only?: boolean;
  bindAddress?: string;
  bindPort?: number;
  listen?: boolean;
  backlog?: number;
  connectAddress?: string;
  connectPort?: number;
}

/** A uv_poll_t on an fd; the callback gets (status < 0 on error, events bitmask). */
export interface NativePoller {
  start(events: number): void;
  stop(): void;
  close(): void;
}

export interface NativeAddon {
  CLONE_NEWNET: number;
  MSG_TRUNC: number;
  MSG_CTRUNC: number;
  MAX_RECORD: number;
  openPath(path: string): number;
  closeFd(fd: number): void;
  nsInfo(fd: number): NativeNsInfo;
  /**
   * `id`: the Netns handle's identity; when the fd no longer names it (closed behind the handle's
   * back, number reused) the call fails with ESTALE and makes nothing.
   */
  createTcp(netnsFd: number, spec: NativeTcpSpec, id?: NativeNsId): number;
  /** Same spec; `listen`/`connect*` are ignored for UDP. */
  createUdp(netnsFd: number, spec: NativeTcpSpec, id?: NativeNsId): number;
  socketNetns(fd: number): number;
  socketError(fd: number): number;
  /** A nonblocking connect already completed without error (poll with timeout 0 reports POLLOUT only). */
  connectedNow(fd: number): boolean;
  localAddress(fd: number): NativeAddress;
  originalDst(fd: number): NativeAddress;
  setTcpKeepalive(fd: number, idleS: number, intervalS: number, count: number): void;
  /** [SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT]. */
  tcpKeepalive(fd: number): [number, number, number, number];
  seqListen(path: string, backlog: number, mode: number): number;
  seqAccept(fd: number): number;
  seqConnect(path: string): number;
  seqSend(fd: number, data: Uint8Array, fds: number[]): boolean;
  seqRecv(fd: number): null | 0 | [Buffer | null, number[], number];
  dupFd(fd: number): number;
  netlinkExchange(netnsFd: number, protocol: number, request: Uint8Array, replies: number, id?: NativeNsId): Buffer;
  /** 0 when pidfd_open works (probed once per process), else its errno (ENOSYS, EPERM). */
  pidfdSupport(): number;
  /**
   * Returns [pid, pidfd] (poll the pidfd for the exit); `argv` includes argv[0]; `input` null:
   * /dev/null. The addon owns the child's fds until reapChild or abandonChild.
   */
  spawnInNetns(netnsFd: number, file: string, argv: string[], input: Uint8Array | null, id?: NativeNsId): [number, number];
  /** null while the child runs; else [exit code or -1, signal or 0, stdout, stderr]; its fds are closed once it is gone. */
  reapChild(pid: number): null | [number, number, Buffer, Buffer];
  /** Closes the child's fds, kills and reaps it; nothing for a child already reaped. */
  abandonChild(pid: number): void;
  /** Paths relative to /proc/sys; returns the [path, value] pairs read, then the errno (0 = done) per write. */
  procSys(netnsFd: number, reads: string[], writes: [string, string][], id?: NativeNsId): ([string, string] | number[])[];
  Poller: new (fd: number, callback: (status: number, events: number) => void) => NativePoller;
}

export const READABLE = 1;
export const WRITABLE = 2;

function load(): NativeAddon {
  // Checked before touching the addon, so that any other platform gets one clear message.
  if (process.platform !== 'linux') {
    throw new NetnsError(
      'ERR_NETNS_UNSUPPORTED_PLATFORM',
      `@weir/netns works only on Linux (network namespaces, setns, SO_ORIGINAL_DST); this platform is ${process.platform}`,
    );
  }
  const require = createRequire(import.meta.url);
  try {
    return require('../build/Release/weir_netns.node') as NativeAddon;
  } catch (e) {
    throw new NetnsError(
      'ERR_NETNS_ADDON_MISSING',
      `@weir/netns native addon build/Release/weir_netns.node could not be loaded (build it with "npm run build -w @weir/netns"): ${(e as Error).message}`,
      { cause: e },
    );
  }
}

export const native: NativeAddon = load();
