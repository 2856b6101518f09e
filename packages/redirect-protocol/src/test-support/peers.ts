import { readdirSync } from 'node:fs';
import { decodeRequest, encodeAck, encodeHello, type ZdsRequest } from '../codec.js';
import { closeFds } from '../transport.js';
import type { MemorySocket } from './memory-socket.js';

export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Waits until cond() holds, polling; fails the test with `what` after timeoutMs. */
export async function until(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A scripted ztunnel on a MemorySocket: records what the agent sends and answers as told. */
export class FakeZtunnel {
  readonly received: { req: ZdsRequest; fds: number[] }[] = [];
  /** Ack.error per uid (or 'snapshotSent'); missing = ack. 'silent' = never answer. */
  replies = new Map<string, string>();

  constructor(readonly socket: MemorySocket) {
    socket.on('message', (data: Buffer, fds: number[]) => {
      const req = decodeRequest(data, fds.length);
      this.received.push({ req, fds });
      const key = req.kind === 'snapshotSent' ? 'snapshotSent' : req.uid;
      const reply = this.replies.get(key) ?? '';
      if (reply !== 'silent') void socket.send(encodeAck(reply)).catch(() => {});
    });
  }

  hello(): Promise<void> {
    return this.socket.send(encodeHello());
  }

  kinds(): string[] {
    return this.received.map((r) => (r.req.kind === 'snapshotSent' ? 'snapshotSent' : `${r.req.kind}:${r.req.uid}`));
  }

  closeReceivedFds(): void {
    for (const r of this.received) closeFds(r.fds.splice(0));
  }
}
