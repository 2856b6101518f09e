import { constants } from 'node:os';

/** Stable codes of {@link NetnsError}; callers branch on these, never on messages. */
export type NetnsErrorCode =
  | 'ERR_NETNS_UNSUPPORTED_PLATFORM'
  | 'ERR_NETNS_ADDON_MISSING'
  | 'ERR_NETNS_INVALID_ARGUMENT'
  | 'ERR_NETNS_NOT_FOUND'
  | 'ERR_NETNS_NOT_A_NETNS'
  | 'ERR_NETNS_PERMISSION'
  | 'ERR_NETNS_BAD_FD'
  | 'ERR_NETNS_ADDRESS_IN_USE'
  | 'ERR_NETNS_ADDRESS_NOT_AVAILABLE'
  | 'ERR_NETNS_CONNECTION_REFUSED'
  | 'ERR_NETNS_UNREACHABLE'
  | 'ERR_NETNS_TIMEOUT'
  | 'ERR_NETNS_ABORTED'
  | 'ERR_NETNS_NO_ORIGINAL_DST'
  | 'ERR_NETNS_SOCKET_MISMATCH'
  | 'ERR_NETNS_TOO_MANY_FILES'
  | 'ERR_NETNS_SYSCALL'
  | 'ERR_SEQPACKET_TRUNCATED'
  | 'ERR_SEQPACKET_CLOSED'
  | 'ERR_SEQPACKET_MESSAGE_TOO_LARGE';

/** The one error class of @weir/netns: a stable `code`, and the errno/syscall when the kernel said no. */
export class NetnsError extends Error {
  readonly code: NetnsErrorCode;
  /** Positive errno from the kernel (e.g. 1 for EPERM), when a syscall failed. */
  readonly errno?: number;
  /** The failing syscall, e.g. `'setns'` or `'setsockopt(SO_MARK)'`. */
  readonly syscall?: string;
  /** Symbolic errno, e.g. `'EPERM'`. */
  readonly sysCode?: string;

  constructor(
    code: NetnsErrorCode,
    message: string,
    options?: { cause?: unknown; errno?: number; syscall?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'NetnsError';
    this.code = code;
    if (options?.errno !== undefined) {
      this.errno = options.errno;
      this.sysCode = errnoName(options.errno);
    }
    if (options?.syscall !== undefined) this.syscall = options.syscall;
  }
}

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name] as [number, string]),
);

/** `1` → `'EPERM'`; unknown numbers → `'E<n>'`. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

const E = constants.errno;

/** Maps an errno to the code callers branch on; anything unexpected is ERR_NETNS_SYSCALL. */
export function codeForErrno(errno: number): NetnsErrorCode {
  switch (errno) {
    case E.ENOENT:
    case E.ENOTDIR:
      return 'ERR_NETNS_NOT_FOUND';
    case E.EPERM:
    case E.EACCES:
      return 'ERR_NETNS_PERMISSION';
    case E.EBADF:
    case E.ENOTSOCK:
    case E.ESTALE: // a Netns handle's fd that no longer names its namespace
      return 'ERR_NETNS_BAD_FD';
    case E.EADDRINUSE:
      return 'ERR_NETNS_ADDRESS_IN_USE';
    case E.EADDRNOTAVAIL:
      return 'ERR_NETNS_ADDRESS_NOT_AVAILABLE';
    case E.ECONNREFUSED:
      return 'ERR_NETNS_CONNECTION_REFUSED';
    case E.ENETUNREACH:
    case E.EHOSTUNREACH:
      return 'ERR_NETNS_UNREACHABLE';
    case E.ETIMEDOUT:
      return 'ERR_NETNS_TIMEOUT';
    case E.EMFILE:
    case E.ENFILE:
      return 'ERR_NETNS_TOO_MANY_FILES';
    case E.ENAMETOOLONG:
    case E.EINVAL:
      return 'ERR_NETNS_INVALID_ARGUMENT';
    case E.EMSGSIZE:
      return 'ERR_SEQPACKET_MESSAGE_TOO_LARGE';
    case E.EPIPE:
    case E.ECONNRESET:
      return 'ERR_SEQPACKET_CLOSED';
    default:
      return 'ERR_NETNS_SYSCALL';
  }
}

/** The shape the addon throws: a plain Error with `errno` and `syscall`. */
interface NativeError extends Error {
  errno: number;
  syscall: string;
}

function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as Partial<NativeError>).errno === 'number';
}

/**
 * Wraps an addon error into a NetnsError whose message starts with `what` (the thing at fault and
 * the value seen) and ends with the syscall and errno name. Non-syscall errors pass through as
 * ERR_NETNS_INVALID_ARGUMENT.
 */
export function wrapNative(e: unknown, what: string, codeOverride?: Partial<Record<number, NetnsErrorCode>>): NetnsError {
  if (e instanceof NetnsError) return e;
  if (isNativeError(e)) {
    const code = codeOverride?.[e.errno] ?? codeForErrno(e.errno);
    return new NetnsError(code, `${what}: ${e.syscall} failed with ${errnoName(e.errno)} (${e.message.replace(/^[^:]*: /, '')})`, {
      cause: e,
      errno: e.errno,
      syscall: e.syscall,
    });
  }
  const message = e instanceof Error ? e.message : String(e);
  return new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `${what}: ${message}`, { cause: e });
}

/** Runs an addon call, converting its failure with {@link wrapNative}. */
export function sys<T>(what: string | (() => string), fn: () => T, codeOverride?: Partial<Record<number, NetnsErrorCode>>): T {
  try {
    return fn();
  } catch (e) {
    throw wrapNative(e, typeof what === 'string' ? what : what(), codeOverride);
  }
}
