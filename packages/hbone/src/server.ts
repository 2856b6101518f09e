import type { X509Certificate } from 'node:crypto';
import type * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { type HboneTarget, parseAuthority } from './authority.js';
import { Bridge, type BridgeResult } from './bridge.js';
import { type HboneRequestHeaders, connectHeaders, parseRequestHeaders } from './headers.js';
import { SpiffeId, identitiesFromCertificate } from './identity.js';
import { type HboneLogger, silentLogger } from './logger.js';
import { type HboneTlsOptions, type ResolvedTls, resolveTls } from './tls-options.js';
import { H2_ERROR_CODES, HboneError } from './errors.js';
import { type BudgetSession, type BufferBudget, type BufferBudgetOptions, releaseTunnel, resolveBudget } from './buffer-budget.js';
import { InboundGuard } from './inbound-guard.js';
import { MAX_WINDOW } from './h2/frames.js';
import { type ConnectRequest, H2Session, type H2SessionOptions, type Tunnel } from './h2/session.js';

const { INADEQUATE_SECURITY, INTERNAL_ERROR } = H2_ERROR_CODES;
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
   * Per-stream receive window, default 1 MiB (ztunnel: 4 MiB): the most a stream whose reader stopped
   * holds (what it does not read is not credited back). 1 MiB carries as much as 4 MiB here (DESIGN.md).
   */
  streamWindowSize?: number;
  /**
   * Per-connection receive window, default 16 MiB (as ztunnel): returned only as tunnels read, so it also
   * bounds what all of a session's stopped streams hold together.
   */
  connectionWindowSize?: number;
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

/** What every session of a server is made with (`onConnect` is the server's one shared handler); onClose is per session. */
type SessionOptions = Omit<H2SessionOptions, 'onClose'>;

class Server implements HboneServer {
  readonly #o: HboneServerOptions;
  readonly #log: HboneLogger;
  #tls: ResolvedTls;
  readonly #server: tls.Server;
  readonly #sessionOptions: SessionOptions;
  readonly #sockets = new Set<net.Socket>();
  /** `ip:port` of each accepted TCP socket, read when it was accepted. */
  readonly #sources = new WeakMap<net.Socket, string>();
  /** Authenticated sessions; a session refused after the handshake is never added. */
  readonly #sessions = new Map<H2Session, SessionState>();
  /** Tunnels whose upstream is connected. */
  readonly #tunnels = new Set<ServerTunnel>();
  /** Streams admitted and waiting for their upstream connect. */
  #connecting = 0;
  /** Accepted TCP sockets whose TLS handshake has not finished: close() lets them finish and sends them GOAWAY. */
  readonly #handshaking = new Set<net.Socket>();
  #closing: Promise<void> | undefined;
  #closed = false;
  /** While close() drains (and while it waits for the last sessions to close): resolves it once no session and no handshake is left. */
  #drainCheck: (() => void) | undefined;
  readonly #budget: BufferBudget;
  readonly #guard: InboundGuard;

  constructor(o: HboneServerOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger;
    this.#tls = resolveTls(o.tls);
    this.#budget = resolveBudget(o.bufferBudget, this.#log);
    this.#guard = new InboundGuard(this.#budget, o.idleSessionTimeoutMs ?? 600_000, this.#log);
    this.#sessionOptions = {
      role: 'server',
      onConnect: this.#onConnect,
      maxConcurrentStreams: checked('maxConcurrentStreams', o.maxConcurrentStreams ?? 200),
      streamWindow: checked('streamWindowSize', o.streamWindowSize ?? MiB),
      connectionWindow: checked('connectionWindowSize', o.connectionWindowSize ?? 16 * MiB),
    };
    this.#server = tls.createServer({
      ...this.#secureOptions(this.#tls),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
      honorCipherOrder: true,
      handshakeTimeout: o.handshakeTimeoutMs ?? 10_000,
    });
    this.#guard.attach(this.#server);
    this.#server.on('connection', (socket: net.Socket) => {
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
    this.#server.on('secureConnection', (socket: tls.TLSSocket) => this.#onSecureConnection(socket));
    this.#server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      if (this.#guard.wasRefused(socket)) return;
      this.#log.warn({ err, src: this.#sourceOf(socket), code: (err as { code?: string }).code }, 'connection failed: TLS handshake');
    });
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
    this.#server.emit('connection', socket);
  }

  listen(o: net.ListenOptions): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.#server.once('error', onError);
      this.#server.listen(o, () => {
        this.#server.off('error', onError);
        resolve(this.#server.address() as net.AddressInfo);
      });
    });
  }

  setTls(t: HboneTlsOptions): void {
    const resolved = resolveTls(t);
    this.#server.setSecureContext(this.#secureOptions(resolved));
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
    if (this.#server.listening) this.#server.close();
    for (const s of this.#sessions.keys()) void s.close();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadline'>((r) => (timer = setTimeout(() => r('deadline'), deadlineMs)));
    const drained = this.#untilDrained().then(() => 'drained' as const);
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
    this.#closed = true;
    if (outcome === 'deadline') {
      this.#log.warn(
        { sessions: this.#sessions.size, tunnels: this.#connecting + this.#tunnels.size, handshakes: this.#handshaking.size },
        'drain deadline reached, resetting remaining tunnels',
      );
      for (const t of this.#tunnels) t.socket.destroy();
      for (const s of this.#sessions.keys()) s.destroy();
    }
    for (const socket of this.#sockets) socket.destroy();
    this.#guard.stop();
    // Destroyed sockets report their close on a later turn: resolve once every session has seen its own.
    await this.#untilDrained();
    this.#drainCheck = undefined;
  }

  /** Resolves once no session and no handshake is left. */
  #untilDrained(): Promise<void> {
    return new Promise((resolve) => {
      this.#drainCheck = () => {
        if (this.#sessions.size === 0 && this.#handshaking.size === 0) resolve();
      };
      this.#drainCheck();
    });
  }

  /** A TLS handshake finished: HTTP/2 on it, for an authenticated client, else refused. */
  #onSecureConnection(socket: tls.TLSSocket): void {
    try {
      if (socket.alpnProtocol !== 'h2') {
        // A client that offered no ALPN at all (one offering only others fails the handshake itself).
        this.#log.warn({ src: this.#sourceOf(socket), alpn: socket.alpnProtocol }, 'connection failed: ALPN is not h2');
        socket.destroy();
        return;
      }
      this.#startSession(socket);
    } finally {
      // After the session is registered, so a drain waiting for this handshake then waits for the session.
      this.#handshakeEnded(parentOf(socket));
    }
  }

  #startSession(socket: tls.TLSSocket): void {
    if (socket.destroyed) {
      this.#log.debug({ src: this.#sourceOf(socket) }, 'session gone before it started');
      return;
    }
    // Made before the checks below: a refusal is a GOAWAY, which follows the server's SETTINGS.
    const session: H2Session = new H2Session(socket, { ...this.#sessionOptions, onClose: (err) => this.#sessionClosed(session, err) });
    const certificate = socket.getPeerX509Certificate();
    const peer: HbonePeer | undefined =
      certificate === undefined
        ? undefined
        : { identity: identitiesFromCertificate(certificate)[0], certificate, remoteAddress: socket.remoteAddress ?? '', remotePort: socket.remotePort ?? 0 };
    const identity = peer?.identity;
    const accepted = this.#o.trustDomains ?? [this.#tls.identity.trustDomain];
    if (peer === undefined || identity === undefined || !accepted.includes(identity.trustDomain)) {
      const why =
        peer === undefined
          ? 'client presented no certificate' // rejectUnauthorized makes this unreachable; refuse rather than trust it
          : identity === undefined
            ? `client certificate has no SPIFFE identity (subjectAltName: ${peer.certificate.subjectAltName ?? 'none'})`
            : `client identity ${identity.toString()} is not in trust domain ${accepted.join(', ')}`;
      this.#log.warn({ src: this.#sourceOf(socket) }, `connection failed: ${why}`);
      session.terminate(INADEQUATE_SECURITY, why);
      return;
    }
    const budget = this.#budget.session(`${peer.remoteAddress}:${peer.remotePort}`, 'inbound');
    this.#sessions.set(session, { peer, src: identity.toString(), budget });
    this.#guard.addSession(session, budget);
    if (this.#closing !== undefined) void session.close();
  }

  #sessionClosed(session: H2Session, err: HboneError | undefined): void {
    const state = this.#sessions.get(session);
    if (err !== undefined) this.#log.debug({ err, src: state?.src }, 'session error');
    if (state === undefined) return;
    this.#sessions.delete(session);
    this.#guard.sessionClosed(session);
    this.#drainCheck?.();
  }

  // Shared by every tunnel: a closure per stream costs memory on every idle tunnel.
  readonly #onStreamError = (err: Error): void => this.#log.debug({ err }, 'stream error');

  /** H2Session's onConnect for every session: a new CONNECT stream. */
  readonly #onConnect = (tunnel: Tunnel, request: ConnectRequest): void => {
    tunnel.on('error', this.#onStreamError);
    void this.#admit(tunnel, request);
  };

  /**
   * Checks the request, authorizes it and connects the upstream, then runs the tunnel; answers
   * 400/401/503 (or authorize's status) itself. Never rejects: its caller does not wait for it, and an
   * unexpected throw (a hook answering a shape its type forbids) answers 500 instead of becoming an
   * unhandled rejection, which would exit the process. The session has already answered what is not a
   * well-formed CONNECT (405 for another method, RST_STREAM PROTOCOL_ERROR for a malformed request).
   */
  async #admit(tunnel: Tunnel, request: ConnectRequest): Promise<void> {
    const log = this.#log;
    let src: string | undefined;
    const dst = request.authority;
    let upstream: Duplex | undefined;
    let responded = false;
    try {
      const state = this.#sessions.get(tunnel.session);
      if (state === undefined) {
        // Only authenticated sessions are registered, and a refused one reads no frames: fail closed all the same.
        tunnel.close(INADEQUATE_SECURITY);
        return;
      }
      const peer = state.peer;
      src = state.src;
      const overBudget = state.budget.admit();
      if (overBudget !== undefined) {
        log.debug({ src, peer: state.budget.peer }, overBudget.message);
        return tunnel.respond(503);
      }
      // Counted from now: what a client sends before the 200 waits unread while the upstream connects.
      state.budget.track(tunnel);
      const target = parseAuthority(dst);
      if (target === undefined || !this.#serves(target, src, dst)) {
        log.warn({ src, authority: dst }, 'connection failed: authority is not an IP:port this server serves');
        return tunnel.respond(400);
      }
      const parsed = parseRequestHeaders(connectHeaders(dst, request.headers));
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
          return this.#refused(tunnel, verdict, src, dst);
        }
      }
      if (tunnel.destroyed) return;
      const ctx = new ConnectContext(peer, parsed, tunnel, dst);
      this.#connecting++;
      try {
        upstream = await this.#o.connect(target, ctx);
      } catch (err) {
        log.warn({ err, src, dst }, 'connection failed: upstream connect');
        return tunnel.respond(503);
      } finally {
        this.#connecting--;
        ctx.settled();
      }
      if (tunnel.destroyed) {
        upstream.destroy();
        return;
      }
      log.debug({ src, dst }, 'handling new stream');
      // Peer, target and headers stay with an idle tunnel only when someone will read them at its end.
      const report = this.#o.onTunnelClosed === undefined ? undefined : { peer, target, headers: parsed, started: performance.now() };
      const bridged = new ServerTunnel(tunnel, upstream, this.#onTunnelClosed, report);
      this.#tunnels.add(bridged);
      tunnel.respond(200);
      responded = true;
      bridged.start();
    } catch (err) {
      log.error({ err, src, dst }, 'connection failed: admitting the stream threw; answering 500');
      if (responded) tunnel.close(INTERNAL_ERROR);
      else tunnel.respond(500);
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
  #refused(tunnel: Tunnel, verdict: unknown, src: string | undefined, dst: string | undefined): void {
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
    tunnel.respond(status);
  }

  /** Both sides of a tunnel closed; one function shared by every tunnel. */
  readonly #onTunnelClosed = (t: ServerTunnel, result: BridgeResult): void => {
    this.#tunnels.delete(t);
    releaseTunnel(t.tunnel);
    const r = t.report;
    if (r !== undefined) this.#o.onTunnelClosed?.({ ...result, peer: r.peer, target: r.target, headers: r.headers, durationMs: performance.now() - r.started });
  };
}

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
    tunnel: Tunnel,
    upstream: Duplex,
    readonly onClosed: (t: ServerTunnel, r: BridgeResult) => void,
    readonly report: TunnelReport | undefined,
  ) {
    super(tunnel, upstream, BRIDGE_MAX_BUFFERED);
  }

  protected finished(r: BridgeResult): void {
    this.onClosed(this, r);
  }
}

/** The `connect` hook's context. */
class ConnectContext implements HboneConnectContext {
  readonly #tunnel: Tunnel;
  readonly #dst: string;
  #abort: { controller: AbortController; onClose: () => void } | undefined = undefined;
  #pending = true;

  constructor(
    readonly peer: HbonePeer,
    readonly headers: HboneRequestHeaders,
    tunnel: Tunnel,
    dst: string,
  ) {
    this.#tunnel = tunnel;
    this.#dst = dst;
  }

  // Made on first use: an AbortController and a stream listener per tunnel are measurable on the
  // open path, and most upstream connects finish long before a client gives up.
  get signal(): AbortSignal {
    if (this.#abort === undefined) {
      const controller = new AbortController();
      const onClose = (): void => controller.abort(new HboneError('ERR_HBONE_ABORTED', `client closed stream to ${this.#dst} before the upstream connected`));
      this.#abort = { controller, onClose };
      if (this.#tunnel.destroyed) onClose();
      else if (this.#pending) this.#tunnel.once('close', onClose);
    }
    return this.#abort.controller.signal;
  }

  /** The upstream connect settled: a stream close no longer aborts it. */
  settled(): void {
    this.#pending = false;
    if (this.#abort !== undefined) this.#tunnel.off('close', this.#abort.onClose);
  }
}

/**
 * The TCP socket a server-side TLSSocket wraps, kept as `_parent` (not in Node's typings): the one
 * 'connection' saw, also once the TLS socket is destroyed.
 */
function parentOf(socket: tls.TLSSocket): net.Socket {
  return ((socket as tls.TLSSocket & { _parent?: net.Socket })._parent ?? socket) as net.Socket;
}

/** A session setting, checked when the server is made rather than failing every connection. */
function checked(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1 || v > MAX_WINDOW) throw new HboneError('ERR_HBONE_CONFIG', `${name} ${v} outside 1..2^31-1`);
  return v;
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
