import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { listenSeqpacket, openNetns, type Netns, type SeqpacketServer } from '@weir/netns';
import { AgentConnection } from './agent-connection.js';
import type { WorkloadInfo } from './codec.js';
import { ZdsError, ZdsNackError, ZdsNotConnectedError } from './errors.js';
import { silentLogger, type ZdsLogger } from './logger.js';
import type { RecordSocket } from './transport.js';

export const DEFAULT_ZDS_PATH = '/var/run/ztunnel/ztunnel.sock';

export interface ZdsServerOptions {
  /** Unix socket to listen on; its directory is created if missing. */
  path?: string;
  /** Deadline for each Ack, counted from when it is the oldest one awaited (and for the hello after accept). */
  ackTimeoutMs?: number;
  /**
   * Records sent ahead of their Acks on one connection (default 16; 1: one at a time). ztunnel
   * handles and acks a connection's records in order, so a burst of Adds need not wait for a
   * round trip through the agent's event loop between two of them.
   */
  maxInFlight?: number;
  /** How often each connection is checked for a peer that went away. */
  keepaliveIntervalMs?: number;
  logger?: ZdsLogger;
}

/** Identifies one ztunnel connection in events. */
export interface ZdsConnectionInfo {
  id: number;
}

interface Enrolled {
  uid: string;
  info: WorkloadInfo;
  /** Our own handle on the pod netns; undefined means "known, netns not held": sent as Keep. */
  netns: Netns | undefined;
}

export interface ZdsServerEvents {
  connection: [info: ZdsConnectionInfo];
  disconnect: [info: ZdsConnectionInfo, err: ZdsError | undefined];
  snapshotAcked: [info: ZdsConnectionInfo];
  nack: [err: ZdsNackError];
}

/**
 * The node agent's end of ZDS: listens for ztunnel, replays the enrolled pods as a snapshot on every
 * connection, then streams Adds (newest connection) and Dels (all connections).
 */
export class ZdsServer extends EventEmitter<ZdsServerEvents> {
  readonly path: string;
  readonly #ackTimeoutMs: number;
  readonly #maxInFlight: number;
  readonly #keepaliveIntervalMs: number;
  readonly #log: ZdsLogger;
  readonly #workloads = new Map<string, Enrolled>();
  /** In accept order; the last ready one is "newest". */
  #conns: AgentConnection[] = [];
  #nextId = 1;
  #listener: SeqpacketServer | undefined;
  #closed = false;

  constructor(opts: ZdsServerOptions = {}) {
    super();
    this.path = opts.path ?? DEFAULT_ZDS_PATH;
    this.#ackTimeoutMs = opts.ackTimeoutMs ?? 5000;
    this.#maxInFlight = opts.maxInFlight ?? 16;
    if (!Number.isInteger(this.#maxInFlight) || this.#maxInFlight < 1) {
      throw new ZdsError('ERR_ZDS_INVALID_ARGUMENT', `maxInFlight must be a positive integer, got ${String(opts.maxInFlight)}`);
    }
    this.#keepaliveIntervalMs = opts.keepaliveIntervalMs ?? 5000;
    this.#log = (opts.logger ?? silentLogger).child({ component: 'zds-server' });
  }

  /** True while at least one ztunnel has said hello. */
  get connected(): boolean {
    return this.#conns.some((c) => c.ready);
  }

  async start(): Promise<void> {
    if (this.#listener !== undefined) throw new ZdsError('ERR_ZDS_ALREADY_STARTED', `ZdsServer on ${this.path} already started`);
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
    const listener = listenSeqpacket(this.path, { mode: 0o600 });
    listener.on('connection', (socket: RecordSocket) => this.attach(socket));
    listener.on('error', (err: Error) => this.#log.error({ err: err.message, path: this.path }, 'zds accept failed'));
    this.#listener = listener;
    this.#log.info({ path: this.path }, 'zds server listening');
  }

  /**
   * Takes over one accepted connection. Public for the unit tests, which drive the protocol over an
   * in-memory socket pair; start() is what calls it in production.
   * @internal
   */
  attach(socket: RecordSocket): void {
    if (this.#closed) {
      socket.close();
      return;
    }
    const conn: AgentConnection = new AgentConnection(this.#nextId++, socket, {
      ackTimeoutMs: this.#ackTimeoutMs,
      maxInFlight: this.#maxInFlight,
      keepaliveIntervalMs: this.#keepaliveIntervalMs,
      logger: this.#log,
      onHello: (c) => this.#sendSnapshot(c),
      onClosed: (c, err) => {
        this.#conns = this.#conns.filter((x) => x !== c);
        this.emit('disconnect', { id: c.id }, err);
      },
    });
    this.#conns.push(conn);
  }

  /**
   * Hands a pod's netns to the newest ztunnel. The server keeps its own duplicate of the netns for
   * future snapshots whatever the outcome; the caller keeps ownership of `netns`.
   */
  addWorkload(uid: string, info: WorkloadInfo, netns: Netns): Promise<void> {
    if (this.#closed) return Promise.reject(new ZdsError('ERR_ZDS_CLOSED', `ZdsServer on ${this.path} is closed`));
    let own: Netns;
    try {
      own = dupNetns(netns);
    } catch (err) {
      return Promise.reject(new ZdsError('ERR_ZDS_NETNS', `cannot hold the netns of workload uid=${uid}: ${(err as Error).message}`, { cause: err }));
    }
    const entry: Enrolled = { uid, info: { ...info }, netns: own };
    this.#replace(entry);
    const conn = this.#newest();
    if (conn === undefined) {
      return Promise.reject(new ZdsNotConnectedError(`no ztunnel connected on ${this.path}; workload uid=${uid} waits for the next snapshot`));
    }
    return new Promise<void>((resolve, reject) => {
      conn.enqueue({
        prepare: () => {
          if (this.#workloads.get(uid) !== entry) {
            throw new ZdsError('ERR_ZDS_SUPERSEDED', `workload uid=${uid} was removed or replaced before its Add was sent`);
          }
          return { req: { kind: 'add', uid, workloadInfo: entry.info }, fds: [own.fd] };
        },
        resolve: (ackError) => (ackError === '' ? resolve() : reject(new ZdsNackError(uid, ackError))),
        reject,
      });
    });
  }

  /**
   * Records a pod whose netns the agent cannot hold (e.g. not found after an agent restart): it is
   * named in every snapshot as KeepWorkload, so ztunnel keeps its proxy. Sends nothing by itself.
   */
  keepWorkload(uid: string, info: WorkloadInfo): void {
    this.#replace({ uid, info: { ...info }, netns: undefined });
  }

  /** Tells every ztunnel the pod is gone and forgets it. Resolves when all have acked. */
  async removeWorkload(uid: string): Promise<void> {
    const entry = this.#workloads.get(uid);
    this.#workloads.delete(uid);
    entry?.netns?.close();
    const sends = this.#conns
      .filter((c) => c.ready)
      .map(
        (conn) =>
          new Promise<void>((resolve, reject) => {
            conn.enqueue({
              prepare: () => ({ req: { kind: 'del', uid }, fds: [] }),
              resolve: (ackError) => (ackError === '' ? resolve() : reject(new ZdsNackError(uid, ackError))),
              reject,
            });
          }),
      );
    const failed = (await Promise.allSettled(sends)).find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of [...this.#conns]) conn.close(new ZdsError('ERR_ZDS_CLOSED', `ZdsServer on ${this.path} closed`));
    for (const w of this.#workloads.values()) w.netns?.close();
    this.#workloads.clear();
    await this.#listener?.close();
    this.#log.info({ path: this.path }, 'zds server closed');
  }

  #replace(entry: Enrolled): void {
    const old = this.#workloads.get(entry.uid);
    this.#workloads.set(entry.uid, entry);
    old?.netns?.close();
  }

  #newest(): AgentConnection | undefined {
    for (let i = this.#conns.length - 1; i >= 0; i--) {
      const c = this.#conns[i]!;
      if (c.ready) return c;
    }
    return undefined;
  }

  #sendSnapshot(conn: AgentConnection): void {
    const info = { id: conn.id };
    this.emit('connection', info);
    const uids = [...this.#workloads.keys()];
    this.#log.info({ conn: conn.id, workloads: uids.length }, 'sending snapshot');
    const ignore = (): void => {};
    for (const uid of uids) {
      conn.enqueue({
        // Looked up at send time: a pod removed meanwhile is skipped, a replaced one sent as it is now.
        prepare: () => {
          const w = this.#workloads.get(uid);
          if (w === undefined) return undefined;
          if (w.netns === undefined) return { req: { kind: 'keep', uid }, fds: [] };
          return { req: { kind: 'add', uid, workloadInfo: w.info }, fds: [w.netns.fd] };
        },
        resolve: (ackError) => {
          if (ackError !== '') this.#nack(new ZdsNackError(uid, ackError));
        },
        reject: ignore, // the connection is gone; the next one gets a fresh snapshot
      });
    }
    conn.enqueue({
      prepare: () => ({ req: { kind: 'snapshotSent' }, fds: [] }),
      resolve: (ackError) => {
        if (ackError !== '') this.#nack(new ZdsNackError(undefined, ackError));
        this.#log.info({ conn: conn.id, workloads: uids.length }, 'snapshot sent and acked');
        this.emit('snapshotAcked', info);
      },
      reject: ignore,
    });
  }

  #nack(err: ZdsNackError): void {
    this.#log.warn({ uid: err.uid, reason: err.reason }, 'ztunnel nacked workload');
    this.emit('nack', err);
  }
}

/**
 * Our own handle on the caller's netns, reopened through /proc/self/fd. The identity check guards
 * against a closed handle whose fd number now belongs to something else.
 */
function dupNetns(netns: Netns): Netns {
  if (netns.closed) throw new Error(`netns handle (fd ${netns.fd}) is already closed`);
  const own = openNetns(`/proc/self/fd/${netns.fd}`);
  if (!own.sameAs(netns)) {
    own.close();
    throw new Error(`fd ${netns.fd} no longer refers to netns ${netns.id.dev}:${netns.id.ino}`);
  }
  return own;
}
