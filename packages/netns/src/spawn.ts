import { constants } from 'node:os';
import { types } from 'node:util';
import { NetnsError, errnoName, sys, wrapNative } from './errors.js';
import type { Netns } from './netns.js';
import { native, READABLE, type NativePoller } from './native.js';

export interface SpawnInNetnsOptions {
  /** Standard input; default none (`/dev/null`). Anything else (a DataView, an ArrayBuffer) is ERR_NETNS_INVALID_ARGUMENT. */
  input?: string | Uint8Array;
}

export interface SpawnInNetnsResult {
  /** Exit code, or null when a signal ended the program. */
  code: number | null;
  /** e.g. `'SIGKILL'` when a signal ended it. */
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
}

const signalNames = new Map<number, string>(Object.entries(constants.signals).map(([name, n]) => [n, name] as [number, string]));

/**
 * Runs `file` (looked up in PATH) with `args` inside `netns`, without nsenter or a shell: the
 * calling thread enters the netns for the spawn and comes back within this call, so the child
 * starts in that very namespace (the handle's fd, checked against its identity: ERR_NETNS_BAD_FD
 * if the fd no longer names it) and no JavaScript ever runs elsewhere. The spawn is a vfork-style
 * `posix_spawnp` (the agent's pages are not copied), every signal is reset to its default in the
 * child, stdin/stdout/stderr are in-memory files. Resolves when the program has exited, with its
 * whole output; a program that cannot be started rejects (ERR_NETNS_NOT_FOUND for a missing
 * one), as do invalid arguments and a closed or stale handle. Needs CAP_SYS_ADMIN unless `netns` is the calling thread's own.
 * Needs pidfd_open (Linux >= 5.3): without it, rejects ERR_NETNS_UNSUPPORTED_PLATFORM before
 * spawning anything. A child whose wait fails, or whose worker thread ends first, is killed and
 * reaped (no zombie, no fd left).
 */
export function spawnInNetns(netns: Netns, file: string, args: readonly string[], options: SpawnInNetnsOptions = {}): Promise<SpawnInNetnsResult> {
  try {
    return spawnNow(netns, file, args, options);
  } catch (e) {
    return Promise.reject(e as Error);
  }
}

function spawnNow(netns: Netns, file: string, args: readonly string[], options: SpawnInNetnsOptions): Promise<SpawnInNetnsResult> {
  if (typeof file !== 'string' || file === '' || file.includes('\0')) throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `program must be a non-empty string, got ${JSON.stringify(file)}`);
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string' || a.includes('\0'))) {
    throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `arguments of ${file} must be strings without NUL`);
  }
  const input = stdinBytes(file, options.input);
  requirePidfd();
  const nsFd = netns.checkedFd();
  const [pid, pidfd] = sys(`spawning ${file} in netns ${netns.describe()}`, () => native.spawnInNetns(nsFd, file, [file, ...args], input, netns.id));
  return new Promise((resolve, reject) => {
    let poller: NativePoller | undefined;
    // Nobody will wait for the child any more: the addon closes its fds, kills and reaps it.
    const fail = (e: NetnsError): void => {
      poller?.close();
      native.abandonChild(pid);
      reject(e);
    };
    const context = (what: string): string => `${what} ${file} (pid ${pid}) in netns ${netns.describe()}`;
    try {
      // A pidfd turns readable when the child exits; reapChild then collects status and output.
      poller = new native.Poller(pidfd, (status) => {
        if (status < 0) {
          fail(new NetnsError('ERR_NETNS_SYSCALL', `${context('waiting for')}: poll failed (${status})`));
          return;
        }
        let done: ReturnType<typeof native.reapChild>;
        try {
          done = native.reapChild(pid);
        } catch (e) {
          fail(wrapNative(e, context('reaping')));
          return;
        }
        if (done === null) return;
        poller?.close();
        const [code, signal, stdout, stderr] = done;
        resolve({ code: code < 0 ? null : code, signal: signal ? (signalNames.get(signal) ?? `SIG${signal}`) : null, stdout, stderr });
      });
      poller.start(READABLE);
    } catch (e) {
      fail(wrapNative(e, context('waiting for')));
    }
  });
}

/** Anything but none, a string or bytes is refused: taken as no input, an empty iptables-restore would succeed. */
function stdinBytes(file: string, input: unknown): Uint8Array | null {
  if (input === undefined || input === null) return null;
  if (typeof input === 'string') return Buffer.from(input);
  if (types.isUint8Array(input)) return input;
  const seen = typeof input === 'object' ? ((input.constructor as { name?: string } | undefined)?.name ?? 'object') : typeof input;
  throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `input of ${file} must be a string or a Uint8Array (Buffer), got ${seen}`);
}

/** Refuses before spawning anything where a child's exit could only be awaited by blocking the loop. */
function requirePidfd(): void {
  const errno = sys('checking pidfd_open for spawnInNetns', () => native.pidfdSupport());
  if (errno !== 0) {
    throw new NetnsError(
      'ERR_NETNS_UNSUPPORTED_PLATFORM',
      `spawnInNetns needs pidfd_open (Linux >= 5.3, not blocked by seccomp); here it fails with ${errnoName(errno)}`,
      { errno, syscall: 'pidfd_open' },
    );
  }
}

const SYSCTL_KEY = /^[A-Za-z0-9_-]+(\.([A-Za-z0-9_-]+|\*))+$/;

function sysctlPath(key: string, wildcard: boolean): string {
  if (!SYSCTL_KEY.test(key) || (!wildcard && key.includes('*')) || key.split('*').length > 2) {
    throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `invalid sysctl key ${JSON.stringify(key)}${wildcard ? ' (at most one * component)' : ''}`);
  }
  return key.replace(/\./g, '/');
}

/**
 * Reads sysctls of `netns` (`net.*` keys: /proc/sys/net is per network namespace), in one native
 * call that enters the netns and comes back. A key may have one `*` component
 * (`net.ipv6.conf.*.disable_ipv6`), which stands for each entry there. Keys the kernel lacks
 * (ENOENT/ENOTDIR) are left out of the map; any other failure throws naming the /proc/sys path and
 * errno (e.g. ERR_NETNS_TOO_MANY_FILES with fds exhausted, never an empty map that reads as "no
 * IPv6"). Values come without the trailing newline.
 */
export function readSysctls(netns: Netns, keys: readonly string[]): Map<string, string> {
  const paths = keys.map((k) => sysctlPath(k, true));
  const nsFd = netns.checkedFd();
  const got = sys(`reading sysctls in netns ${netns.describe()}`, () => native.procSys(nsFd, paths, [], netns.id));
  const out = new Map<string, string>();
  for (const entry of got.slice(0, -1)) {
    const [path, value] = entry as [string, string];
    out.set(path.replace(/\//g, '.'), value);
  }
  return out;
}

/**
 * Writes sysctls of `netns` in order (one native call; the value goes in as written, e.g. `'1'`),
 * stopping at the first failure, which throws. Returns the keys the kernel lacks (skipped).
 */
export function writeSysctls(netns: Netns, values: Readonly<Record<string, string>>): string[] {
  const entries = Object.entries(values);
  const writes = entries.map(([k, v]): [string, string] => [sysctlPath(k, false), `${v}\n`]);
  const nsFd = netns.checkedFd();
  const got = sys(`writing sysctls in netns ${netns.describe()}`, () => native.procSys(nsFd, [], writes, netns.id));
  const errnos = got[got.length - 1] as number[];
  const absent: string[] = [];
  for (const [i, e] of errnos.entries()) {
    const key = entries[i]?.[0] as string;
    if (e === constants.errno.ENOENT) absent.push(key);
    else if (e !== 0) {
      const cause = Object.assign(new Error(`write: errno ${e}`), { errno: e, syscall: `write(/proc/sys/${sysctlPath(key, false)})` });
      throw wrapNative(cause, `writing sysctl ${key}=${entries[i]?.[1] ?? ''} in netns ${netns.describe()}`);
    }
  }
  return absent;
}
