import { EventEmitter } from 'node:events';
import { openSync } from 'node:fs';
import { closeFds, type RecordSocket } from '../transport.js';

/**
 * One end of an in-memory record socket pair for unit tests. Like SCM_RIGHTS, a sent fd arrives as
 * a new fd to the same open file (reopened through /proc/self/fd), and the sender keeps its own.
 */
export class MemorySocket extends EventEmitter implements RecordSocket {
  peer!: MemorySocket;
  closed = false;

  async send(data: Uint8Array, fds: number[] = []): Promise<void> {
    if (this.closed || this.peer.closed) throw Object.assign(new Error('send: EPIPE'), { code: 'EPIPE' });
    const copy = Buffer.from(data);
    const dups = fds.map((fd) => openSync(`/proc/self/fd/${fd}`, 'r'));
    setImmediate(() => {
      if (this.peer.closed) closeFds(dups);
      else this.peer.emit('message', copy, dups);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    setImmediate(() => {
      this.emit('close');
      this.peer.close();
    });
  }
}

export function memoryPair(): [MemorySocket, MemorySocket] {
  const a = new MemorySocket();
  const b = new MemorySocket();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
