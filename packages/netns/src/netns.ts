import type * as net from 'node:net';
import { NetnsError, sys } from './errors.js';
import { socketFd } from './fd.js';
import { native, type NativeNsInfo } from './native.js';

/** A network namespace's identity: the nsfs inode. Two handles name the same netns iff equal. */
export interface NetnsId {
  dev: number;
  ino: number;
}

const nsTypeNames: Record<number, string> = {
  0x00020000: 'mnt',
  0x02000000: 'cgroup',
  0x04000000: 'uts',
  0x08000000: 'ipc',
  0x10000000: 'user',
  0x20000000: 'pid',
  0x40000000: 'net',
  0x00000080: 'time',
};

function describeFile(info: NativeNsInfo): string {
  const octal = `st_mode=0${info.mode.toString(8)}`;
  if (info.nsfs && info.nstype > 0) return `a ${nsTypeNames[info.nstype] ?? `type 0x${info.nstype.toString(16)}`} namespace, ${octal}`;
  const kinds: Record<number, string> = {
    0o100000: 'regular file',
    0o040000: 'directory',
    0o140000: 'socket',
    0o020000: 'character device',
    0o060000: 'block device',
    0o010000: 'fifo',
    0o120000: 'symlink',
  };
  return `${kinds[info.mode & 0o170000] ?? 'unknown file type'}, ${octal}`;
}

/** Checks that fd is a network namespace; returns its identity or throws ERR_NETNS_NOT_A_NETNS. */
function identify(fd: number, what: string): NetnsId {
  const info = sys(what, () => native.nsInfo(fd));
  if (!info.nsfs || info.nstype !== native.CLONE_NEWNET) {
    throw new NetnsError('ERR_NETNS_NOT_A_NETNS', `${what} is not a network namespace (${describeFile(info)})`);
  }
  return { dev: info.dev, ino: info.ino };
}

/**
 * An open network namespace. Owns its fd (O_RDONLY|O_CLOEXEC) until {@link Netns.close}: pass the
 * fd to other processes over SCM_RIGHTS, or to this package's socket functions.
 */
export class Netns {
  readonly fd: number;
  readonly id: NetnsId;
  readonly path: string | undefined;
  #closed = false;

  /** @internal use openNetns, adoptNetnsFd or currentNetns */
  constructor(fd: number, id: NetnsId, path: string | undefined) {
    this.fd = fd;
    this.id = Object.freeze({ dev: id.dev, ino: id.ino });
    this.path = path;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the fd; idempotent. ERR_NETNS_BAD_FD if someone else closed the fd behind our back. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    sys(() => `closing netns ${this.describe()} (fd ${this.fd})`, () => native.closeFd(this.fd));
  }

  /** True when both name the same network namespace (same nsfs dev and inode). */
  sameAs(other: Netns | NetnsId): boolean {
    const id = other instanceof Netns ? other.id : other;
    return id.dev === this.id.dev && id.ino === this.id.ino;
  }

  /** The fd, or ERR_NETNS_BAD_FD when this handle was closed. */
  checkedFd(): number {
    if (this.#closed) {
      throw new NetnsError('ERR_NETNS_BAD_FD', `netns ${this.describe()} was closed (fd ${this.fd})`);
    }
    return this.fd;
  }

  /** For messages: the path when known, else the identity. */
  describe(): string {
    return this.path ?? `[dev ${this.id.dev} ino ${this.id.ino}]`;
  }

  toString(): string {
    return `Netns(${this.describe()}, fd ${this.fd}${this.#closed ? ', closed' : ''})`;
  }
}

/**
 * Opens a network namespace by path: `/var/run/netns/NAME`, `/proc/PID/ns/net`, or a bind mount.
 * Throws ERR_NETNS_NOT_FOUND, ERR_NETNS_PERMISSION or ERR_NETNS_NOT_A_NETNS.
 */
export function openNetns(path: string): Netns {
  if (typeof path !== 'string' || path === '') {
    throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `netns path must be a non-empty string, got ${JSON.stringify(path)}`);
  }
  const fd = sys(`netns path ${path}`, () => native.openPath(path));
  try {
    return new Netns(fd, identify(fd, `netns path ${path}`), path);
  } catch (e) {
    native.closeFd(fd);
    throw e;
  }
}

/**
 * Takes ownership of an fd (e.g. received over SCM_RIGHTS). When it is not a network namespace the
 * fd is closed and ERR_NETNS_NOT_A_NETNS is thrown; a closed fd gives ERR_NETNS_BAD_FD.
 */
export function adoptNetnsFd(fd: number): Netns {
  if (!Number.isInteger(fd) || fd < 0) {
    throw new NetnsError('ERR_NETNS_BAD_FD', `netns fd must be a non-negative integer, got ${String(fd)}`);
  }
  let id: NetnsId;
  try {
    id = identify(fd, `netns fd ${fd}`);
  } catch (e) {
    if (e instanceof NetnsError && e.code === 'ERR_NETNS_NOT_A_NETNS') native.closeFd(fd);
    throw e;
  }
  return new Netns(fd, id, undefined);
}

/** Opens the network namespace of process `pid` (`/proc/PID/ns/net`). */
export function openNetnsOfPid(pid: number): Netns {
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `pid must be a positive integer, got ${String(pid)}`);
  }
  return openNetns(`/proc/${pid}/ns/net`);
}

/** The calling thread's network namespace (the process's, unless a thread moved). A new fd. */
export function currentNetns(): Netns {
  return openNetns('/proc/thread-self/ns/net');
}

/**
 * Identity of the network namespace a socket lives in (SIOCGSKNS; needs CAP_NET_ADMIN), e.g. to
 * check that a connection really is inside a pod's netns.
 */
export function socketNetnsId(socket: net.Socket | net.Server | number): NetnsId {
  const fd = socketFd(socket, 'socketNetnsId');
  const nsFd = sys(`socket fd ${fd}`, () => native.socketNetns(fd));
  try {
    return identify(nsFd, `namespace of socket fd ${fd}`);
  } finally {
    native.closeFd(nsFd);
  }
}
