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
 * the error's message; the connection stays. Calls overlap: each is made as its record arrives, in
 * record order, while earlier ones may still be pending, so whatever depends on the agent's order must
 * be decided synchronously, before a call's first await.
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

/** What a record came to: the Ack's error ('' = ack), or a protocol violation (nack, then the end). */
type Answer = { reply: string; violation?: undefined } | { violation: ZdsError };

const ACK: Answer = { reply: '' };

/** Records worked on at once by default: beyond it the socket is not read (the kernel queue pushes back on the agent). */
const DEFAULT_MAX_RECORDS_IN_FLIGHT = 16;

/** A record socket that can stop delivering records for a while (@weir/netns's SeqpacketSocket can). */
export type ZdsSessionSocket = RecordSocket & { pause?(): void; resume?(): void };

export interface ClientSessionOptions {
  /** Records whose handler call may run at once (default 16). */
  maxInFlight?: number;
}

/**
 * ztunnel's side of one agent connection: sends the hello, turns each record into one handler call
 * and answers it with an Ack. Handler calls begin as the records arrive, synchronously and in record
 * order (so the handler's state follows the agent's order), and may then run side by side, up to
 * `maxInFlight`; their Acks go out strictly in record order, since an Ack carries no id and the agent
 * matches them to its records first in, first out. A protocol violation is nacked after the Acks of
 * the records before it and ends the session; the client then reconnects.
 */
export class ClientSession {
  #snapshotDone = false;
  #closed = false;
  /** A violation was seen: the records after it are not worked on (the session ends once it is nacked). */
  #violated = false;
  #acked = 0;
  /** Records taken and not yet answered, oldest first. */
  readonly #answers: Promise<Answer>[] = [];
  #sending = false;
  #paused = false;
  readonly #maxInFlight: number;
  #end!: (err: ZdsError | undefined) => void;
  /** Settles once, when the session is over, with why (undefined: closed by us). */
  readonly done = new Promise<ZdsError | undefined>((resolve) => (this.#end = resolve));

  constructor(
    private readonly socket: ZdsSessionSocket,
    private readonly handler: ZdsHandler,
    private readonly log: ZdsLogger,
    options: ClientSessionOptions = {},
  ) {
    this.#maxInFlight = Math.max(1, options.maxInFlight ?? DEFAULT_MAX_RECORDS_IN_FLIGHT);
    socket.on('message', (data, fds) => this.#onRecord(data, fds));
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

  #onRecord(data: Buffer, fds: number[]): void {
    if (this.#closed || this.#violated) {
      closeFds(fds);
      return;
    }
    this.#answers.push(this.#begin(data, fds));
    if (this.#answers.length >= this.#maxInFlight && !this.#paused && this.socket.pause) {
      this.#paused = true;
      this.socket.pause();
    }
    if (!this.#sending) void this.#sendAnswers();
  }

  /** Checks the record and begins its handler call, now; what it comes to is answered in turn. */
  #begin(data: Buffer, fds: number[]): Promise<Answer> {
    let req: ZdsRequest;
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
      return this.#violation(err as ZdsError);
    }
    let netns: Netns | undefined;
    if (req.kind === 'add') {
      try {
        netns = this.#adopt(fds[0]!, req.uid);
      } catch (err) {
        return this.#violation(err as ZdsError);
      }
    }
    this.log.debug({ record: describe(req) }, 'zds record received');
    // Promise.resolve: a handler that returns no promise (plain JS, or typed `any`) still gets its
    // record's answer in its slot; `.then` on its result would throw out of the socket's callback.
    let call: Promise<unknown>;
    try {
      switch (req.kind) {
        case 'add':
          call = Promise.resolve(this.handler.onAdd({ uid: req.uid, workloadInfo: req.workloadInfo, netns: netns! }));
          break;
        case 'keep':
          call = Promise.resolve(this.handler.onKeep(req.uid));
          break;
        case 'del':
          call = Promise.resolve(this.handler.onDel(req.uid));
          break;
        case 'snapshotSent':
          this.#snapshotDone = true;
          call = Promise.resolve(this.handler.onSnapshotSent());
          break;
      }
    } catch (err) {
      call = Promise.reject(err);
    }
    return call.then(
      () => ACK,
      (err: unknown) => {
        const reply = fitAckError(err instanceof Error ? err.message : String(err));
        this.log.warn({ record: describe(req), err: reply }, 'handler failed, sending nack');
        return { reply };
      },
    );
  }

  /** Answers the records in their order, each once it is done. */
  async #sendAnswers(): Promise<void> {
    this.#sending = true;
    try {
      while (this.#answers.length > 0 && !this.#closed) {
        const answer = await this.#answers[0]!;
        if (this.#closed) return;
        if (answer.violation) {
          await this.#nackViolation(answer.violation);
          return;
        }
        try {
          await this.socket.send(encodeAck(answer.reply));
          this.#acked++;
        } catch (err) {
          this.#finish(transportError(err as Error, 'node agent'));
          return;
        }
        this.#answers.shift();
        if (this.#paused && this.#answers.length < this.#maxInFlight) {
          this.#paused = false;
          this.socket.resume?.();
        }
      }
    } finally {
      this.#sending = false;
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

  /** A violation: nothing after it is worked on; it is nacked in its turn, after the records before it. */
  #violation(err: ZdsError): Promise<Answer> {
    this.#violated = true;
    return Promise.resolve({ violation: err });
  }

  /** Istio's ztunnel answers a bad record with a nack, then drops the connection. */
  async #nackViolation(err: ZdsError): Promise<void> {
    this.log.error({ err: err.message, code: err.code }, 'zds protocol error, reconnecting');
    try {
      await this.socket.send(encodeAck(fitAckError(`protocol error: ${err.message}`)));
    } catch {
      // the peer may already be gone; the reconnect is what matters
    }
    this.#finish(err);
  }
}
