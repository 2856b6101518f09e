import type * as net from 'node:net';
import type * as tls from 'node:tls';
import type { BudgetSession, BufferBudget } from './buffer-budget.js';
import type { H2Session } from './h2/session.js';
import type { HboneLogger } from './logger.js';

/** Refusals are logged at most this often (with the count since), so a handshake flood is not a log flood. */
const REFUSAL_LOG_EVERY_MS = 10_000;

/**
 * What an HBONE server spends on peers before and between tunnels: TLS handshakes in progress (at most
 * the budget's `maxPendingHandshakes`, shared by every server on it; more connections are closed at
 * once) and authenticated sessions without streams (closed with GOAWAY after `idleTimeoutMs`).
 */
export class InboundGuard {
  readonly #budget: BufferBudget;
  readonly #idleTimeoutMs: number;
  readonly #log: HboneLogger;
  /** Raw sockets whose handshake counts against the budget. */
  readonly #pending = new Set<net.Socket>();
  readonly #refused = new WeakSet<net.Socket>();
  readonly #sessions = new Map<H2Session, BudgetSession>();
  #idleTimer: NodeJS.Timeout | undefined;
  #refusedSinceLog = 0;
  #lastRefusalLog = -Infinity;

  constructor(budget: BufferBudget, idleTimeoutMs: number, log: HboneLogger) {
    this.#budget = budget;
    this.#idleTimeoutMs = idleTimeoutMs;
    this.#log = log;
  }

  /** Counts handshakes on `server` (before its TLS listener sees a connection) and releases them once done. */
  attach(server: tls.Server): void {
    server.prependListener('connection', (socket: net.Socket) => this.#onConnection(socket));
    server.on('secureConnection', (socket: tls.TLSSocket) => this.#handshakeDone(parentOf(socket)));
  }

  /** The connection was closed by the handshake cap (its TLS error is not worth a log line of its own). */
  wasRefused(socket: tls.TLSSocket): boolean {
    return this.#refused.has(parentOf(socket));
  }

  /** An authenticated session: closed once it has had no tunnel for the idle timeout. Call sessionClosed() when it is gone. */
  addSession(session: H2Session, account: BudgetSession): void {
    this.#sessions.set(session, account);
    if (this.#idleTimer === undefined) {
      this.#idleTimer = setInterval(() => this.#closeIdle(), Math.max(10, Math.min(30_000, this.#idleTimeoutMs / 4)));
      this.#idleTimer.unref();
    }
  }

  /** The session closed: its budget account is closed with it. */
  sessionClosed(session: H2Session): void {
    const account = this.#sessions.get(session);
    if (account === undefined) return;
    this.#sessions.delete(session);
    account.close();
  }

  stop(): void {
    clearInterval(this.#idleTimer);
    this.#idleTimer = undefined;
  }

  #onConnection(socket: net.Socket): void {
    if (this.#budget.handshakeStarted()) {
      this.#pending.add(socket);
      socket.once('close', () => this.#handshakeDone(socket));
      return;
    }
    this.#refused.add(socket);
    this.#refusedSinceLog++;
    const now = performance.now();
    if (now - this.#lastRefusalLog >= REFUSAL_LOG_EVERY_MS) {
      this.#log.warn(
        { src: `${socket.remoteAddress}:${socket.remotePort}`, refused: this.#refusedSinceLog, maxPendingHandshakes: this.#budget.maxPendingHandshakes },
        'connection refused: too many TLS handshakes in progress',
      );
      this.#lastRefusalLog = now;
      this.#refusedSinceLog = 0;
    }
    socket.destroy();
  }

  #handshakeDone(socket: net.Socket): void {
    if (this.#pending.delete(socket)) this.#budget.handshakeDone();
  }

  #closeIdle(): void {
    if (this.#sessions.size === 0) {
      this.stop();
      return;
    }
    const cutoff = performance.now() - this.#idleTimeoutMs;
    for (const [session, account] of this.#sessions) {
      if (account.tunnels.size > 0 || account.lastActive > cutoff || session.closed) continue;
      this.#log.debug({ peer: account.peer, idleTimeoutMs: this.#idleTimeoutMs }, 'hbone session idle, closing');
      // GOAWAY; with no stream open the connection closes at once, and the server's onClose calls sessionClosed().
      void session.close();
    }
  }
}

/**
 * The TCP socket a server-side TLSSocket wraps, kept as `_parent` (not in Node's typings); the handshake
 * was counted on it.
 */
function parentOf(socket: tls.TLSSocket): net.Socket {
  return ((socket as tls.TLSSocket & { _parent?: net.Socket })._parent ?? socket) as net.Socket;
}
