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
  /** Current retry delay while the source cannot renew (outage); reset by a fresh certificate. */
  backoffMs?: number;
}

const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 60_000;

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
  readonly #logger: Logger;
  readonly #ttlSeconds: number;

  constructor(
    readonly source: CertificateSource,
    options: { ttlSeconds?: number; logger?: Logger } = {},
  ) {
    this.#ttlSeconds = options.ttlSeconds ?? 86_400;
    this.#logger = options.logger ?? silentLogger;
  }

  /** Subscribes to `identity`'s certificate; resolves with the current one. Call the returned release when done. */
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
      const cert = e.cert ?? (await this.#fetch(e));
      return { cert, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  #fetch(e: Entry): Promise<WorkloadCertificate> {
    e.pending ??= this.source
      .issueWorkloadCertificate({ identity: e.identity, ttlSeconds: this.#ttlSeconds })
      .then((cert) => {
        const renewed = e.cert?.serial !== cert.serial;
        e.cert = cert;
        delete e.lastError;
        if (renewed) {
          delete e.backoffMs;
          this.#schedule(e, cert);
          this.#logger.info({ identity: e.identity, serial: cert.serial, expiry: cert.notAfter.toISOString() }, 'fetched certificate');
        } else {
          // The source answered with the certificate we hold (a CA outage served from its cache):
          // ask again with a growing delay rather than every second.
          this.#retryLater(e);
        }
        return cert;
      })
      .catch((err: unknown) => {
        e.lastError = (err as Error).message;
        throw new ZtunnelError('ERR_ZTUNNEL_IDENTITY', `certificate for ${e.identity} not issued: ${(err as Error).message}`, { cause: err });
      })
      .finally(() => delete e.pending);
    return e.pending;
  }

  #schedule(e: Entry, cert: WorkloadCertificate): void {
    clearTimeout(e.timer);
    const half = cert.notBefore.getTime() + (cert.notAfter.getTime() - cert.notBefore.getTime()) / 2;
    // setTimeout fires at once beyond 2^31-1 ms (~24.8 days): cap long TTLs' timers, re-check on wake.
    const delay = Math.min(Math.max(RETRY_MIN_MS, half - Date.now()), 0x7fffffff);
    e.timer = setTimeout(() => {
      if (Date.now() < half - 1000) return this.#schedule(e, cert);
      void this.#rotate(e);
    }, delay);
    e.timer.unref();
  }

  /** Next renewal attempt after a failed one: 1 s doubling to 60 s, never later than the held certificate's expiry. */
  #retryLater(e: Entry): void {
    clearTimeout(e.timer);
    e.backoffMs = Math.min(RETRY_MAX_MS, e.backoffMs === undefined ? RETRY_MIN_MS : e.backoffMs * 2);
    const untilExpiry = e.cert ? e.cert.notAfter.getTime() - Date.now() : Infinity;
    e.timer = setTimeout(() => void this.#rotate(e), Math.max(0, Math.min(e.backoffMs, untilExpiry)));
    e.timer.unref();
  }

  async #rotate(e: Entry): Promise<void> {
    if (this.#entries.get(e.identity) !== e) return;
    const held = e.cert?.serial;
    try {
      const cert = await this.#fetch(e);
      if (cert.serial !== held) for (const user of e.users) user(cert);
    } catch (err) {
      if (this.#entries.get(e.identity) !== e) return;
      // Fail closed: an expired certificate is dropped, so no new mTLS is set up with it.
      if (e.cert && Date.now() >= e.cert.notAfter.getTime()) {
        this.#logger.error({ identity: e.identity, serial: e.cert.serial, expiry: e.cert.notAfter.toISOString() }, 'certificate expired and not renewed, dropped');
        delete e.cert;
      }
      this.#logger.warn({ identity: e.identity, err, retry_ms: Math.min(RETRY_MAX_MS, (e.backoffMs ?? RETRY_MIN_MS / 2) * 2) }, 'certificate rotation failed, retrying');
      this.#retryLater(e);
    }
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
  }
}

/** A fresh in-memory CA (the default when no CA files are configured: this ztunnel trusts only itself). */
export async function createEmbeddedCa(trustDomain: string): Promise<LocalCa> {
  const { LocalCa } = await import('@weir/pki');
  return LocalCa.create({ trustDomain });
}
