import { AsyncResource } from 'node:async_hooks';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { type HboneTarget, formatAuthority } from './authority.js';
import { HboneError } from './errors.js';
import { type BudgetSession, type BufferBudget, type BufferBudgetOptions, releaseTunnel, resolveBudget } from './buffer-budget.js';
import { identitiesFromCertificate } from './identity.js';
import { type HboneLogger, silentLogger } from './logger.js';
import { type HboneTlsOptions, type ResolvedTls, resolveTls } from './tls-options.js';

const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM } = http2.constants;
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
  /** Per-stream receive window, default 1 MiB: what a tunnel whose reader stopped holds (see the server's). */
  streamWindowSize?: number;
  /** Per-connection receive window, default 16 MiB. */
  connectionWindowSize?: number;
  /** nghttp2 memory cap per session in MiB, default 64. */
  maxSessionMemory?: number;
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

export interface HboneClientStats {
  sessions: number;
  streams: number;
}

/** One HTTP/2 session to a peer, shared by up to `max` tunnels. */
class PooledSession {
  session: http2.ClientHttp2Session | undefined;
  ready: Promise<void> | undefined;
  /** Tunnels waiting for this session to come up. */
  pending = 0;
  /** Streams opened on it and not yet closed. */
  open = 0;
  max: number;
  /** TLS done, the peer's SETTINGS seen: streams can be opened at once. */
  established = false;
  draining = false;
  closed = false;
  goaway: string | undefined;
  /** Its tunnels' share of the client's BufferBudget. */
  budget: BudgetSession | undefined;
  /** The lowest last-stream-id of the peer's GOAWAYs: streams above it were never processed (RFC 9113 §6.8). */
  goawayLastStreamId: number | undefined;
  /**
   * The client's session count when the first GOAWAY came: sessions up to it may be to the same
   * draining server (pooled beside this one), so an open it refused is retried on a later one.
   */
  goawayAfter: number | undefined;
  lastError: Error | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  pingTimer: NodeJS.Timeout | undefined;
  /** Runs while `opening` is not empty: fails opens the peer left unanswered too long. */
  sweepTimer: NodeJS.Timeout | undefined;

  /** Streams sent and not answered yet; the session's shared stream listeners settle them. */
  readonly opening = new Map<http2.ClientHttp2Stream, PendingOpen>();
  // Listeners shared by every stream of this session: per-stream closures cost memory on every idle
  // tunnel, and adding and removing listeners per open costs CPU (each one emits an event).
  onStreamClose: (this: http2.ClientHttp2Stream) => void = noop;
  onStreamError: (this: http2.ClientHttp2Stream, err: Error) => void = noop;
  onStreamResponse: (this: http2.ClientHttp2Stream, headers: http2.IncomingHttpHeaders) => void = noop;

  constructor(
    readonly key: string,
    max: number,
    /** This client's sessions made before it, plus one. */
    readonly born: number,
  ) {
    this.max = max;
  }

  hasRoom(): boolean {
    return !this.draining && !this.closed && this.open + this.pending < this.max;
  }
}

/** A CONNECT sent and not answered yet. */
interface PendingOpen {
  resolve: (stream: http2.ClientHttp2Stream | Promise<http2.ClientHttp2Stream>) => void;
  reject: (err: unknown) => void;
  o: HboneConnectOptions;
  authority: string;
  peerAuthority: string;
  attempt: number;
  /** When the CONNECT was sent (Date.now()), for the response deadline. */
  sentAt: number;
  /** The stream's error, if any, for the message when it closes unanswered. */
  error: Error | undefined;
  onAbort: (() => void) | undefined;
}

const noop = (): void => {};

// Node 20's request() copies its options and then adds each priority default to the copy one property
// at a time (setAndValidatePriorityOptions): handing them in already set costs ~5 µs less CPU per open
// (measured), and the HEADERS frame is the same (these are the defaults, so no PRIORITY flag is sent).
const REQUEST_OPTIONS = { endStream: false, weight: 16, parent: 0, exclusive: false, silent: false };

// Node 20's request() wraps the stream's start in AsyncResource.prototype.bind, which there also defines
// the deprecated `asyncResource` accessor (DEP0172) with util.deprecate: setPrototypeOf gives each of its
// two closures a hidden class of its own, made in old space, and that keeps the closures' scope — which
// holds the function bound to the new stream — alive until the next full GC. Every tunnel's stream and
// everything it references (~7 KB) then survives each scavenge, is copied and promoted: scavenges 2-3x
// longer (the open-latency tail), and full GCs. While request() runs (synchronously: only Node's code
// and async_hooks init hooks run meanwhile) bind is the same bind without that accessor, which nothing
// in node:http2 reads. Only where Node has the accessor, and only if no one else replaced bind.
type Bind = (this: AsyncResource, fn: (...args: unknown[]) => unknown, thisArg?: unknown) => unknown;
const proto = AsyncResource.prototype as unknown as { bind: Bind };
const nodeBind = proto.bind;
const leanBind: Bind = function (fn, thisArg) {
  return thisArg === undefined ? inScopeOf(this, fn) : this.runInAsyncScope.bind(this, fn, thisArg);
};
function inScopeOf(resource: AsyncResource, fn: (...args: unknown[]) => unknown): (...args: unknown[]) => unknown {
  return function (this: unknown, ...args: unknown[]): unknown {
    return resource.runInAsyncScope(fn, this, ...args);
  };
}
const bindHasAccessor = Object.getOwnPropertyDescriptor(new AsyncResource('HboneProbe').bind(noop), 'asyncResource') !== undefined;

function request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders): http2.ClientHttp2Stream {
  if (!bindHasAccessor || proto.bind !== nodeBind) return session.request(headers, REQUEST_OPTIONS);
  proto.bind = leanBind;
  try {
    return session.request(headers, REQUEST_OPTIONS);
  } finally {
    proto.bind = nodeBind;
  }
}

/**
 * HBONE client: opens tunnels (HTTP/2 CONNECT streams) over pooled mutual-TLS sessions, keyed by
 * (own identity, expected peer identities, peer address).
 */
export class HboneClient {
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

  constructor(o: HboneClientOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger;
    this.#budget = resolveBudget(o.bufferBudget, this.#log);
    this.#tls = resolveTls(o.tls);
    this.#identityKey = this.#tls.identity.toString();
  }

  /** Opens a tunnel; resolves once the peer answered 200, with the stream as the tunnel's Duplex. */
  connect(o: HboneConnectOptions): Promise<http2.ClientHttp2Stream> {
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
  #attempt(o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after = 0): Promise<http2.ClientHttp2Stream> {
    if (this.#closed) return Promise.reject(new HboneError('ERR_HBONE_CLOSED', 'HboneClient is closed'));
    const entry = this.#acquire(o, peerAuthority, after);
    if (!entry.established) return this.#attemptWhenReady(entry, o, authority, peerAuthority, attempt, after);
    entry.pending--;
    return this.#open(entry, o, authority, peerAuthority, attempt, after);
  }

  async #attemptWhenReady(entry: PooledSession, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after: number): Promise<http2.ClientHttp2Stream> {
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

  #open(entry: PooledSession, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after: number): Promise<http2.ClientHttp2Stream> {
    if ((entry.open >= entry.max || entry.draining || entry.closed) && attempt < 5) {
      // Capped by the peer's SETTINGS, or retired while we waited: find another.
      this.#maybeIdle(entry);
      return this.#attempt(o, authority, peerAuthority, attempt + 1, Math.max(after, entry.goawayAfter ?? 0));
    }
    return this.#request(entry, o, authority, peerAuthority, attempt);
  }

  /** A stream the peer did not process (refused, or above a GOAWAY's last stream) is safe to retry on a new session. */
  #retry(err: HboneError, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number, after = 0): Promise<http2.ClientHttp2Stream> {
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
    for (const e of entries) e.session?.destroy();
    // Destroyed sessions hold nothing more, but Node does not always emit their 'close' (seen with a
    // peer still flooding a paused tunnel's session): wait for it briefly, never forever.
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(waits), new Promise<void>((r) => (grace = setTimeout(r, 1000)))]);
    clearTimeout(grace);
  }

  #closedPromise(e: PooledSession): Promise<void> {
    return new Promise((r) => {
      if (e.ready === undefined) return r();
      e.ready.then(
        () => (e.session === undefined || e.session.destroyed ? r() : e.session.once('close', () => r())),
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
    this.#listen(e);
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
    let tlsSocket: tls.TLSSocket | undefined;
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
      raw = await Promise.race([this.#tcp(peer, peerAuthority), timeout]);
      raw.setNoDelay(true);
      tlsSocket = tls.connect({
        socket: raw,
        secureContext: t.context,
        ALPNProtocols: ['h2'],
        rejectUnauthorized: true,
        // Identity is checked below against the SPIFFE URI SANs, not a hostname; and no SNI is sent.
        checkServerIdentity: () => undefined,
      });
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
      const connected = tlsSocket;
      const session = http2.connect(`https://${peerAuthority}`, {
        createConnection: () => connected,
        maxSessionMemory: this.#o.maxSessionMemory ?? 64,
        // maxHeaderListPairs left at Node's default, as on the server (see there): a lower one would
        // reset answers from peers that send more than `:status` (Go adds date, nghttpx server and via).
        settings: {
          enablePush: false,
          initialWindowSize: this.#o.streamWindowSize ?? MiB,
          maxFrameSize: MiB,
        },
      });
      e.session = session;
      this.#watch(e, session, log);
      // With TLS 1.3 the peer judges our certificate after our handshake is done: its alert arrives
      // as a socket error that the session does not always surface, so watch the socket too.
      const socketFailed = new Promise<never>((_, reject) => {
        connected.once('error', (cause: Error) => reject(classify(cause, peerAuthority)));
        // An h2 server's first frame is SETTINGS; closing before it (Node servers do so without an
        // alert) is the peer refusing our certificate after the handshake.
        connected.once('close', () =>
          reject(
            new HboneError(
              'ERR_HBONE_TLS',
              `peer ${peerAuthority} closed the connection right after the TLS handshake, before any HTTP/2 frame: it refused our certificate (${t.identity.toString()}) or TLS parameters`,
            ),
          ),
        );
      });
      socketFailed.catch(() => {});
      connected.on('error', (err: Error) => {
        e.lastError = err;
        if (!session.destroyed) session.destroy(err);
      });
      await Promise.race([settingsReceived(session, peerAuthority), timeout, socketFailed]);
      session.setLocalWindowSize(this.#o.connectionWindowSize ?? 16 * MiB);
      const configured = e.max;
      const applyPeerMax = (settings: http2.Settings): void => {
        const peerMax = settings.maxConcurrentStreams;
        e.max = peerMax === undefined ? configured : Math.max(1, Math.min(configured, peerMax));
      };
      applyPeerMax(session.remoteSettings);
      // The peer may change its limit later (e.g. lower it under load).
      session.on('remoteSettings', applyPeerMax);
      log.debug({ maxStreams: e.max }, 'hbone session established');
      e.established = true;
      this.#maybeIdle(e);
    } catch (err) {
      e.closed = true;
      this.#remove(e);
      if (e.session !== undefined) e.session.destroy();
      else (tlsSocket ?? raw)?.destroy();
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

  #watch(e: PooledSession, session: http2.ClientHttp2Session, log: HboneLogger): void {
    session.on('error', (err: Error) => {
      e.lastError = err;
      log.debug({ err }, 'hbone session error');
    });
    session.on('goaway', (code: number, lastStreamId: number, opaque?: Buffer) => {
      const reason = opaque !== undefined && opaque.length > 0 ? ` (${opaque.toString('utf8')})` : '';
      e.goaway = `peer sent GOAWAY code ${code} last stream ${lastStreamId}${reason}`;
      e.goawayLastStreamId = Math.min(lastStreamId, e.goawayLastStreamId ?? lastStreamId);
      e.goawayAfter ??= this.#born;
      log.debug({ code, lastStreamId }, 'hbone session received GOAWAY, retiring it');
      this.#retire(e, e.goaway);
    });
    session.once('close', () => {
      e.closed = true;
      clearInterval(e.pingTimer);
      clearInterval(e.sweepTimer);
      e.sweepTimer = undefined;
      clearTimeout(e.idleTimer);
      this.#remove(e);
    });
    const interval = this.#o.pingIntervalMs ?? 10_000;
    const pingTimeout = this.#o.pingTimeoutMs ?? 20_000;
    let outstanding = false;
    e.pingTimer = setInterval(() => {
      if (outstanding || session.destroyed || session.connecting) return;
      outstanding = true;
      const deadline = setTimeout(() => {
        log.warn({ timeoutMs: pingTimeout }, 'hbone session PING not answered, closing it');
        session.destroy(new HboneError('ERR_HBONE_TIMEOUT', `peer did not answer PING within ${pingTimeout} ms`));
      }, pingTimeout);
      deadline.unref();
      const sent = session.ping((err) => {
        outstanding = false;
        clearTimeout(deadline);
        if (err !== null) log.debug({ err }, 'PING failed');
      });
      if (!sent) {
        outstanding = false;
        clearTimeout(deadline);
      }
    }, interval);
    e.pingTimer.unref();
  }

  #request(e: PooledSession, o: HboneConnectOptions, authority: string, peerAuthority: string, attempt: number): Promise<http2.ClientHttp2Stream> {
    const session = e.session!;
    const overBudget = e.budget?.admit();
    if (overBudget !== undefined) {
      this.#log.debug({ peer: peerAuthority, target: authority }, overBudget.message);
      this.#maybeIdle(e);
      return Promise.reject(overBudget);
    }
    let stream: http2.ClientHttp2Stream;
    try {
      stream = request(session, o.headers === undefined ? { ':method': 'CONNECT', ':authority': authority } : { ...o.headers, ':method': 'CONNECT', ':authority': authority });
    } catch (cause) {
      this.#retire(e, 'request failed');
      return this.#retry(new HboneError('ERR_HBONE_SESSION', `session to ${peerAuthority} cannot open streams: ${String(cause)}`, { cause }), o, authority, peerAuthority, attempt);
    }
    e.open++;
    // Errors after the tunnel is handed over surface through 'close'/rstCode to whoever owns it; never crash.
    stream.on('close', e.onStreamClose);
    stream.on('error', e.onStreamError);
    stream.on('response', e.onStreamResponse);
    if (e.sweepTimer === undefined) this.#armSweep(e);
    return new Promise((resolve, reject) => {
      const p: PendingOpen = { resolve, reject, o, authority, peerAuthority, attempt, sentAt: Date.now(), error: undefined, onAbort: undefined };
      e.opening.set(stream, p);
      const signal = o.signal;
      if (signal !== undefined) {
        p.onAbort = (): void => {
          e.opening.delete(stream);
          stream.close(NGHTTP2_CANCEL);
          reject(new HboneError('ERR_HBONE_ABORTED', `CONNECT ${authority} via ${peerAuthority} aborted`, { cause: signal.reason }));
        };
        if (signal.aborted) p.onAbort();
        else signal.addEventListener('abort', p.onAbort, { once: true });
      }
    });
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
      const cutoff = Date.now() - timeoutMs;
      for (const [stream, p] of e.opening) {
        if (p.sentAt > cutoff) break;
        settled(e, stream, p);
        stream.close(NGHTTP2_CANCEL);
        this.#log.debug({ peer: p.peerAuthority, target: p.authority, timeoutMs }, 'CONNECT not answered in time, stream reset');
        p.reject(
          new HboneError(
            'ERR_HBONE_RESPONSE_TIMEOUT',
            `peer ${p.peerAuthority} did not answer CONNECT ${p.authority} within ${timeoutMs} ms (stream reset)${e.goaway ? `; ${e.goaway}` : ''}`,
          ),
        );
      }
    }, every);
    e.sweepTimer.unref();
  }

  /** The shared stream listeners of a new session. */
  #listen(e: PooledSession): void {
    const closed = (stream: http2.ClientHttp2Stream): void => {
      e.open--;
      releaseTunnel(stream);
      this.#maybeIdle(e);
      const p = e.opening.get(stream);
      if (p !== undefined) this.#closedUnanswered(e, stream, p);
    };
    const answered = (stream: http2.ClientHttp2Stream, headers: http2.IncomingHttpHeaders): void => {
      const p = e.opening.get(stream);
      if (p === undefined) return;
      settled(e, stream, p);
      const status = Number(headers[':status']);
      if (status === 200) {
        e.budget?.track(stream);
        p.resolve(stream);
        return;
      }
      stream.close(NGHTTP2_CANCEL);
      p.reject(new HboneError('ERR_HBONE_STATUS', `peer ${p.peerAuthority} answered CONNECT ${p.authority} with status ${status}`, { status }));
    };
    const log = this.#log;
    e.onStreamClose = function (this: http2.ClientHttp2Stream) {
      closed(this);
    };
    e.onStreamResponse = function (this: http2.ClientHttp2Stream, headers: http2.IncomingHttpHeaders) {
      answered(this, headers);
    };
    e.onStreamError = function (this: http2.ClientHttp2Stream, err: Error) {
      const p = e.opening.get(this);
      if (p !== undefined) p.error = err;
      else log.debug({ err }, 'tunnel stream error');
    };
  }

  #closedUnanswered(e: PooledSession, stream: http2.ClientHttp2Stream, p: PendingOpen): void {
    settled(e, stream, p);
    const code = stream.rstCode;
    const why = e.goaway ?? e.lastError?.message ?? p.error?.message ?? `stream reset with code ${code}`;
    const err = classify(e.lastError ?? p.error, p.peerAuthority, `peer ${p.peerAuthority} closed CONNECT ${p.authority} before answering: ${why}`);
    // Safe to send again: a stream above a GOAWAY's last-stream-id was not processed, whatever the
    // GOAWAY's code (RFC 9113 §6.8; Node destroys the session on an error code, failing the stream
    // with the session's error); nor was one refused with REFUSED_STREAM (§8.7).
    const unprocessed = e.goawayLastStreamId !== undefined && stream.id !== undefined && stream.id > e.goawayLastStreamId;
    // After a GOAWAY the other sessions of its time may be to the same draining server: a later one.
    if (unprocessed || (code === NGHTTP2_REFUSED_STREAM && e.lastError === undefined)) p.resolve(this.#retry(err, p.o, p.authority, p.peerAuthority, p.attempt, e.goawayAfter));
    else p.reject(err);
  }

  #retire(e: PooledSession, reason: string): void {
    if (e.draining) return;
    e.draining = true;
    this.#log.debug({ reason }, 'hbone session retired');
    this.#maybeIdle(e);
  }

  /** Closes a session with no streams if it is retired, else arms its idle timer. */
  #maybeIdle(e: PooledSession): void {
    if (e.open > 0 || e.pending > 0 || e.session === undefined || e.closed) return;
    if (e.draining) {
      if (!e.session.closed) e.session.close();
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

/** What AbortSignal.throwIfAborted() throws: the reason, or an AbortError when the signal gave none. */
function abortReason(signal: HboneAbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** The open is answered, closed or aborted: nothing else may settle it. */
function settled(e: PooledSession, stream: http2.ClientHttp2Stream, p: PendingOpen): void {
  e.opening.delete(stream);
  if (p.onAbort !== undefined) p.o.signal?.removeEventListener('abort', p.onAbort);
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

function settingsReceived(session: http2.ClientHttp2Session, peerAuthority: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      session.off('remoteSettings', onSettings);
      session.off('close', onClose);
      session.off('error', onError);
    };
    const onSettings = (): void => {
      cleanup();
      resolve();
    };
    let lastError: Error | undefined;
    const onError = (err: Error): void => {
      lastError = err;
    };
    const onClose = (): void => {
      cleanup();
      reject(classify(lastError, peerAuthority, `HTTP/2 session to ${peerAuthority} closed before the peer's SETTINGS${lastError ? `: ${lastError.message}` : ''}`));
    };
    session.once('remoteSettings', onSettings);
    session.once('close', onClose);
    session.on('error', onError);
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

