import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
// Types only: @weir/pki is loaded when a local CA is made or read, not by a ztunnel fed by Istio's CA.
import type { LocalCa, WorkloadCertificate } from '@weir/pki';
import { ZtunnelError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';

export type { WorkloadCertificate };

export interface CaFiles {
  certPath: string;
  keyPath: string;
  trustDomain: string;
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Loads the CA from `certPath`/`keyPath`, or creates it there when neither exists. Several ztunnels
 * (one per simulated node) may race on first start: the key is published with link(2), which only
 * one wins; the others wait for the winner's certificate and load it, so all share one CA.
 */
export async function loadOrCreateCa(files: CaFiles): Promise<{ ca: LocalCa; created: boolean }> {
  const { LocalCa } = await import('@weir/pki');
  const load = async (certPem: string, keyPem: string): Promise<LocalCa> => {
    try {
      return await LocalCa.load({ certPem, keyPem, trustDomain: files.trustDomain });
    } catch (cause) {
      throw new ZtunnelError('ERR_ZTUNNEL_IDENTITY', `CA ${files.certPath} / ${files.keyPath} cannot be loaded: ${(cause as Error).message}`, { cause });
    }
  };
  const [cert, key] = await Promise.all([readIfExists(files.certPath), readIfExists(files.keyPath)]);
  if (cert !== undefined && key !== undefined) return { ca: await load(cert, key), created: false };
  if (cert === undefined && key === undefined) {
    const ca = await LocalCa.create({ trustDomain: files.trustDomain });
    await mkdir(dirname(files.keyPath), { recursive: true });
    await mkdir(dirname(files.certPath), { recursive: true });
    const suffix = `.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(files.keyPath + suffix, ca.keyPem, { mode: 0o600 });
    await writeFile(files.certPath + suffix, ca.certPem, { mode: 0o644 });
    try {
      await link(files.keyPath + suffix, files.keyPath);
      await link(files.certPath + suffix, files.certPath);
      return { ca, created: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    } finally {
      await rm(files.keyPath + suffix, { force: true });
      await rm(files.certPath + suffix, { force: true });
    }
  }
  // Someone else is creating it (or it is half there): wait for both files.
  for (let i = 0; i < 50; i++) {
    const [c, k] = await Promise.all([readIfExists(files.certPath), readIfExists(files.keyPath)]);
    if (c !== undefined && k !== undefined) return { ca: await load(c, k), created: false };
    await sleep(100);
  }
  throw new ZtunnelError(
    'ERR_ZTUNNEL_IDENTITY',
    `CA files incomplete: ${files.certPath} ${cert === undefined ? 'missing' : 'present'}, ${files.keyPath} ${key === undefined ? 'missing' : 'present'}`,
  );
}

export interface CertificateSource {
  issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate>;
}

interface Entry {
  identity: string;
  cert?: WorkloadCertificate;
  pending?: Promise<WorkloadCertificate>;
  users: Set<(cert: WorkloadCertificate) => void>;
  timer?: NodeJS.Timeout;
  lastError?: string;
  /** Acquirers were given a certificate: from then on a failed renewal is retried for the users. */
  issued?: boolean;
  /** Current retry delay while the source cannot renew (outage); reset by a fresh certificate. */
  backoffMs?: number;
}

const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 60_000;

/** When a certificate should be replaced: at half its lifetime. */
const refreshAt = (cert: WorkloadCertificate): number =>
  cert.notBefore.getTime() + (cert.notAfter.getTime() - cert.notBefore.getTime()) / 2;

export interface CertificateState {
  identity: string;
  state: 'Available' | 'Initializing' | 'Unavailable';
  serial?: string;
  notBefore?: string;
  notAfter?: string;
  error?: string;
  chain?: string;
}

/**
 * Workload certificates by SPIFFE identity: fetched on first use, shared by every proxy of that
 * identity, rotated at half-life (subscribers get the new one; live TLS sessions keep theirs), and
 * dropped when the last user releases it.
 */
export class IdentityManager {
  readonly #entries = new Map<string, Entry>();
  /** whenAvailable() listeners by identity: acquirers whose fetch failed, waiting for any valid certificate. */
  readonly #watchers = new Map<string, Set<() => void>>();
  readonly #logger: Logger;
  readonly #ttlSeconds: number;

  constructor(
    readonly source: CertificateSource,
    options: { ttlSeconds?: number; logger?: Logger } = {},
  ) {
    this.#ttlSeconds = options.ttlSeconds ?? 86_400;
    this.#logger = options.logger ?? silentLogger;
  }

  /**
   * Subscribes to `identity`'s certificate; resolves with the current one (or, for a first one, with
   * whatever the source answered, even expired: peers refuse that one, and renewals keep being tried).
   * `onRotate` gets every later valid one (possibly also the one this resolves with, when it replaces
   * an expired one). Call the returned release when done.
   */
  async acquire(identity: string, onRotate: (cert: WorkloadCertificate) => void): Promise<{ cert: WorkloadCertificate; release: () => void }> {
    let entry = this.#entries.get(identity);
    if (!entry) {
      entry = { identity, users: new Set() };
      this.#entries.set(identity, entry);
    }
    entry.users.add(onRotate);
    const e = entry;
    const release = (): void => {
      e.users.delete(onRotate);
      if (e.users.size === 0 && this.#entries.get(identity) === e) {
        clearTimeout(e.timer);
        this.#entries.delete(identity);
      }
    };
    try {
      // An expired one (in the moment before a failed renewal drops it) is not handed out: ask again.
      const held = e.cert && Date.now() < e.cert.notAfter.getTime() ? e.cert : undefined;
      const cert = held ?? (await this.#fetch(e));
      return { cert, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  #fetch(e: Entry): Promise<WorkloadCertificate> {
    e.pending ??= this.#ask(e).finally(() => delete e.pending);
    return e.pending;
  }

  /**
   * One ask of the source. A certificate that has already expired is a failure; one already due for
   * refresh (or the very one we hold: a CA outage served from its cache) is used while still valid
   * but does not count as renewed. Both are retried with the backoff, so a source that keeps
   * answering with a stale certificate is asked a few times a minute at most, never in a loop.
   */
  async #ask(e: Entry): Promise<WorkloadCertificate> {
    let cert: WorkloadCertificate;
    try {
      cert = await this.source.issueWorkloadCertificate({ identity: e.identity, ttlSeconds: this.#ttlSeconds });
    } catch (err) {
      this.#failed(e, (err as Error).message, { err });
      throw new ZtunnelError('ERR_ZTUNNEL_IDENTITY', `certificate for ${e.identity} not issued: ${(err as Error).message}`, { cause: err });
    }
    const now = Date.now();
    const expiry = cert.notAfter.toISOString();
    if (now >= cert.notAfter.getTime()) {
      // Acquirers waiting for a first certificate still get it: peers refuse it at the handshake (fail
      // closed, the pod stays enrolled) until a renewal brings a valid one. It is never held.
      e.issued = true;
      this.#failed(e, `the source returned serial ${cert.serial}, which expired at ${expiry}`, { serial: cert.serial, expiry });
      return cert;
    }
    const changed = cert.serial !== e.cert?.serial;
    // Users hold the one issued before (possibly dropped by now); a first fetch goes to its acquirers only.
    const rotated = changed && e.issued === true;
    const renewed = changed && now < refreshAt(cert);
    e.cert = cert;
    e.issued = true;
    // Released (or closed) while asking: the acquirers still get it, nothing is scheduled.
    if (this.#entries.get(e.identity) !== e) return cert;
    if (renewed) {
      delete e.lastError;
      delete e.backoffMs;
      this.#schedule(e, cert);
      this.#logger.info({ identity: e.identity, serial: cert.serial, expiry }, 'fetched certificate');
    } else {
      e.lastError = `the source returned serial ${cert.serial}, due for refresh since ${new Date(refreshAt(cert)).toISOString()}`;
      const retryMs = this.#retryLater(e);
      this.#logger.warn({ identity: e.identity, serial: cert.serial, expiry, retry_ms: retryMs }, 'certificate not renewed: the source returned one due for refresh, retrying');
    }
    if (rotated) for (const user of e.users) user(cert);
    this.#announce(e.identity);
    return cert;
  }

  /**
   * Calls `listener` whenever a valid certificate for `identity` is held from now on, however it came
   * (e.g. another pod of the identity fetched it), and once soon when one is held already: an acquirer
   * whose fetch failed then acquires again at once instead of waiting for its own retry. Call the
   * returned function to stop.
   */
  whenAvailable(identity: string, listener: () => void): () => void {
    let set = this.#watchers.get(identity);
    if (!set) this.#watchers.set(identity, (set = new Set()));
    const watching = set;
    watching.add(listener);
    const held = this.#entries.get(identity)?.cert;
    // A certificate that landed between the caller's failed acquire and this call.
    if (held && Date.now() < held.notAfter.getTime()) {
      queueMicrotask(() => {
        if (watching.has(listener)) listener();
      });
    }
    return () => {
      watching.delete(listener);
      if (watching.size === 0 && this.#watchers.get(identity) === watching) this.#watchers.delete(identity);
    };
  }

  #announce(identity: string): void {
    const set = this.#watchers.get(identity);
    if (!set) return;
    // A copy: listeners acquire (and may stop watching) from inside the call.
    for (const listener of [...set]) {
      try {
        listener();
      } catch (err) {
        this.#logger.error({ identity, err }, 'certificate availability listener failed');
      }
    }
  }

  /**
   * An ask that brought no usable certificate: drops the held one once expired (fail closed: no new
   * mTLS is set up with it), logs, and retries with the backoff while the entry has users that were
   * given one. A first fetch that fails is only reported to its acquirers.
   */
  #failed(e: Entry, reason: string, fields: Record<string, unknown>): void {
    e.lastError = reason;
    if (e.cert && Date.now() >= e.cert.notAfter.getTime()) {
      this.#logger.error({ identity: e.identity, serial: e.cert.serial, expiry: e.cert.notAfter.toISOString() }, 'certificate expired and not renewed, dropped');
      delete e.cert;
    }
    if (e.issued && this.#entries.get(e.identity) === e) {
      const retryMs = this.#retryLater(e);
      this.#logger.warn({ identity: e.identity, ...fields, retry_ms: retryMs }, 'certificate rotation failed, retrying');
    }
  }

  #schedule(e: Entry, cert: WorkloadCertificate): void {
    clearTimeout(e.timer);
    const half = refreshAt(cert);
    // setTimeout fires at once beyond 2^31-1 ms (~24.8 days): cap long TTLs' timers, re-check on wake.
    const delay = Math.min(Math.max(0, half - Date.now()), 0x7fffffff);
    e.timer = setTimeout(() => {
      // Also when a timer fires a millisecond early: a caching source would answer with the held one.
      if (Date.now() < half) return this.#schedule(e, cert);
      this.#rotate(e);
    }, delay);
    e.timer.unref();
  }

  /**
   * Schedules the next renewal attempt after a failed one and returns its delay: a backoff of 1 s
   * doubling to 60 s, jittered to its upper half so identities failing together do not ask in step;
   * brought forward to the held certificate's expiry (one last try before it is dropped), but never
   * sooner than half the minimum.
   */
  #retryLater(e: Entry): number {
    clearTimeout(e.timer);
    e.backoffMs = Math.min(RETRY_MAX_MS, e.backoffMs === undefined ? RETRY_MIN_MS : e.backoffMs * 2);
    let delay = e.backoffMs / 2 + (Math.random() * e.backoffMs) / 2;
    if (e.cert) delay = Math.min(delay, Math.max(RETRY_MIN_MS / 2, e.cert.notAfter.getTime() - Date.now()));
    delay = Math.round(delay);
    e.timer = setTimeout(() => this.#rotate(e), delay);
    e.timer.unref();
    return delay;
  }

  #rotate(e: Entry): void {
    if (this.#entries.get(e.identity) !== e) return;
    // #ask hands a new certificate to the users, and logs and retries a failure.
    this.#fetch(e).catch(() => {});
  }

  certificates(): CertificateState[] {
    return [...this.#entries.values()].map((e) => ({
      identity: e.identity,
      state: e.cert ? 'Available' : e.lastError ? 'Unavailable' : 'Initializing',
      ...(e.cert
        ? { serial: e.cert.serial, notBefore: e.cert.notBefore.toISOString(), notAfter: e.cert.notAfter.toISOString(), chain: e.cert.chainPem }
        : {}),
      ...(e.lastError ? { error: e.lastError } : {}),
    }));
  }

  close(): void {
    for (const e of this.#entries.values()) clearTimeout(e.timer);
    this.#entries.clear();
    this.#watchers.clear();
  }
}

/** A fresh in-memory CA (the default when no CA files are configured: this ztunnel trusts only itself). */
export async function createEmbeddedCa(trustDomain: string): Promise<LocalCa> {
  const { LocalCa } = await import('@weir/pki');
  return LocalCa.create({ trustDomain });
}
