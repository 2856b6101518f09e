import { closeSync } from 'node:fs';
import { ZdsError, ZdsProtocolError } from './errors.js';

/**
 * One connected record socket: what the protocol state machines need from @weir/netns's
 * SeqpacketSocket, so that they can also run over an in-memory pair in unit tests.
 */
export interface RecordSocket {
  send(data: Uint8Array, fds?: number[]): Promise<void>;
  close(): void;
  readonly closed: boolean;
  on(event: 'message', listener: (data: Buffer, fds: number[]) => void): this;
  on(event: 'close', listener: () => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
}

/** Received fds nobody takes over are closed at once, or every bad record would leak one. */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed: nothing left to leak
    }
  }
}

/** A socket 'error' as the package's error: a record cut by the kernel is the peer's fault. */
export function transportError(err: Error, peer: string): ZdsError {
  if ((err as { code?: unknown }).code === 'ERR_SEQPACKET_TRUNCATED') {
    return new ZdsProtocolError('record-size', `${peer} sent a record too large to receive whole: ${err.message}`, {
      cause: err,
    });
  }
  return new ZdsError('ERR_ZDS_TRANSPORT', `${peer} socket failed: ${err.message}`, { cause: err });
}
