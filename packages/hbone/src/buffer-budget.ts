import type { Duplex } from 'node:stream';
import { bridgedPeer } from './bridge.js';
import { H2_ERROR_CODES, HboneError } from './errors.js';
import { type HboneLogger, silentLogger } from './logger.js';

const { ENHANCE_YOUR_CALM } = H2_ERROR_CODES;
const MiB = 1024 * 1024;

export interface BufferBudgetOptions {
  /** Bytes every tunnel under this budget may hold unread, together; past it the largest are reset. Default 256 MiB. */
  maxBytes?: number;
  /**
   * Bytes the tunnels of one HTTP/2 session may hold; past it that session's largest are reset. Default
   * 12 MiB: ¾ of the sessions' default 16 MiB connection window, so tunnels whose reader stopped are
   * reset before they hold all of it, which would stall every other tunnel of their session (window is
   * given back a quarter at a time). Keep it at most ¾ of connectionWindowSize when changing either.
   */
  maxSessionBytes?: number;
  /** TLS handshakes in progress at once on every server sharing this budget; more connections are closed at once. Default 512. */
  maxPendingHandshakes?: number;
  /** How often held bytes are measured while tunnels are open. Default 100 ms. */
  checkIntervalMs?: number;
  logger?: HboneLogger;
}

export interface BufferBudgetStats {
  /** Streams tracked: tunnels both directions, and inbound CONNECTs waiting for their upstream. */
  tunnels: number;
  /** Tunnels that held bytes at the last check, and those bytes. */
  holdingTunnels: number;
  heldBytes: number;
  /** Sessions over `maxSessionBytes` at the last check. */
  sessionsOverBudget: number;
  /** The total was over `maxBytes` at the last check: every session refuses new streams. */
  overBudget: boolean;
  /** Tunnels reset since start (RST_STREAM ENHANCE_YOUR_CALM), streams refused, TLS handshakes refused. */
  resets: number;
  refused: number;
  handshakesRefused: number;
  pendingHandshakes: number;
  limits: { maxBytes: number; maxSessionBytes: number; maxPendingHandshakes: number };
}

/** An HTTP/2 stream's reset; the budget only ever holds HBONE tunnels. */
type Tunnel = Duplex & { close(code?: number): void; readonly closed: boolean };
const kAccount = Symbol('hbone.budgetAccount');
type Tracked = Tunnel & { [kAccount]?: BudgetSession | undefined };

/** Chunks looked at per queue and check; the rest of a longer queue are assumed to keep as much each as those seen did. */
const MAX_CHUNKS_SCANNED = 256;
/** JS heap per queued chunk (its Buffer object and queue slot): what one-byte DATA frames cost beyond their byte. */
const CHUNK_OVERHEAD = 128;

interface StreamInternals {
  _readableState?: { buffer?: unknown; bufferIndex?: number };
  _writableState?: { buffered?: { chunk?: unknown }[]; bufferedIndex?: number };
}

/**
 * What a tunnel holds in memory: unread bytes of its stream (Node hands every DATA frame to JS as it
 * arrives and consumes the connection window at once, so only the stream window bounds them) and
 * what the bridge to its socket has queued either way. Node keeps a received DATA frame as a slice of
 * the whole buffer the session read it in, and as a JS object of its own, so a queue of small frames
 * keeps far more alive than its length: each queue counts the larger of its length and the buffers
 * its chunks keep alive (`seen`: each buffer once per check, whichever tunnel holds it), plus a heap
 * cost per chunk.
 */
function heldBy(s: Duplex, seen: Set<ArrayBufferLike>): number {
  let n = queued(s, seen);
  const peer = bridgedPeer(s);
  if (peer !== undefined) n += queued(peer, seen);
  return n;
}

function queued(d: Duplex, seen: Set<ArrayBufferLike>): number {
  const readable = d.readableLength;
  const writable = d.writableLength;
  if (readable === 0 && writable === 0) return 0;
  const { _readableState: r, _writableState: w } = d as Duplex & StreamInternals;
  let n = 0;
  if (readable > 0) n += r === undefined ? readable : Math.max(readable, readableKept(r.buffer, r.bufferIndex ?? 0, seen));
  if (writable > 0) n += w?.buffered === undefined ? writable : Math.max(writable, arrayKept(w.buffered, w.bufferedIndex ?? 0, seen, true));
  return n;
}

/** Node 20.x keeps a readable's chunks in an array from `bufferIndex` (newer) or a linked list (older). */
function readableKept(buffer: unknown, start: number, seen: Set<ArrayBufferLike>): number {
  if (Array.isArray(buffer)) return arrayKept(buffer, start, seen, false);
  const total = (buffer as { length?: number } | undefined)?.length ?? 0;
  let node = (buffer as { head?: { data: unknown; next: unknown } | null } | undefined)?.head;
  let kept = 0;
  let scanned = 0;
  while (node && scanned < MAX_CHUNKS_SCANNED) {
    kept += keptBy(node.data, seen);
    scanned++;
    node = node.next as typeof node;
  }
  return extrapolate(kept, scanned, total);
}

function arrayKept(list: unknown[], start: number, seen: Set<ArrayBufferLike>, entries: boolean): number {
  let kept = 0;
  const end = Math.min(list.length, start + MAX_CHUNKS_SCANNED);
  for (let i = start; i < end; i++) {
    const item = list[i];
    kept += keptBy(entries ? (item as { chunk?: unknown } | undefined)?.chunk : item, seen);
  }
  return extrapolate(kept, end - start, list.length - start);
}

function keptBy(chunk: unknown, seen: Set<ArrayBufferLike>): number {
  const b = backing(chunk);
  if (b === undefined || seen.has(b)) return CHUNK_OVERHEAD;
  seen.add(b);
  return CHUNK_OVERHEAD + b.byteLength;
}

function extrapolate(kept: number, scanned: number, total: number): number {
  return scanned === 0 || total <= scanned ? kept : kept + Math.ceil((kept / scanned) * (total - scanned));
}

function backing(chunk: unknown): ArrayBufferLike | undefined {
  return chunk instanceof Uint8Array ? chunk.buffer : undefined;
}

/**
 * Bounds the memory that tunnels whose consumer stopped reading can make a process hold: per HTTP/2
 * session and for everything sharing the budget (ztunnel: one per process, for every pod's server
 * and client). Measured every `checkIntervalMs`; over a limit, the tunnels holding the most are reset
 * (RST_STREAM ENHANCE_YOUR_CALM, which the bridge turns into a TCP reset) until the holder is back under
 * three quarters of it, and until the next check finds it within the limit the session (or, over
 * `maxBytes`, every session) refuses new streams. Flowing tunnels hold next to nothing and are not touched.
 */
export class BufferBudget {
  readonly maxBytes: number;
  readonly maxSessionBytes: number;
  readonly maxPendingHandshakes: number;
  readonly #intervalMs: number;
  readonly #log: HboneLogger;
  readonly #sessions = new Set<BudgetSession>();
  #tunnels = 0;
  #timer: NodeJS.Timeout | undefined;
  #over = false;
  #held = 0;
  #holding = 0;
  #sessionsOver = 0;
  #resets = 0;
  #refused = 0;
  #handshakes = 0;
  #handshakesRefused = 0;

  constructor(o: BufferBudgetOptions = {}) {
    this.maxBytes = positive(o.maxBytes ?? 256 * MiB, 'maxBytes');
    this.maxSessionBytes = positive(o.maxSessionBytes ?? 12 * MiB, 'maxSessionBytes');
    this.maxPendingHandshakes = positive(o.maxPendingHandshakes ?? 512, 'maxPendingHandshakes');
    this.#intervalMs = positive(o.checkIntervalMs ?? 100, 'checkIntervalMs');
    this.#log = o.logger ?? silentLogger;
  }

  stats(): BufferBudgetStats {
    return {
      tunnels: this.#tunnels,
      holdingTunnels: this.#holding,
      heldBytes: this.#held,
      sessionsOverBudget: this.#sessionsOver,
      overBudget: this.#over,
      resets: this.#resets,
      refused: this.#refused,
      handshakesRefused: this.#handshakesRefused,
      pendingHandshakes: this.#handshakes,
      limits: { maxBytes: this.maxBytes, maxSessionBytes: this.maxSessionBytes, maxPendingHandshakes: this.maxPendingHandshakes },
    };
  }

  /** An account for one HTTP/2 session; `peer` and `direction` name it in log lines. */
  session(peer: string, direction: 'inbound' | 'outbound'): BudgetSession {
    const s = new BudgetSession(this, peer, direction);
    this.#sessions.add(s);
    return s;
  }

  /** A TLS handshake starts; false (and counted) when too many are in progress. Pair a true with handshakeDone(). */
  handshakeStarted(): boolean {
    if (this.#handshakes >= this.maxPendingHandshakes) {
      this.#handshakesRefused++;
      return false;
    }
    this.#handshakes++;
    return true;
  }

  handshakeDone(): void {
    this.#handshakes--;
  }

  /** @internal */
  removeSession(s: BudgetSession): void {
    this.#sessions.delete(s);
  }

  /** @internal */
  tunnelAdded(): void {
    this.#tunnels++;
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.check(), this.#intervalMs);
      this.#timer.unref();
    }
  }

  /** @internal */
  tunnelRemoved(): void {
    this.#tunnels--;
  }

  /** @internal Why new streams are refused now, or undefined. */
  refusal(s: BudgetSession): string | undefined {
    if (this.#over) return `process holds ${this.#held} bytes in paused tunnels, over its budget of ${this.maxBytes}`;
    if (s.over) return `session holds ${s.held} bytes in paused tunnels, over its budget of ${this.maxSessionBytes}`;
    return undefined;
  }

  /** @internal */
  countRefused(): void {
    this.#refused++;
  }

  /** Measures now and sheds what is over (also run every `checkIntervalMs` while tunnels are open). */
  check(): void {
    if (this.#tunnels === 0) {
      clearInterval(this.#timer);
      this.#timer = undefined;
      this.#over = false;
      this.#held = 0;
      this.#holding = 0;
      this.#sessionsOver = 0;
      for (const s of this.#sessions) s.over = false;
      return;
    }
    let total = 0;
    let holding = 0;
    let sessionsOver = 0;
    const holders: Holder[] = [];
    const seen = new Set<ArrayBufferLike>();
    for (const s of this.#sessions) {
      let held = 0;
      const first = holders.length;
      for (const t of s.tunnels) {
        // A stream refused or failed before it became a tunnel is let go here, not by a listener of its own.
        if (t.destroyed) {
          releaseTunnel(t);
          continue;
        }
        const h = heldBy(t, seen);
        if (h === 0) continue;
        held += h;
        holders.push({ tunnel: t, session: s, held: h });
      }
      holding += holders.length - first;
      s.held = held;
      s.over = held > this.maxSessionBytes;
      if (s.over) {
        sessionsOver++;
        held -= this.#shed(holders.slice(first), held - (this.maxSessionBytes * 3) / 4, 'session');
      }
      total += held;
    }
    this.#over = total > this.maxBytes;
    if (this.#over) total -= this.#shed(holders, total - (this.maxBytes * 3) / 4, 'process');
    this.#held = total;
    this.#holding = holding;
    this.#sessionsOver = sessionsOver;
  }

  /** Resets the tunnels holding the most until `excess` bytes are released; returns the bytes released. */
  #shed(holders: Holder[], excess: number, scope: 'session' | 'process'): number {
    holders.sort((a, b) => b.held - a.held);
    let released = 0;
    for (const h of holders) {
      if (released >= excess) break;
      if (h.tunnel.destroyed) continue;
      released += h.held;
      h.session.held -= h.held;
      this.#resets++;
      this.#log.warn(
        {
          peer: h.session.peer,
          direction: h.session.direction,
          heldBytes: h.held,
          sessionBytes: h.session.held + h.held,
          scope,
          limit: scope === 'session' ? this.maxSessionBytes : this.maxBytes,
        },
        'tunnel reset: buffer budget exceeded',
      );
      // A stream both sides ended can still hold what its reader did not take: only destroying frees it.
      if (h.tunnel.closed) h.tunnel.destroy();
      else h.tunnel.close(ENHANCE_YOUR_CALM);
    }
    return released;
  }
}

interface Holder {
  tunnel: Tracked;
  session: BudgetSession;
  held: number;
}

/** One HTTP/2 session's tunnels under a BufferBudget. */
export class BudgetSession {
  readonly tunnels = new Set<Tracked>();
  /** Bytes its tunnels held at the last check. */
  held = 0;
  /** Over `maxSessionBytes` at the last check: refuses new streams. */
  over = false;
  /** When a stream was last admitted or a tunnel closed (ms, monotonic), for idle-session timeouts. */
  lastActive = performance.now();
  #closed = false;

  constructor(
    readonly budget: BufferBudget,
    readonly peer: string,
    readonly direction: 'inbound' | 'outbound',
  ) {}

  /** Checks a new stream against the budget; undefined to go ahead, else why (logged, counted). */
  admit(): HboneError | undefined {
    this.lastActive = performance.now();
    const why = this.budget.refusal(this);
    if (why === undefined) return undefined;
    this.budget.countRefused();
    return new HboneError('ERR_HBONE_BUFFER_BUDGET', `tunnel refused: buffer budget exceeded (${this.direction} ${this.peer}): ${why}`);
  }

  /** Counts a tunnel until releaseTunnel() (a session already closed has no tunnels left to count). */
  track(t: Tunnel): void {
    const tracked = t as Tracked;
    if (this.#closed || tracked[kAccount] !== undefined) return;
    tracked[kAccount] = this;
    this.tunnels.add(tracked);
    this.budget.tunnelAdded();
  }

  /** The session is gone: its tunnels are no longer counted. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.tunnels) t[kAccount] = undefined;
    for (let i = 0; i < this.tunnels.size; i++) this.budget.tunnelRemoved();
    this.tunnels.clear();
    this.budget.removeSession(this);
  }
}

/** The tunnel closed: stop counting it (a no-op for one never tracked). */
export function releaseTunnel(t: Duplex): void {
  const tracked = t as Tracked;
  const account = tracked[kAccount];
  if (account === undefined) return;
  tracked[kAccount] = undefined;
  account.lastActive = performance.now();
  if (account.tunnels.delete(tracked)) account.budget.tunnelRemoved();
}

/** The budget an HboneServer/HboneClient uses: the one given, one made from the options, or the defaults. */
export function resolveBudget(b: BufferBudget | BufferBudgetOptions | undefined, logger: HboneLogger): BufferBudget {
  if (b instanceof BufferBudget) return b;
  return new BufferBudget({ logger, ...b });
}

function positive(n: number, name: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new HboneError('ERR_HBONE_CONFIG', `BufferBudget ${name} must be a positive number, got ${n}`);
  return n;
}
