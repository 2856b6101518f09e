import { decodeAck, decodeHello, encodeRequest, type ZdsRequest } from './codec.js';
import { ZdsError, ZdsProtocolError } from './errors.js';
import type { ZdsLogger } from './logger.js';
import { closeFds, transportError, type RecordSocket } from './transport.js';

/** One record waiting its turn on a connection. */
export interface Outgoing {
  /** Called just before sending: the request as it stands now, or undefined to skip it. May throw. */
  prepare(): { req: ZdsRequest; fds: number[] } | undefined;
  /** The peer's Ack.error ('' = ack); also called with '' for a skipped record. */
  resolve(ackError: string): void;
  reject(err: Error): void;
}

export interface AgentConnectionOptions {
  ackTimeoutMs: number;
  /** Records sent and not yet acked at most (1: each waits for the previous one's Ack). */
  maxInFlight: number;
  keepaliveIntervalMs: number;
  logger: ZdsLogger;
  onHello(conn: AgentConnection): void;
  onClosed(conn: AgentConnection, err: ZdsError | undefined): void;
}

/**
 * The agent's side of one ztunnel connection: waits for ZdsHello{V1}, then sends queued records,
 * up to `maxInFlight` ahead of their Acks. ztunnel acks the records of a connection in order
 * (Istio's handles them one at a time; ours works on several at once and still acks in order), so
 * Acks are matched to records first in, first out; pipelining spares ztunnel the wait for our next
 * record after each Ack (one agent event-loop turn, long in a burst of enrollments). ztunnel speaks only when spoken to, so
 * any other record is a protocol error and ends the connection.
 */
export class AgentConnection {
  #state: 'hello' | 'open' | 'closed' = 'hello';
  readonly #queue: Outgoing[] = [];
  /** Sent, not yet acked, oldest first. */
  readonly #inflight: { item: Outgoing; what: string }[] = [];
  /** Deadline of the oldest record in flight: ztunnel must answer it within ackTimeoutMs. */
  #ackTimer: NodeJS.Timeout | undefined;
  readonly #helloTimer: NodeJS.Timeout;
  readonly #keepalive: NodeJS.Timeout;
  readonly #log: ZdsLogger;

  constructor(
    readonly id: number,
    private readonly socket: RecordSocket,
    private readonly opts: AgentConnectionOptions,
  ) {
    this.#log = opts.logger.child({ conn: id });
    socket.on('message', (data, fds) => this.#onRecord(data, fds));
    socket.on('close', () => this.close());
    socket.on('error', (err) => this.close(transportError(err, `ztunnel connection ${id}`)));
    this.#helloTimer = setTimeout(
      () => this.close(new ZdsError('ERR_ZDS_ACK_TIMEOUT', `ztunnel connection ${id} sent no ZdsHello within ${opts.ackTimeoutMs} ms`)),
      opts.ackTimeoutMs,
    ).unref();
    // A vanished peer is normally an EOF the moment it happens; this catches a socket that closed
    // without telling us, so a dead ztunnel never stays "newest" and swallows Adds.
    this.#keepalive = setInterval(() => {
      if (socket.closed) this.close(new ZdsError('ERR_ZDS_DISCONNECTED', `keepalive: ztunnel connection ${id} is gone`));
    }, opts.keepaliveIntervalMs).unref();
  }

  /** Hello received and not closed: may be sent to. */
  get ready(): boolean {
    return this.#state === 'open';
  }

  get closed(): boolean {
    return this.#state === 'closed';
  }

  enqueue(item: Outgoing): void {
    if (this.#state === 'closed') {
      item.reject(new ZdsError('ERR_ZDS_DISCONNECTED', `ztunnel connection ${this.id} is closed`));
      return;
    }
    this.#queue.push(item);
    this.#pump();
  }

  /** Ends the connection; err says why (undefined: the peer hung up or we shut down cleanly). */
  close(err?: ZdsError): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    clearTimeout(this.#helloTimer);
    clearInterval(this.#keepalive);
    this.socket.close();
    const gone = err ?? new ZdsError('ERR_ZDS_DISCONNECTED', `ztunnel connection ${this.id} closed`);
    clearTimeout(this.#ackTimer);
    for (const sent of this.#inflight.splice(0)) sent.item.reject(gone);
    for (const item of this.#queue.splice(0)) {
      item.reject(new ZdsError('ERR_ZDS_DISCONNECTED', `ztunnel connection ${this.id} closed before the record was sent`, { cause: err }));
    }
    if (err === undefined) this.#log.info({}, 'ztunnel disconnected');
    else this.#log.warn({ err: err.message, code: err.code }, 'ztunnel connection closed');
    this.opts.onClosed(this, err);
  }

  #onRecord(data: Buffer, fds: number[]): void {
    // The agent never takes an fd from ztunnel.
    closeFds(fds);
    if (this.#state === 'closed') return;
    try {
      if (this.#state === 'hello') {
        decodeHello(data, fds.length);
        clearTimeout(this.#helloTimer);
        this.#state = 'open';
        this.#log.info({}, 'ztunnel connected');
        this.opts.onHello(this);
        this.#pump();
        return;
      }
      const inflight = this.#inflight[0];
      if (inflight === undefined) {
        throw new ZdsProtocolError('sequence', `ztunnel connection ${this.id} sent an unsolicited ${data.length}-byte record`);
      }
      const { error } = decodeAck(data, fds.length);
      this.#inflight.shift();
      this.#armAckTimer();
      this.#log.debug({ record: inflight.what, ack: error === '' ? 'ok' : error }, 'ack received');
      inflight.item.resolve(error);
      this.#pump();
    } catch (err) {
      this.close(err instanceof ZdsError ? err : new ZdsError('ERR_ZDS_TRANSPORT', String(err), { cause: err }));
    }
  }

  /** (Re)starts the deadline for the oldest record in flight, if any. */
  #armAckTimer(): void {
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    const head = this.#inflight[0];
    if (head === undefined) return;
    this.#ackTimer = setTimeout(
      () => this.close(new ZdsError('ERR_ZDS_ACK_TIMEOUT', `ztunnel connection ${this.id} did not ack ${head.what} within ${this.opts.ackTimeoutMs} ms`)),
      this.opts.ackTimeoutMs,
    ).unref();
  }

  #pump(): void {
    while (this.#state === 'open' && this.#inflight.length < this.opts.maxInFlight) {
      const item = this.#queue.shift();
      if (item === undefined) return;
      let prepared: ReturnType<Outgoing['prepare']>;
      let bytes: Uint8Array;
      try {
        prepared = item.prepare();
        if (prepared === undefined) {
          item.resolve('');
          continue;
        }
        bytes = encodeRequest(prepared.req);
      } catch (err) {
        item.reject(err as Error);
        continue;
      }
      const what = 'uid' in prepared.req ? `${prepared.req.kind} uid=${prepared.req.uid}` : prepared.req.kind;
      this.#inflight.push({ item, what });
      if (this.#inflight.length === 1) this.#armAckTimer();
      this.#log.debug({ record: what, fds: prepared.fds.length }, 'sending');
      this.socket
        .send(bytes, prepared.fds)
        .catch((err: Error) => this.close(transportError(err, `ztunnel connection ${this.id}`)));
    }
  }
}
