import type { X509Certificate } from 'node:crypto';
import * as http2 from 'node:http2';
import type * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type * as tls from 'node:tls';
import { type HboneTarget, parseAuthority } from './authority.js';
import { Bridge, type BridgeResult } from './bridge.js';
import { type HboneRequestHeaders, parseRequestHeaders } from './headers.js';
import { SpiffeId, identitiesFromCertificate } from './identity.js';
import { type HboneLogger, silentLogger } from './logger.js';
import { type HboneTlsOptions, type ResolvedTls, resolveTls } from './tls-options.js';
import { HboneError } from './errors.js';
import { type BudgetSession, type BufferBudget, type BufferBudgetOptions, releaseTunnel, resolveBudget } from './buffer-budget.js';
import { InboundGuard } from './inbound-guard.js';

const { NGHTTP2_NO_ERROR, NGHTTP2_INADEQUATE_SECURITY, NGHTTP2_INTERNAL_ERROR, HTTP2_HEADER_METHOD, HTTP2_HEADER_AUTHORITY } = http2.constants;
const MiB = 1024 * 1024;

/** The authenticated peer of an HBONE session. */
export interface HbonePeer {
  /** The peer certificate's SPIFFE identity (the first valid one); undefined when it has none. */
  identity: SpiffeId | undefined;
  certificate: X509Certificate;
  remoteAddress: string;
  remotePort: number;
}

export interface HboneConnectContext {
  peer: HbonePeer;
  headers: HboneRequestHeaders;
  /** Fires when the client gives up on the stream before the upstream is connected. */
  signal: AbortSignal;
}

/** What the server reports when a tunnel ends (access logs, metrics). */
export interface HboneTunnelClosed extends BridgeResult {
  peer: HbonePeer;
  target: HboneTarget;
  headers: HboneRequestHeaders;
  durationMs: number;
}

/**
 * A refusal from `authorize` with its own status: `{ allow: false, status: 503, reason: 'unknown
 * destination …' }`. Without `status` (or with 401) it is a policy denial. `reason` is logged (the
 * `connection failed` line), never sent to the client.
 */
export interface HboneRefusal {
  allow: false;
  /** 400–599; default 401. */
  status?: number;
  reason?: string;
}

/** `authorize`'s answer: true (or `{ allow: true }`) admits, false answers 401, an HboneRefusal its status. */
export type HboneAuthorizeResult = boolean | { allow: true } | HboneRefusal;

export interface HboneServerOptions {
  tls: HboneTlsOptions;
  /**
   * Policy hook: true or `{ allow: true }` admits; false answers 401 (denied by policy); `{ allow: false,
   * status, reason }` answers that status (e.g. 503 for a destination not known yet). A throw, a
   * rejection or any other answer (undefined, `{ allow: 1 }`) answers 401.
   * Default: allow every authenticated peer.
   */
  authorize?: (peer: HbonePeer, target: HboneTarget, headers: HboneRequestHeaders) => HboneAuthorizeResult | Promise<HboneAuthorizeResult>;
  /** Opens the upstream; must resolve only once it is connected. A rejection answers 503. */
  connect: (target: HboneTarget, ctx: HboneConnectContext) => Promise<Duplex>;
  /** Targets this server serves (e.g. only the pod's own IPs); anything but true (or a throw) answers 400. Default: all. */
  validateTarget?: (target: HboneTarget) => boolean;
  /** Client trust domains accepted; default only the server certificate's own. Others are refused with GOAWAY. */
  trustDomains?: string[];
  onTunnelClosed?: (ev: HboneTunnelClosed) => void;
  logger?: HboneLogger;
  /** Default 200 (as ztunnel). */
  maxConcurrentStreams?: number;
  /**
   * Per-stream receive window, default 1 MiB (ztunnel: 4 MiB). Node returns the connection window as data
   * arrives, so this is what a stream whose reader stopped holds, and × maxConcurrentStreams a session;
   * 1 MiB carries as much as 4 MiB here (DESIGN.md) and caps a session at 200 MiB between budget checks.
   */
  streamWindowSize?: number;
  /** Per-connection receive window, default 16 MiB (as ztunnel). */
  connectionWindowSize?: number;
  /** nghttp2 memory cap per session in MiB; past it new streams are refused. Default 64. */
  maxSessionMemory?: number;
  /** TLS handshake deadline, default 10 s. */
  handshakeTimeoutMs?: number;
  /**
   * Bounds bytes held by tunnels whose upstream stopped reading (per session and in total) and TLS
   * handshakes in progress; share one BufferBudget between servers and clients for a process-wide bound.
   * Default: a budget of this server's own with BufferBudget's defaults.
   */
  bufferBudget?: BufferBudget | BufferBudgetOptions;
  /** An authenticated session with no tunnel for this long is closed (GOAWAY). Default 10 min. */
  idleSessionTimeoutMs?: number;
}

export interface HboneServer {
  /** Serve a raw TCP socket accepted elsewhere (e.g. a listener made inside a pod's netns). */
  handleConnection(socket: net.Socket): void;
  listen(o: net.ListenOptions): Promise<net.AddressInfo>;
  /** Swap key/cert/bundle for new handshakes; established sessions are untouched. */
  setTls(tls: HboneTlsOptions): void;
  /**
   * Stop accepting, GOAWAY to every session, let open streams and TLS handshakes in progress finish
   * until `deadlineMs` (default 5000; a finished handshake gets GOAWAY too), then reset the rest.
   * Calling it again returns the same promise.
   */
  close(o?: { deadlineMs?: number }): Promise<void>;
  /** Live sessions and tunnels (for metrics and tests). */
  stats(): { sessions: number; tunnels: number };
}

export function createHboneServer(o: HboneServerOptions): HboneServer {
  return new Server(o);
}

interface SessionState {
  peer: HbonePeer;
  /** The peer's identity as text, for log lines. */
  src: string | undefined;
  budget: BudgetSession;
}

class Server implements HboneServer {
  readonly #o: HboneServerOptions;
  readonly #log: HboneLogger;
  #tls: ResolvedTls;
  readonly #h2: http2.Http2SecureServer;
  readonly #sockets = new Set<net.Socket>();
  /** `ip:port` of each accepted TCP socket, read when it was accepted. */
  readonly #sources = new WeakMap<net.Socket, string>();
  readonly #sessions = new Map<http2.ServerHttp2Session, SessionState>();
  /** Tunnels whose upstream is connected. */
  readonly #tunnels = new Set<ServerTunnel>();
  /** Streams admitted and waiting for their upstream connect. */
  #connecting = 0;
  /** Accepted TCP sockets whose TLS handshake has not finished: close() lets them finish and sends them GOAWAY. */
  readonly #handshaking = new Set<net.Socket>();
  #closing: Promise<void> | undefined;
  #closed = false;
  /** While close() drains: resolves it once no session and no handshake is left. */
  #drainCheck: (() => void) | undefined;
  readonly #budget: BufferBudget;
  readonly #guard: InboundGuard;

  constructor(o: HboneServerOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger;
    this.#tls = resolveTls(o.tls);
    this.#budget = resolveBudget(o.bufferBudget, this.#log);
    this.#guard = new InboundGuard(this.#budget, o.idleSessionTimeoutMs ?? 600_000, this.#log);
    const streamWindow = o.streamWindowSize ?? MiB;
    this.#h2 = http2.createSecureServer({
      ...this.#secureOptions(this.#tls),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
      allowHTTP1: false,
      honorCipherOrder: true,
      handshakeTimeout: o.handshakeTimeoutMs ?? 10_000,
      unknownProtocolTimeout: 1000,
      maxSessionMemory: o.maxSessionMemory ?? 64,
      // maxHeaderListPairs stays at Node's 128 although it sizes per-stream state: Node reserves a header
      // vector of min(it, 12) pairs in every stream for the stream's life (~0.6 KiB per idle tunnel), so
      // 4 would save that, but nghttp2 then resets (ENHANCE_YOUR_CALM) every CONNECT with more pairs than
      // that: ztunnel sends 5 (:method, :authority, baggage, forwarded, traceparent), Go adds user-agent
      // and accept-encoding, proxies add via and x-forwarded-*. Padding and the windows cost nothing per
      // idle stream (nghttp2 allocates for a window only when data flows).
      settings: {
        enablePush: false,
        maxConcurrentStreams: o.maxConcurrentStreams ?? 200,
        initialWindowSize: streamWindow,
        maxFrameSize: MiB,
      },
    });
    this.#guard.attach(this.#h2);
    this.#h2.on('connection', (socket: net.Socket) => {
      this.#sockets.add(socket);
      this.#handshaking.add(socket);
      // Read now: a failed handshake is reported after the socket is destroyed, when it no longer has an address.
      this.#sources.set(socket, `${socket.remoteAddress}:${socket.remotePort}`);
      socket.once('close', () => {
        this.#sockets.delete(socket);
        this.#handshakeEnded(socket);
      });
      socket.setNoDelay(true);
    });
    // After node:http2's own listener, which has made the session (and #onSession has seen it) by now.
    this.#h2.on('secureConnection', (socket: tls.TLSSocket) => this.#handshakeEnded(parentOf(socket)));
    this.#h2.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      if (this.#guard.wasRefused(socket)) return;
      this.#log.warn({ err, src: this.#sourceOf(socket), code: (err as { code?: string }).code }, 'connection failed: TLS handshake');
    });
    this.#h2.on('unknownProtocol', (socket: tls.TLSSocket) => {
      this.#log.warn({ src: this.#sourceOf(socket), alpn: socket.alpnProtocol }, 'connection failed: ALPN is not h2');
      socket.destroy();
    });
    this.#h2.on('sessionError', (err: Error) => this.#log.debug({ err }, 'session error'));
    this.#h2.on('session', (session: http2.ServerHttp2Session) => this.#onSession(session, o.connectionWindowSize ?? 16 * MiB));
    this.#h2.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => this.#onStream(stream, headers));
  }

  #secureOptions(t: ResolvedTls): tls.SecureContextOptions {
    return {
      key: t.options.key,
      cert: t.options.cert,
      ca: t.options.ca,
      minVersion: t.minVersion,
      ciphers: t.ciphers,
      ecdhCurve: 'X25519:P-256:P-384',
    };
  }

  /**
   * The client address of a TLS socket, also once it is destroyed. A server-side TLSSocket keeps the
   * TCP socket it wraps as `_parent` (not in Node's typings).
   */
  #sourceOf(socket: tls.TLSSocket): string {
    return this.#sources.get(parentOf(socket)) ?? `${socket.remoteAddress}:${socket.remotePort}`;
  }

  #handshakeEnded(socket: net.Socket): void {
    if (this.#handshaking.delete(socket)) this.#drainCheck?.();
  }

  handleConnection(socket: net.Socket): void {
    // During the drain a connection is still served as one accepted before close(): handshake, then GOAWAY.
    if (this.#closed) {
      socket.destroy();
      return;
    }
    this.#h2.emit('connection', socket);
  }

  listen(o: net.ListenOptions): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.#h2.once('error', onError);
      this.#h2.listen(o, () => {
        this.#h2.off('error', onError);
        resolve(this.#h2.address() as net.AddressInfo);
      });
    });
  }

  setTls(t: HboneTlsOptions): void {
    const resolved = resolveTls(t);
    this.#h2.setSecureContext(this.#secureOptions(resolved));
    this.#tls = resolved;
    this.#log.info({ identity: resolved.identity.toString() }, 'server certificate rotated');
  }

  stats(): { sessions: number; tunnels: number } {
    return { sessions: this.#sessions.size, tunnels: this.#connecting + this.#tunnels.size };
  }

  /**
   * As Go's http2 and ztunnel (hyper) shut down: GOAWAY to every session, and a connection accepted
   * before (or handed in during) the drain finishes its TLS handshake and then gets GOAWAY with
   * last-stream-id 0 (NO_ERROR), so its client sends its streams again elsewhere, instead of a reset
   * in the middle of the handshake. Drained once no session and no handshake is left.
   */
  close(o: { deadlineMs?: number } = {}): Promise<void> {
    return (this.#closing ??= this.#drain(o.deadlineMs ?? 5000));
  }

  async #drain(deadlineMs: number): Promise<void> {
    if (this.#h2.listening) this.#h2.close();
    for (const s of this.#sessions.keys()) if (!s.closed && !s.destroyed) s.close();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadline'>((r) => (timer = setTimeout(() => r('deadline'), deadlineMs)));
    const drained = new Promise<'drained'>((r) => {
      this.#drainCheck = () => {
        if (this.#sessions.size === 0 && this.#handshaking.size === 0) r('drained');
      };
      this.#drainCheck();
    });
    // A connection that has sent nothing (a port scan, a TCP health check) has no handshake to finish:
    // after a second's grace for a ClientHello on its way it is closed, so it does not hold the
    // drain up to the deadline or its handshake timeout (handshakeTimeoutMs, 10 s).
    const silent = (): Set<net.Socket> => new Set([...this.#handshaking].filter((s) => s.bytesRead === 0));
    let quiet = silent();
    const sweep = setInterval(() => {
      for (const s of quiet) if (s.bytesRead === 0) s.destroy();
      quiet = silent();
    }, SILENT_CONNECTION_GRACE_MS);
    sweep.unref();
    const outcome = await Promise.race([drained, deadline]);
    clearTimeout(timer);
    clearInterval(sweep);
    this.#drainCheck = undefined;
    this.#closed = true;
    const sessions = [...this.#sessions.keys()];
    if (outcome === 'deadline') {
      this.#log.warn(
        { sessions: sessions.length, tunnels: this.#connecting + this.#tunnels.size, handshakes: this.#handshaking.size },
        'drain deadline reached, resetting remaining tunnels',
      );
      for (const t of this.#tunnels) t.socket.destroy();
      for (const s of sessions) s.destroy();
    }
    for (const socket of this.#sockets) socket.destroy();
    this.#guard.stop();
    await Promise.all(sessions.map((s) => new Promise<void>((r) => (s.closed || s.destroyed ? r() : s.once('close', () => r())))));
  }

  #onSession(session: http2.ServerHttp2Session, connectionWindow: number): void {
    const socket = session.socket as tls.TLSSocket;
    let certificate: X509Certificate | undefined;
    try {
      certificate = socket.getPeerX509Certificate();
    } catch (err) {
      // The connection died between the handshake and now.
      this.#log.debug({ err }, 'session gone before it started');
    }
    if (certificate === undefined) {
      // rejectUnauthorized makes this unreachable; refuse rather than trust it.
      session.destroy(new HboneError('ERR_HBONE_TLS', 'client presented no certificate'), NGHTTP2_INADEQUATE_SECURITY);
      return;
    }
    const peer: HbonePeer = {
      identity: identitiesFromCertificate(certificate)[0],
      certificate,
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
    };
    const accepted = this.#o.trustDomains ?? [this.#tls.identity.trustDomain];
    if (peer.identity === undefined || !accepted.includes(peer.identity.trustDomain)) {
      const why = peer.identity === undefined
        ? `client certificate has no SPIFFE identity (subjectAltName: ${certificate.subjectAltName ?? 'none'})`
        : `client identity ${peer.identity.toString()} is not in trust domain ${accepted.join(', ')}`;
      this.#log.warn({ src: `${peer.remoteAddress}:${peer.remotePort}` }, `connection failed: ${why}`);
      session.goaway(NGHTTP2_INADEQUATE_SECURITY, 0, Buffer.from(why));
      session.destroy();
      return;
    }
    const budget = this.#budget.session(`${peer.remoteAddress}:${peer.remotePort}`, 'inbound');
    this.#sessions.set(session, { peer, src: peer.identity.toString(), budget });
    session.once('close', () => {
      this.#sessions.delete(session);
      this.#drainCheck?.();
    });
    this.#guard.addSession(session, budget);
    session.on('error', (err: Error) => this.#log.debug({ err, src: peer.identity?.toString() }, 'session error'));
    session.setLocalWindowSize(connectionWindow);
    if (this.#closing !== undefined) session.close();
  }

  // One shared listener: per-stream closures cost memory on every idle tunnel.
  readonly #onStreamError = (err: Error): void => this.#log.debug({ err }, 'stream error');

  #onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', this.#onStreamError);
    void this.#admit(stream, headers);
  }

  /**
   * Checks the request, authorizes it and connects the upstream, then runs the tunnel; answers
   * 400/401/503 (or authorize's status) itself. Never rejects: its caller does not wait for it, and an
   * unexpected throw (a hook answering a shape its type forbids) answers 500 instead of becoming an
   * unhandled rejection, which would exit the process.
   */
  async #admit(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    const log = this.#log;
    let src: string | undefined;
    let dst: string | undefined;
    let upstream: Duplex | undefined;
    try {
      const state = this.#sessions.get(stream.session as http2.ServerHttp2Session);
      if (state === undefined) {
        stream.close(NGHTTP2_INADEQUATE_SECURITY);
        return;
      }
      const peer = state.peer;
      src = state.src;
      const overBudget = state.budget.admit();
      if (overBudget !== undefined) {
        log.debug({ src, peer: state.budget.peer }, overBudget.message);
        return refuse(stream, 503);
      }
      // Counted from now: what a client sends before the 200 waits unread while the upstream connects.
      state.budget.track(stream);
      const method = headers[HTTP2_HEADER_METHOD];
      const authority = headers[HTTP2_HEADER_AUTHORITY];
      if (method !== 'CONNECT') {
        log.warn({ src, method }, 'connection failed: method is not CONNECT');
        return refuse(stream, 400);
      }
      dst = typeof authority === 'string' ? authority : undefined;
      const target = parseAuthority(dst);
      if (target === undefined || !this.#serves(target, src, dst)) {
        log.warn({ src, authority }, 'connection failed: authority is not an IP:port this server serves');
        return refuse(stream, 400);
      }
      const parsed = parseRequestHeaders(headers);
      const authorize = this.#o.authorize;
      if (authorize !== undefined) {
        // unknown, not HboneAuthorizeResult: a JS (or `any`-typed) hook can answer anything.
        let verdict: unknown = false;
        try {
          const v: unknown = authorize(peer, target, parsed);
          // A synchronous verdict costs no event-loop turn.
          verdict = typeof v === 'boolean' ? v : isThenable(v) ? await v : v;
        } catch (err) {
          log.error({ err, src, dst }, 'authorize hook threw; denying');
        }
        // Fail closed: only exactly true or { allow: true } admits; a truthy `allow` that is not true does not.
        if (verdict !== true && !(typeof verdict === 'object' && verdict !== null && (verdict as { allow?: unknown }).allow === true)) {
          return this.#refused(stream, verdict, src, dst);
        }
      }
      if (stream.closed || stream.destroyed) return;
      const ctx = new ConnectContext(peer, parsed, stream, dst!);
      this.#connecting++;
      try {
        upstream = await this.#o.connect(target, ctx);
      } catch (err) {
        log.warn({ err, src, dst }, 'connection failed: upstream connect');
        return refuse(stream, 503);
      } finally {
        this.#connecting--;
        ctx.settled();
      }
      if (stream.closed || stream.destroyed) {
        upstream.destroy();
        return;
      }
      log.debug({ src, dst }, 'handling new stream');
      // Peer, target and headers stay with an idle tunnel only when someone will read them at its end.
      const report = this.#o.onTunnelClosed === undefined ? undefined : { peer, target, headers: parsed, started: performance.now() };
      const tunnel = new ServerTunnel(stream, upstream, this.#onTunnelClosed, report);
      this.#tunnels.add(tunnel);
      stream.respond(OK_HEADERS, OK_OPTIONS);
      tunnel.start();
    } catch (err) {
      log.error({ err, src, dst }, 'connection failed: admitting the stream threw; answering 500');
      if (stream.headersSent) stream.close(NGHTTP2_INTERNAL_ERROR);
      else refuse(stream, 500);
      if (typeof upstream?.destroy === 'function') upstream.destroy();
    }
  }

  /** `validateTarget`'s answer; a throw counts as false (400), like authorize's counts as a denial. */
  #serves(target: HboneTarget, src: string | undefined, dst: string | undefined): boolean {
    const validate = this.#o.validateTarget;
    if (validate === undefined) return true;
    try {
      return validate(target) === true;
    } catch (err) {
      this.#log.error({ err, src, dst }, 'validateTarget hook threw; refusing the target');
      return false;
    }
  }

  /**
   * Answers a CONNECT `authorize` did not admit: 401 for false, the status of an HboneRefusal
   * (`allow === false`), and 401 for anything else, logged as an error because the hook is broken.
   */
  #refused(stream: http2.ServerHttp2Stream, verdict: unknown, src: string | undefined, dst: string | undefined): undefined {
    let refusal: HboneRefusal | undefined;
    if (typeof verdict === 'object' && verdict !== null && (verdict as { allow?: unknown }).allow === false) refusal = verdict as HboneRefusal;
    else if (verdict !== false) {
      this.#log.error({ src, dst }, `authorize hook answered ${describeVerdict(verdict)}, not true, false or { allow: true | false }; denying (401)`);
    }
    const reason = refusal?.reason;
    let status = refusal?.status ?? 401;
    if (!Number.isInteger(status) || status < 400 || status > 599) {
      this.#log.error({ src, dst, status, reason }, `authorize hook refused with status ${String(status)}, not 400-599; denying (401)`);
      status = 401;
    }
    if (status === 401) this.#log.warn({ src, dst, reason }, 'connection failed: denied by policy');
    else this.#log.warn({ src, dst, status, reason }, 'connection failed: refused by authorize');
    return refuse(stream, status);
  }

  /** Both sides of a tunnel closed; one function shared by every tunnel. */
  readonly #onTunnelClosed = (t: ServerTunnel, result: BridgeResult): void => {
    this.#tunnels.delete(t);
    releaseTunnel(t.tunnel);
    const r = t.report;
    if (r !== undefined) this.#o.onTunnelClosed?.({ ...result, peer: r.peer, target: r.target, headers: r.headers, durationMs: performance.now() - r.started });
  };
}

// Node copies response headers and options, so one object of each serves every tunnel. No `date`
// header (Node adds one unless `sendDate` is false): ztunnel's 200 has none, and leaving it out, with
// `endStream` already set in the options Node copies, is ~2 µs less CPU per open (measured).
const OK_HEADERS = { ':status': 200 };
const OK_OPTIONS = { endStream: false, sendDate: false };
const BRIDGE_MAX_BUFFERED = 256 * 1024;
/** How long a connection that has sent no byte may hold up a drain (see #drain). */
const SILENT_CONNECTION_GRACE_MS = 1000;

interface TunnelReport {
  peer: HbonePeer;
  target: HboneTarget;
  headers: HboneRequestHeaders;
  /** When the 200 went out (durationMs counts from here). */
  started: number;
}

/** An admitted stream and its upstream: the bridge between them is the tunnel's only record. */
class ServerTunnel extends Bridge {
  constructor(
    stream: http2.ServerHttp2Stream,
    upstream: Duplex,
    readonly onClosed: (t: ServerTunnel, r: BridgeResult) => void,
    readonly report: TunnelReport | undefined,
  ) {
    super(stream, upstream, BRIDGE_MAX_BUFFERED);
  }

  protected finished(r: BridgeResult): void {
    this.onClosed(this, r);
  }
}

/** The `connect` hook's context. */
class ConnectContext implements HboneConnectContext {
  readonly #stream: http2.ServerHttp2Stream;
  readonly #dst: string;
  #abort: { controller: AbortController; onClose: () => void } | undefined = undefined;
  #pending = true;

  constructor(
    readonly peer: HbonePeer,
    readonly headers: HboneRequestHeaders,
    stream: http2.ServerHttp2Stream,
    dst: string,
  ) {
    this.#stream = stream;
    this.#dst = dst;
  }

  // Made on first use: an AbortController and a stream listener per tunnel are measurable on the
  // open path, and most upstream connects finish long before a client gives up.
  get signal(): AbortSignal {
    if (this.#abort === undefined) {
      const controller = new AbortController();
      const onClose = (): void => controller.abort(new HboneError('ERR_HBONE_ABORTED', `client closed stream to ${this.#dst} before the upstream connected`));
      this.#abort = { controller, onClose };
      if (this.#stream.closed || this.#stream.destroyed) onClose();
      else if (this.#pending) this.#stream.once('close', onClose);
    }
    return this.#abort.controller.signal;
  }

  /** The upstream connect settled: a stream close no longer aborts it. */
  settled(): void {
    this.#pending = false;
    if (this.#abort !== undefined) this.#stream.off('close', this.#abort.onClose);
  }
}

/**
 * The TCP socket a server-side TLSSocket wraps, kept as `_parent` (not in Node's typings): the one
 * 'connection' saw, also once the TLS socket is destroyed.
 */
function parentOf(socket: tls.TLSSocket): net.Socket {
  return ((socket as tls.TLSSocket & { _parent?: net.Socket })._parent ?? socket) as net.Socket;
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

/** A broken verdict for the log, briefly: `undefined`, `"true"`, `{ allow: "yes" }`, `{ allow: an object }`. */
function describeVerdict(v: unknown): string {
  if (typeof v !== 'object' || v === null) return describeValue(v);
  return 'allow' in v ? `{ allow: ${describeValue(v.allow)} }` : 'an object without allow';
}

function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (v === null) return 'null';
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'object') return 'an object';
  return String(v);
}

function refuse(stream: http2.ServerHttp2Stream, status: number): undefined {
  if (stream.closed || stream.destroyed) return undefined;
  stream.respond({ ':status': status }, { endStream: true });
  // The request side of a CONNECT never ends by itself; tell the client to stop (RFC 9113 §8.1).
  stream.close(NGHTTP2_NO_ERROR);
  return undefined;
}
