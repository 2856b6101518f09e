import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { type HboneTarget, formatAuthority } from './authority.js';
import { H2ProtocolError, H2_ERROR_CODES, HboneError } from './errors.js';
import { type BudgetSession, type BufferBudget, type BufferBudgetOptions, releaseTunnel, resolveBudget } from './buffer-budget.js';
import { H2Session, type OpenWaiter, type Tunnel, isRetryable } from './h2/session.js';
import { identitiesFromCertificate } from './identity.js';
import { type HboneLogger, silentLogger } from './logger.js';
import { type HboneTlsOptions, type ResolvedTls, resolveTls } from './tls-options.js';

const { CANCEL } = H2_ERROR_CODES;
const MiB = 1024 * 1024;

export interface HboneClientOptions {
  tls: HboneTlsOptions;
  /** Makes the TCP connection to a peer (ztunnel passes marked sockets made in the pod netns). Must resolve connected. */
  socketFactory?: (peer: HboneTarget) => Promise<net.Socket>;
  /** Streams per session before another session is opened; default 100, capped by the peer's SETTINGS. */
  maxStreamsPerSession?: number;
  /** A session with no streams for this long is closed; default 5 min (as ztunnel). */
  idleTimeoutMs?: number;
  /** TCP connect + TLS handshake + peer SETTINGS deadline; default 10 s. */
  connectTimeoutMs?: number;
  /**
   * Deadline for the peer's answer to a CONNECT once the stream is sent; default 15 s. Past it the
   * stream is reset (CANCEL) and connect() rejects with ERR_HBONE_RESPONSE_TIMEOUT. Checked by one sweep
   * per session, so an open fails between this and 1.25× this (at most 1 s) later.
   */
  responseTimeoutMs?: number;
  /** Default 10 s. */
  pingIntervalMs?: number;
  /** Default 20 s. */
  pingTimeoutMs?: number;
  /**
   * Per-stream receive window, default 1 MiB: what a tunnel whose reader stopped can be sent before
   * the peer must wait (unread bytes are not credited back).
   */
  streamWindowSize?: number;
  /** Per-connection receive window, default 16 MiB: bounds what all of a session's paused tunnels hold together. */
  connectionWindowSize?: number;
  /**
   * Bounds bytes held by tunnels whose reader stopped (per session and in total): over it the largest
   * are reset and connect() rejects with ERR_HBONE_BUFFER_BUDGET. Share one BufferBudget for a
   * process-wide bound. Default: a budget of this client's own with BufferBudget's defaults.
   */
  bufferBudget?: BufferBudget | BufferBudgetOptions;
  logger?: HboneLogger;
}

export interface HboneConnectOptions {
  /** The peer's HBONE endpoint, normally `<pod ip>:15008`. */
  peer: HboneTarget;
  /** Where the peer should connect the tunnel (the `:authority`). */
  target: HboneTarget;
  /** The peer's certificate must carry one of these URI SANs. */
  expectedIdentities: string[];
  /** Extra request headers (`baggage`, `forwarded`, `traceparent`, …), lower-case names. */
  headers?: Record<string, string>;
  /** Cancels the open (before the peer's answer); an AbortSignal, or anything with its abort surface. */
  signal?: HboneAbortSignal;
}

/**
 * What connect() uses of an AbortSignal. A proxy opening a tunnel per accepted connection can pass
 * something lighter than an AbortController per open (ztunnel: its downstream socket's 'close').
 */
export interface HboneAbortSignal {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/**
 * A tunnel from connect(): a Duplex whose end() sends END_STREAM and whose destroy() resets the stream
 * (CANCEL); close(code) resets it with an HTTP/2 error code. `rstCode` is set once it has closed: 0
 * when both directions ended cleanly, else the RST_STREAM code (sent or received).
 */
export interface HboneTunnel extends Duplex {
  readonly rstCode: number | undefined;
  close(code?: number): void;
}

export interface HboneClientStats {
  sessions: number;
  streams: number;
}

/** One HTTP/2 session to a peer, shared by up to `max` tunnels. */
class PooledSession {
  session: H2Session | undefined;
  socket: tls.TLSSocket | undefined;
  ready: Promise<void> | undefined;
  /** Tunnels waiting for this session to come up. */
  pending = 0;
  /** TLS done, the peer's SETTINGS seen: streams can be opened at once. */
  established = false;
  draining = false;
  closed = false;
  goaway: string | undefined;
  /** Its tunnels' share of the client's BufferBudget. */
  budget: BudgetSession | undefined;
  /**
   * The client's session count when the first GOAWAY came: sessions up to it may be to the same
   * draining server (pooled beside this one), so an open it refused is retried on a later one.
   */
  goawayAfter: number | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  pingTimer: NodeJS.Timeout | undefined;
  /** Runs while `opening` is not empty: fails opens the peer left unanswered too long. */
  sweepTimer: NodeJS.Timeout | undefined;
  /** CONNECTs sent and not answered yet, in send order. */
  readonly opening = new Set<PendingOpen>();
  readonly closeWaiters: (() => void)[] = [];

  constructor(
    readonly key: string,
    /** maxStreamsPerSession; the peer's SETTINGS may lower it. */
    readonly max: number,
    /** This client's sessions made before it, plus one. */
    readonly born: number,
  ) {}

  /** Streams opened on it and not yet closed. */
  get open(): number {
    return this.session?.activeStreams ?? 0;
  }

  get limit(): number {
    const peerMax = this.session?.peerMaxConcurrentStreams ?? Infinity;
    return Math.max(1, Math.min(this.max, peerMax));
  }

  /** The connection is gone or going: its socket may still close a moment after the session failed. */
  get dead(): boolean {
    return this.closed || this.session?.closed === true;
  }

  hasRoom(): boolean {
    return !this.draining && !this.dead && this.open + this.pending < this.limit;
  }
}

/**
 * A CONNECT sent and not answered yet: the session settles it (answer, reset, GOAWAY, connection
 * lost), or the client does (abort, response deadline) after taking it off its tunnel.
 */
class PendingOpen implements OpenWaiter {
  tunnel: Tunnel | undefined = undefined;
  /** When the CONNECT was sent (performance.now()), for the response deadline. */
  readonly sentAt = performance.now();
  onAbort: (() => void) | undefined = undefined;

  constructor(
    readonly client: OpenOutcome,
    readonly e: PooledSession,
    readonly o: HboneConnectOptions,
    readonly authority: string,
    readonly peerAuthority: string,
    readonly attempt: number,
    readonly done: (t: HboneTunnel | Promise<HboneTunnel>) => void,
    readonly fail: (err: unknown) => void,
  ) {}

  resolve(t: Tunnel): void {
    this.settle();
    this.e.budget?.track(t);
    this.done(t);
  }

  reject(err: HboneError): void {
    this.settle();
    this.client.failed(this, err);
  }

  /** Answered, closed or given up: nothing else may settle it. */
  settle(): void {
    this.e.opening.delete(this);
    if (this.tunnel !== undefined) this.tunnel.waiter = undefined;
    if (this.onAbort !== undefined) this.o.signal?.removeEventListener('abort', this.onAbort);
  }

  /** Settles it now and resets its stream (the peer may still answer; that answer is dropped). */
  cancel(err: HboneError): void {
    this.settle();
    this.tunnel?.close(CANCEL);
    this.fail(err);
  }
}

/** What a PendingOpen reports to its client when the session fails it. */
interface OpenOutcome {
  failed(p: PendingOpen, err: HboneError): void;
}

/**
 * HBONE client: opens tunnels (HTTP/2 CONNECT streams) over pooled mutual-TLS sessions, keyed by
 * (own identity, expected peer identities, peer address).
 */
export class HboneClient implements OpenOutcome {
  readonly #o: HboneClientOptions;
  readonly #log: HboneLogger;
  #tls: ResolvedTls;
  /** The own identity as text, the first part of every pool key. */
  #identityKey: string;
  readonly #pools = new Map<string, PooledSession[]>();
  #closed = false;
  /** Sessions made so far (PooledSession.born). */
  #born = 0;
  readonly #budget: BufferBudget;
  // One listener shared by every tunnel: a closure per tunnel costs memory on every idle one.
  readonly #onTunnelError = (err: Error): void => this.#log.debug({ err }, 'tunnel stream error');

  constructor(o: HboneClientOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger;
    this.#budget = resolveBudget(o.bufferBudget, this.#log);
    this.#tls = resolveTls(o.tls);
    this.#identityKey = this.#tls.identity.toString();
  }

  /** Opens a tunnel; resolves once the peer answered 200. */
  connect(o: HboneConnectOptions): Promise<HboneTunnel> {
    let authority: string;
    let peerAuthority: string;
    try {
      if (o.expectedIdentities.length === 0) {
        throw new HboneError('ERR_HBONE_CONFIG', `connect to ${o.peer.host}:${o.peer.port}: expectedIdentities is empty`);
      }
      authority = formatAuthority(o.target);
      peerAuthority = formatAuthority(o.peer);
      if (o.signal?.aborted === true) throw abortReason(o.signal);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#attempt(o, authority, peerAuthority, 0);
  }

  // Not async: on a warm session an open is one promise, settled by the peer's answer.
  // `after`: only sessions born after it (a retry of an open refused by a GOAWAY).
  #attempt(o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after = 0): Promise<HboneTunnel> {
    if (this.#closed) return Promise.reject(new HboneError('ERR_HBONE_CLOSED', 'HboneClient is closed'));
    const entry = this.#acquire(o, peerAuthority, after);
    if (!entry.established) return this.#attemptWhenReady(entry, o, authority, peerAuthority, attempt, after);
    entry.pending--;
    return this.#open(entry, o, authority, peerAuthority, attempt, after);
  }

  async #attemptWhenReady(entry: PooledSession, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after: number): Promise<HboneTunnel> {
    try {
      await this.#waitReady(entry, o.signal);
    } catch (err) {
      entry.pending--;
      this.#maybeIdle(entry);
      throw err;
    }
    entry.pending--;
    return this.#open(entry, o, authority, peerAuthority, attempt, after);
  }

  #open(entry: PooledSession, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after: number): Promise<HboneTunnel> {
    if ((entry.open >= entry.limit || entry.draining || entry.dead) && attempt < 5) {
      // Capped by the peer's SETTINGS, or retired while we waited: find another.
      this.#maybeIdle(entry);
      return this.#attempt(o, authority, peerAuthority, attempt + 1, Math.max(after, entry.goawayAfter ?? 0));
    }
    return this.#request(entry, o, authority, peerAuthority, attempt);
  }

  /** A stream the peer did not process (refused, or above a GOAWAY's last stream) is safe to retry on a new session. */
  #retry(err: HboneError, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after = 0): Promise<HboneTunnel> {
    if (attempt >= 2) return Promise.reject(err);
    this.#log.debug({ peer: peerAuthority, reason: err.message }, 'retrying tunnel on a new session');
    return this.#attempt(o, authority, peerAuthority, attempt + 1, after);
  }

  /** New TLS material for new sessions; live sessions finish their streams and retire. */
  setTls(t: HboneTlsOptions): void {
    this.#tls = resolveTls(t);
    this.#identityKey = this.#tls.identity.toString();
    for (const list of this.#pools.values()) {
      for (const e of list) this.#retire(e, 'certificate rotated');
    }
  }

  stats(): HboneClientStats {
    let sessions = 0;
    let streams = 0;
    for (const list of this.#pools.values()) {
      for (const e of list) {
        sessions++;
        streams += e.open;
      }
    }
    return { sessions, streams };
  }

  /** Closes every session gracefully (open tunnels may finish until `deadlineMs`, default 5000), then destroys what is left. */
  async close(o: { deadlineMs?: number } = {}): Promise<void> {
    this.#closed = true;
    const entries = [...this.#pools.values()].flat();
    const waits = entries.map((e) => this.#closedPromise(e));
    for (const e of entries) this.#retire(e, 'client closed');
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((r) => (timer = setTimeout(r, o.deadlineMs ?? 5000)));
    await Promise.race([Promise.all(waits), deadline]);
    clearTimeout(timer);
    for (const e of entries) {
      if (e.session !== undefined) e.session.destroy();
      else e.socket?.destroy();
    }
    // A session still inside its socket factory has nothing to destroy yet: it fails within
    // connectTimeoutMs; wait for it briefly, never that long.
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(waits), new Promise<void>((r) => (grace = setTimeout(r, 1000)))]);
    clearTimeout(grace);
  }

  #closedPromise(e: PooledSession): Promise<void> {
    return new Promise((r) => {
      if (e.ready === undefined) return r();
      e.ready.then(
        () => (e.closed ? r() : e.closeWaiters.push(r)),
        () => r(),
      );
    });
  }

  #acquire(o: HboneConnectOptions, peerAuthority: string, after: number): PooledSession {
    const ids = o.expectedIdentities;
    const expected = ids.length === 1 ? ids : [...new Set(ids)].sort();
    const key = `${this.#identityKey}\n${expected.length === 1 ? expected[0] : expected.join(' ')}\n${peerAuthority}`;
    let list = this.#pools.get(key);
    if (list === undefined) {
      list = [];
      this.#pools.set(key, list);
    }
    for (const e of list) {
      if (e.born > after && e.hasRoom()) {
        e.pending++;
        return e;
      }
    }
    const e = new PooledSession(key, this.#o.maxStreamsPerSession ?? 100, ++this.#born);
    e.budget = this.#budget.session(peerAuthority, 'outbound');
    list.push(e);
    e.pending++;
    e.ready = this.#establish(e, o.peer, peerAuthority, [...expected], this.#tls);
    // Waiters attach their own handlers; this one keeps a failed handshake from being "unhandled".
    e.ready.catch(() => {});
    return e;
  }

  async #waitReady(e: PooledSession, signal: HboneAbortSignal | undefined): Promise<void> {
    if (signal === undefined) return e.ready;
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(new HboneError('ERR_HBONE_ABORTED', 'tunnel aborted while the session was connecting', { cause: signal.reason }));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      e.ready!.then(
        () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        (err: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      );
    });
  }

  async #establish(e: PooledSession, peer: HboneTarget, peerAuthority: string, expected: string[], t: ResolvedTls): Promise<void> {
    const timeoutMs = this.#o.connectTimeoutMs ?? 10_000;
    const log = this.#log.child({ peer: peerAuthority });
    let raw: net.Socket | undefined;
    let tcp: Promise<net.Socket> | undefined;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new HboneError(
              'ERR_HBONE_TIMEOUT',
              `HBONE connection to ${peerAuthority} not established within ${timeoutMs} ms (maybe a NetworkPolicy is blocking HBONE port ${peer.port})`,
            ),
          ),
        timeoutMs,
      );
    });
    try {
      tcp = this.#tcp(peer, peerAuthority);
      raw = await Promise.race([tcp, timeout]);
      // Until TLS has taken it over (or it is destroyed), an error on it must not crash the process.
      raw.on('error', ignore);
      raw.setNoDelay(true);
      const tlsSocket = tls.connect({
        socket: raw,
        secureContext: t.context,
        ALPNProtocols: ['h2'],
        rejectUnauthorized: true,
        // Identity is checked below against the SPIFFE URI SANs, not a hostname; and no SNI is sent.
        checkServerIdentity: () => undefined,
      });
      e.socket = tlsSocket;
      await Promise.race([handshake(tlsSocket, peerAuthority), timeout]);
      if (tlsSocket.alpnProtocol !== 'h2') {
        throw new HboneError('ERR_HBONE_TLS', `peer ${peerAuthority} negotiated ALPN ${String(tlsSocket.alpnProtocol)}, not h2`);
      }
      const cert = tlsSocket.getPeerX509Certificate();
      const seen = cert === undefined ? [] : identitiesFromCertificate(cert).map(String);
      if (!seen.some((id) => expected.includes(id))) {
        throw new HboneError(
          'ERR_HBONE_IDENTITY_MISMATCH',
          `peer ${peerAuthority} presented identities [${seen.join(', ')}] (subjectAltName: ${cert?.subjectAltName ?? 'none'}), expected one of [${expected.join(', ')}]`,
        );
      }
      // The peer's first SETTINGS makes the session usable. With TLS 1.3 the peer judges our
      // certificate after our handshake is done: a refusal arrives as an alert (a socket error) or,
      // from servers that send none, as the connection closing before any frame.
      let settings!: () => void;
      let lost!: (err: HboneError) => void;
      const settled = new Promise<void>((resolve, reject) => {
        settings = resolve;
        lost = reject;
      });
      e.session = new H2Session(tlsSocket, {
        role: 'client',
        streamWindow: this.#o.streamWindowSize ?? MiB,
        connectionWindow: this.#o.connectionWindowSize ?? 16 * MiB,
        onRemoteSettings: () => {
          if (!e.established) settings();
        },
        onGoaway: (code, lastStreamId) => this.#goaway(e, code, lastStreamId, log),
        onStreamClosed: (tunnel) => {
          releaseTunnel(tunnel);
          this.#maybeIdle(e);
        },
        onClose: (error) => {
          if (!e.established) lost(establishFailure(error, peerAuthority, t));
          this.#sessionClosed(e, error, log);
        },
      });
      await Promise.race([settled, timeout]);
      this.#keepAlive(e, log);
      log.debug({ maxStreams: e.limit }, 'hbone session established');
      e.established = true;
      this.#maybeIdle(e);
    } catch (err) {
      e.closed = true;
      this.#remove(e);
      if (e.session !== undefined) e.session.destroy();
      else if (raw !== undefined) (e.socket ?? raw).destroy();
      // A connection that comes up after the deadline is nobody's: closed as soon as it exists.
      else tcp?.then(destroySocket, ignore);
      throw classify(err, peerAuthority);
    } finally {
      clearTimeout(timer);
    }
  }

  async #tcp(peer: HboneTarget, peerAuthority: string): Promise<net.Socket> {
    if (this.#o.socketFactory !== undefined) {
      try {
        return await this.#o.socketFactory(peer);
      } catch (cause) {
        throw new HboneError('ERR_HBONE_CONNECT', `socket factory failed for ${peerAuthority}: ${String(cause)}`, { cause });
      }
    }
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: peer.host, port: peer.port, noDelay: true });
      s.once('connect', () => {
        s.off('error', onError);
        resolve(s);
      });
      const onError = (cause: Error): void => {
        s.destroy();
        reject(new HboneError('ERR_HBONE_CONNECT', `TCP connect to ${peerAuthority} failed: ${cause.message}`, { cause }));
      };
      s.once('error', onError);
    });
  }

  #goaway(e: PooledSession, code: number, lastStreamId: number, log: HboneLogger): void {
    e.goaway = `peer sent GOAWAY code ${code} last stream ${lastStreamId}`;
    e.goawayAfter ??= this.#born;
    log.debug({ code, lastStreamId }, 'hbone session received GOAWAY, retiring it');
    this.#retire(e, e.goaway);
  }

  #sessionClosed(e: PooledSession, error: HboneError | undefined, log: HboneLogger): void {
    e.closed = true;
    if (error !== undefined) log.debug({ err: error }, 'hbone session error');
    clearInterval(e.pingTimer);
    clearInterval(e.sweepTimer);
    e.sweepTimer = undefined;
    clearTimeout(e.idleTimer);
    this.#remove(e);
    for (const w of e.closeWaiters.splice(0)) w();
  }

  /** PING every pingIntervalMs; a peer that leaves one unanswered for pingTimeoutMs loses the session. */
  #keepAlive(e: PooledSession, log: HboneLogger): void {
    const session = e.session!;
    const pingTimeout = this.#o.pingTimeoutMs ?? 20_000;
    let outstanding = false;
    e.pingTimer = setInterval(() => {
      if (outstanding || session.closed) return;
      outstanding = true;
      const deadline = setTimeout(() => {
        log.warn({ timeoutMs: pingTimeout }, 'hbone session PING not answered, closing it');
        session.destroy(new HboneError('ERR_HBONE_TIMEOUT', `peer did not answer PING within ${pingTimeout} ms`));
      }, pingTimeout);
      deadline.unref();
      session.ping().then(
        () => {
          outstanding = false;
          clearTimeout(deadline);
        },
        (err: unknown) => {
          outstanding = false;
          clearTimeout(deadline);
          log.debug({ err }, 'PING failed');
        },
      );
    }, this.#o.pingIntervalMs ?? 10_000);
    e.pingTimer.unref();
  }

  #request(e: PooledSession, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number): Promise<HboneTunnel> {
    const overBudget = e.budget?.admit();
    if (overBudget !== undefined) {
      this.#log.debug({ peer: peerAuthority, target: authority }, overBudget.message);
      this.#maybeIdle(e);
      return Promise.reject(overBudget);
    }
    return new Promise((resolve, reject) => {
      const p = new PendingOpen(this, e, o, authority, peerAuthority, attempt, resolve, reject);
      try {
        p.tunnel = e.session!.open(authority, o.headers === undefined ? NO_HEADERS : flatHeaders(o.headers), p);
        // Errors after the tunnel is handed over surface through 'close'/rstCode to whoever owns it: never crash.
        p.tunnel.on('error', this.#onTunnelError);
      } catch (err) {
        if (!isRetryable(err)) return reject(err);
        this.#retire(e, 'cannot open streams');
        return resolve(this.#retry(err as HboneError, o, authority, peerAuthority, attempt, e.goawayAfter));
      }
      e.opening.add(p);
      if (e.sweepTimer === undefined) this.#armSweep(e);
      const signal = o.signal;
      if (signal !== undefined) {
        p.onAbort = (): void => p.cancel(new HboneError('ERR_HBONE_ABORTED', `CONNECT ${authority} via ${peerAuthority} aborted`, { cause: signal.reason }));
        if (signal.aborted) p.onAbort();
        else signal.addEventListener('abort', p.onAbort, { once: true });
      }
    });
  }

  /** @internal The session failed an open (PendingOpen.reject): retried when the peer never processed it. */
  failed(p: PendingOpen, err: HboneError): void {
    if (err.code === 'ERR_HBONE_STATUS') {
      p.fail(new HboneError('ERR_HBONE_STATUS', `peer ${p.peerAuthority} answered CONNECT ${p.authority} with status ${err.status}`, { status: err.status, cause: err }));
      return;
    }
    const e = p.e;
    const message = `peer ${p.peerAuthority} closed CONNECT ${p.authority} before answering: ${e.goaway ?? err.message}`;
    // A connection lost to a socket error (a TLS alert among them) is reported as that error.
    const socketError = err.cause instanceof H2ProtocolError ? undefined : err.cause;
    const wrapped = socketError !== undefined ? classify(socketError, p.peerAuthority, message) : new HboneError(err.code, message, { cause: err });
    // Safe to send again: a stream above a GOAWAY's last-stream-id was not processed, whatever the
    // GOAWAY's code (RFC 9113 §6.8), nor was one refused with REFUSED_STREAM (§8.7). After a GOAWAY
    // the other sessions of its time may be to the same draining server: a later one.
    if (isRetryable(err)) p.done(this.#retry(wrapped, p.o, p.authority, p.peerAuthority, p.attempt, e.goawayAfter));
    else p.fail(wrapped);
  }

  /**
   * One timer per session with opens in flight rather than one per open: `opening` is in send order,
   * so a sweep stops at the first open still within its deadline.
   */
  #armSweep(e: PooledSession): void {
    const timeoutMs = this.#o.responseTimeoutMs ?? 15_000;
    const every = Math.max(5, Math.min(1000, timeoutMs / 4));
    e.sweepTimer = setInterval(() => {
      if (e.opening.size === 0 || e.closed) {
        clearInterval(e.sweepTimer);
        e.sweepTimer = undefined;
        return;
      }
      const cutoff = performance.now() - timeoutMs;
      for (const p of e.opening) {
        if (p.sentAt > cutoff) break;
        this.#log.debug({ peer: p.peerAuthority, target: p.authority, timeoutMs }, 'CONNECT not answered in time, stream reset');
        p.cancel(
          new HboneError(
            'ERR_HBONE_RESPONSE_TIMEOUT',
            `peer ${p.peerAuthority} did not answer CONNECT ${p.authority} within ${timeoutMs} ms (stream reset)${e.goaway ? `; ${e.goaway}` : ''}`,
          ),
        );
      }
    }, every);
    e.sweepTimer.unref();
  }

  #retire(e: PooledSession, reason: string): void {
    if (e.draining) return;
    e.draining = true;
    this.#log.debug({ reason }, 'hbone session retired');
    this.#maybeIdle(e);
  }

  /** Closes a session with no streams if it is retired, else arms its idle timer. */
  #maybeIdle(e: PooledSession): void {
    if (e.open > 0 || e.pending > 0 || e.session === undefined || e.closed || e.session.closed) return;
    if (e.draining) {
      void e.session.close();
      this.#remove(e);
      return;
    }
    // One timer per session, restarted each time it falls idle (a proxy with one connection at a time
    // to a peer does so after every tunnel); it does nothing if it fires while streams are open.
    if (e.idleTimer !== undefined) {
      e.idleTimer.refresh();
      return;
    }
    e.idleTimer = setTimeout(() => {
      if (e.open === 0 && e.pending === 0 && !e.closed) {
        this.#log.debug({}, 'hbone session idle, closing');
        this.#retire(e, 'idle');
      }
    }, this.#o.idleTimeoutMs ?? 300_000);
    e.idleTimer.unref();
  }

  #remove(e: PooledSession): void {
    e.budget?.close();
    const list = this.#pools.get(e.key);
    if (list === undefined) return;
    const i = list.indexOf(e);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#pools.delete(e.key);
  }
}

const NO_HEADERS: readonly string[] = [];

function destroySocket(s: net.Socket): void {
  s.destroy();
}

function ignore(): void {
  // An error on a socket that is being given up or handed over: its new owner reports what matters.
}

/** Request headers as the session takes them: [name, value, …], names lower-cased as HTTP/2 requires. */
function flatHeaders(h: Record<string, string>): string[] {
  const out: string[] = [];
  for (const name of Object.keys(h)) out.push(name.toLowerCase(), String(h[name]));
  return out;
}

/**
 * Why a session closed before the peer's SETTINGS: a TLS alert (the peer refused our certificate
 * after the TLS 1.3 handshake), or a close without one.
 */
function establishFailure(error: HboneError | undefined, peerAuthority: string, t: ResolvedTls): HboneError {
  if (error?.cause instanceof H2ProtocolError) return error;
  if (error?.cause !== undefined) return classify(error.cause, peerAuthority, error.message);
  return new HboneError(
    'ERR_HBONE_TLS',
    `peer ${peerAuthority} closed the connection right after the TLS handshake, before any HTTP/2 frame: it refused our certificate (${t.identity.toString()}) or TLS parameters`,
  );
}

/** What AbortSignal.throwIfAborted() throws: the reason, or an AbortError when the signal gave none. */
function abortReason(signal: HboneAbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

function handshake(s: tls.TLSSocket, peerAuthority: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (cause: Error): void => {
      s.off('secureConnect', onOk);
      reject(new HboneError('ERR_HBONE_TLS', `TLS handshake with ${peerAuthority} failed: ${cause.message}`, { cause }));
    };
    const onOk = (): void => {
      s.off('error', onError);
      resolve();
    };
    s.once('secureConnect', onOk);
    s.once('error', onError);
  });
}

/** Maps whatever went wrong to an HboneError; OpenSSL errors (e.g. an alert for our certificate) are TLS failures. */
function classify(err: unknown, peerAuthority: string, fallback?: string): HboneError {
  if (err instanceof HboneError) return err;
  const code = (err as { code?: unknown } | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (typeof code === 'string' && (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || (code === 'ECONNRESET' && /alert/i.test(message)))) {
    return new HboneError('ERR_HBONE_TLS', `TLS with ${peerAuthority} failed: ${message}`, { cause: err });
  }
  return new HboneError('ERR_HBONE_SESSION', fallback ?? `HBONE session to ${peerAuthority} failed: ${message}`, { cause: err });
}

