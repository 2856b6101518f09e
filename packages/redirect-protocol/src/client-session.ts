import { adoptNetnsFd, type Netns } from '@weir/netns';
import { MAX_RECORD_BYTES, decodeRequest, encodeAck, encodeHello, type WorkloadInfo, type ZdsRequest } from './codec.js';
import { ZdsError, ZdsProtocolError } from './errors.js';
import type { ZdsLogger } from './logger.js';
import { closeFds, transportError, type RecordSocket } from './transport.js';

export interface ZdsAddEvent {
  uid: string;
  /** Always present on the wire (an Add without it is a protocol error); optional for Istio's older agents' shape. */
  workloadInfo?: WorkloadInfo;
  /** The pod's netns; the handler owns it from here on (close it when the proxy is gone). */
  netns: Netns;
}

/**
 * ztunnel's reactions to the agent. A handler that throws or rejects makes the record a nack with
 * the error's message; the connection stays.
 */
export interface ZdsHandler {
  onAdd(ev: ZdsAddEvent): Promise<void>;
  onKeep(uid: string): Promise<void>;
  onDel(uid: string): Promise<void>;
  onSnapshotSent(): Promise<void>;
  onConnected?(): void;
  onDisconnected?(err?: Error): void;
}

// An Ack record must fit the record limit with its framing (two tags and two varint lengths).
const MAX_ACK_ERROR_BYTES = MAX_RECORD_BYTES - 8;

function fitAckError(message: string): string {
  const bytes = Buffer.from(message === '' ? 'error' : message);
  if (bytes.length <= MAX_ACK_ERROR_BYTES) return bytes.toString();
  // cut on a character boundary: drop any partial UTF-8 sequence at the end
  return bytes.subarray(0, MAX_ACK_ERROR_BYTES).toString().replace(/\uFFFD+$/, '');
}

function describe(req: ZdsRequest): string {
  return req.kind === 'snapshotSent' ? 'SnapshotSent' : `${req.kind} uid=${req.uid}`;
}

/**
 * ztunnel's side of one agent connection: sends the hello, turns each record into one handler call
 * (strictly one at a time, in order) and answers it with an Ack. A protocol violation is nacked and
 * ends the session; the client then reconnects.
 */
export class ClientSession {
  #snapshotDone = false;
  #closed = false;
  #acked = 0;
  #chain: Promise<void> = Promise.resolve();
  #end!: (err: ZdsError | undefined) => void;
  /** Settles once, when the session is over, with why (undefined: closed by us). */
  readonly done = new Promise<ZdsError | undefined>((resolve) => (this.#end = resolve));

  constructor(
    private readonly socket: RecordSocket,
    private readonly handler: ZdsHandler,
    private readonly log: ZdsLogger,
  ) {
    socket.on('message', (data, fds) => {
      this.#chain = this.#chain.then(() => this.#handle(data, fds));
    });
    socket.on('close', () => this.#finish(new ZdsError('ERR_ZDS_DISCONNECTED', 'the node agent closed the ZDS connection')));
    socket.on('error', (err) => this.#finish(transportError(err, 'node agent')));
  }

  /** Records answered so far: a session that got this far was a working connection. */
  get acked(): number {
    return this.#acked;
  }

  async hello(): Promise<void> {
    await this.socket.send(encodeHello());
  }

  close(): void {
    this.#finish(undefined);
  }

  #finish(err: ZdsError | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.socket.close();
    this.#end(err);
  }

  async #handle(data: Buffer, fds: number[]): Promise<void> {
    if (this.#closed) {
      closeFds(fds);
      return;
    }
    let req: ZdsRequest;
    let netns: Netns | undefined;
    try {
      req = decodeRequest(data, fds.length);
      if (req.kind === 'keep' && this.#snapshotDone) {
        throw new ZdsProtocolError('sequence', `KeepWorkload uid=${req.uid} after SnapshotSent; Keep is only valid in a snapshot`);
      }
      if (req.kind === 'snapshotSent' && this.#snapshotDone) {
        throw new ZdsProtocolError('sequence', 'a second SnapshotSent on one connection');
      }
    } catch (err) {
      closeFds(fds);
      await this.#violation(err as ZdsError);
      return;
    }
    if (req.kind === 'add') {
      try {
        netns = this.#adopt(fds[0]!, req.uid);
      } catch (err) {
        await this.#violation(err as ZdsError);
        return;
      }
    }
    let reply = '';
    try {
      this.log.debug({ record: describe(req) }, 'zds record received');
      switch (req.kind) {
        case 'add':
          await this.handler.onAdd({ uid: req.uid, workloadInfo: req.workloadInfo, netns: netns! });
          break;
        case 'keep':
          await this.handler.onKeep(req.uid);
          break;
        case 'del':
          await this.handler.onDel(req.uid);
          break;
        case 'snapshotSent':
          this.#snapshotDone = true;
          await this.handler.onSnapshotSent();
          break;
      }
    } catch (err) {
      reply = fitAckError(err instanceof Error ? err.message : String(err));
      this.log.warn({ record: describe(req), err: reply }, 'handler failed, sending nack');
    }
    if (this.#closed) return;
    try {
      await this.socket.send(encodeAck(reply));
      this.#acked++;
    } catch (err) {
      this.#finish(transportError(err as Error, 'node agent'));
    }
  }

  /** Takes ownership of the Add's fd; one that is not a netns is the agent's fault. */
  #adopt(fd: number, uid: string): Netns {
    try {
      return adoptNetnsFd(fd);
    } catch (err) {
      // adoptNetnsFd closes what it rejected as not-a-netns; any other failure leaves the fd to us
      if ((err as { code?: unknown }).code !== 'ERR_NETNS_NOT_A_NETNS') closeFds([fd]);
      throw new ZdsProtocolError('fd', `the fd on AddWorkload uid=${uid} is not a usable network namespace: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Istio's ztunnel answers a bad record with a nack, then drops the connection. */
  async #violation(err: ZdsError): Promise<void> {
    this.log.error({ err: err.message, code: err.code }, 'zds protocol error, reconnecting');
    try {
      await this.socket.send(encodeAck(fitAckError(`protocol error: ${err.message}`)));
    } catch {
      // the peer may already be gone; the reconnect is what matters
    }
    this.#finish(err);
  }
}
