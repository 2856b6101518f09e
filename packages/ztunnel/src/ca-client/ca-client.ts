import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { createCertificateSigningRequest, splitPem } from '@weir/pki';
import { ZtunnelError } from '../errors.js';
import type { CertificateSource, WorkloadCertificate } from '../identity.js';
import { silentLogger, type Logger } from '../logger.js';
import {
  IstioCertificateRequestSchema,
  IstioCertificateResponseSchema,
  type IstioCertificateResponse,
} from '../xds/gen/citadel_pb.js';
import { authMetadata, channelCredentials, channelOptions, deserializer, grpcTarget, serializer, type ChannelOptions } from '../xds/grpc.js';

export const CREATE_CERTIFICATE_PATH = '/istio.v1.auth.IstioCertificateService/CreateCertificate';

export interface CaClientOptions extends ChannelOptions {
  /** Returns ztunnel's own bearer token (the projected service-account token); read per request. */
  token?: () => Promise<string | undefined> | string | undefined;
  /** Sent as the `clusterid` header; default `Kubernetes`. */
  clusterId?: string;
  /**
   * The mesh trust bundle until the CA's first answer (usually the same file as CA_ROOT_CA); each
   * response's last certificate then replaces it.
   */
  trustBundlePem: string;
  /** Requested lifetime when the caller names none; default 86400 s (ztunnel's SECRET_TTL). */
  ttlSeconds?: number;
  /** Send `ImpersonatedIdentity` (ztunnel asks for its pods' identities); default true. */
  impersonate?: boolean;
  /** Attempts per issue and the backoff between them; default 4 attempts, 200 ms doubling to 5 s. */
  retry?: { attempts: number; initialMs: number; maxMs: number };
  /** Deadline of one CreateCertificate call; default 10 s. */
  callTimeoutMs?: number;
  logger?: Logger;
}

interface Cached {
  cert: WorkloadCertificate;
  fetchedAt: Date;
  lastError?: string;
}

export interface CaCertificateDump {
  identity: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  fetchedAt: string;
  lastError: string | null;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

/**
 * Workload certificates from Istio's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`):
 * an ECDSA P-256 key and CSR per identity, ztunnel's token plus `ImpersonatedIdentity`, the trust
 * bundle taken from the response. Certificates are cached per identity: a request before half-life
 * is answered from the cache; when the CA cannot be reached the cached certificate is served until
 * it expires, with a warning each time.
 */
export class CaClient implements CertificateSource {
  readonly #o: CaClientOptions;
  readonly #log: Logger;
  readonly #cache = new Map<string, Cached>();
  readonly #inflight = new Map<string, Promise<WorkloadCertificate>>();
  #trustBundle: string;
  #client: grpc.Client | undefined;
  #closed = false;

  constructor(options: CaClientOptions) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    this.#trustBundle = options.trustBundlePem;
  }

  /** The mesh roots: from the latest CA response, else the configured bundle. */
  get rootPem(): string {
    return this.#trustBundle;
  }

  issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    if (this.#closed) return Promise.reject(new ZtunnelError('ERR_ZTUNNEL_CA', `CA client for ${this.#o.address} is closed`));
    const cached = this.#cache.get(o.identity);
    const now = Date.now();
    if (cached && now < halfLife(cached.cert)) {
      this.#log.debug({ identity: o.identity, serial: cached.cert.serial }, 'certificate served from cache');
      return Promise.resolve(cached.cert);
    }
    let p = this.#inflight.get(o.identity);
    if (!p) {
      p = this.#issue(o.identity, o.ttlSeconds ?? this.#o.ttlSeconds ?? 86_400).finally(() => this.#inflight.delete(o.identity));
      this.#inflight.set(o.identity, p);
    }
    return p;
  }

  async #issue(identity: string, ttlSeconds: number): Promise<WorkloadCertificate> {
    const retry = this.#o.retry ?? { attempts: 4, initialMs: 200, maxMs: 5000 };
    let delay = retry.initialMs;
    let lastError = '';
    for (let attempt = 1; attempt <= retry.attempts && !this.#closed; attempt++) {
      try {
        const cert = await this.#request(identity, ttlSeconds);
        this.#cache.set(identity, { cert, fetchedAt: new Date() });
        this.#log.info({ identity, serial: cert.serial, expiry: cert.notAfter.toISOString(), ca: this.#o.address }, 'certificate issued by CA');
        return cert;
      } catch (err) {
        lastError = (err as Error).message;
        if (attempt < retry.attempts) {
          this.#log.warn({ identity, attempt, error: lastError, backoff_ms: delay, ca: this.#o.address }, 'CA request failed, retrying');
          await sleep(delay);
          delay = Math.min(retry.maxMs, delay * 2);
        }
      }
    }
    const cached = this.#cache.get(identity);
    if (cached) cached.lastError = lastError;
    if (cached && Date.now() < cached.cert.notAfter.getTime()) {
      this.#log.warn(
        { identity, serial: cached.cert.serial, expiry: cached.cert.notAfter.toISOString(), error: lastError, ca: this.#o.address },
        'CA unavailable, serving the cached certificate until it expires',
      );
      return cached.cert;
    }
    if (cached) this.#cache.delete(identity);
    this.#log.error(
      { identity, error: lastError, ca: this.#o.address, ...(cached ? { expired: cached.cert.notAfter.toISOString() } : {}) },
      cached ? 'CA unavailable and the cached certificate has expired' : 'CA unavailable, no certificate for identity',
    );
    throw new ZtunnelError('ERR_ZTUNNEL_CA', `CA ${this.#o.address} did not issue a certificate for ${identity}: ${lastError}`);
  }

  async #request(identity: string, ttlSeconds: number): Promise<WorkloadCertificate> {
    const { csrPem, keyPem, publicKeyDer } = await createCertificateSigningRequest({ identity });
    const impersonate = this.#o.impersonate ?? true;
    const req = create(IstioCertificateRequestSchema, {
      csr: csrPem,
      validityDuration: BigInt(ttlSeconds),
      ...(impersonate ? { metadata: { ImpersonatedIdentity: identity } } : {}),
    });
    const md = await authMetadata(this.#o.token, this.#o.clusterId ?? 'Kubernetes');
    this.#client ??= new grpc.Client(grpcTarget(this.#o.address), channelCredentials(this.#o), channelOptions(this.#o));
    const client = this.#client;
    const resp = await new Promise<IstioCertificateResponse>((resolve, reject) => {
      client.makeUnaryRequest(
        CREATE_CERTIFICATE_PATH,
        serializer(IstioCertificateRequestSchema),
        deserializer(IstioCertificateResponseSchema),
        req,
        md,
        { deadline: Date.now() + (this.#o.callTimeoutMs ?? 10_000) },
        (err, value) => {
          if (err) reject(new Error(`${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`));
          else if (!value) reject(new Error('empty response'));
          else resolve(value);
        },
      );
    });
    return this.#toWorkloadCertificate(identity, keyPem, publicKeyDer, resp);
  }

  #toWorkloadCertificate(identity: string, keyPem: string, publicKeyDer: Uint8Array, resp: IstioCertificateResponse): WorkloadCertificate {
    const pems = resp.certChain.flatMap(splitPem);
    if (pems.length === 0) throw new Error(`empty certificate chain for ${identity}`);
    const certs = pems.map((p) => new X509Certificate(p));
    const leaf = certs[0]!;
    const sans = (leaf.subjectAltName ?? '').split(', ');
    if (!sans.includes(`URI:${identity}`)) throw new Error(`certificate SAN ${leaf.subjectAltName ?? '(none)'} is not ${identity}`);
    const leafKey = leaf.publicKey.export({ type: 'spki', format: 'der' });
    if (!leafKey.equals(Buffer.from(publicKeyDer))) throw new Error(`certificate for ${identity} is not for the key of our CSR`);
    for (let i = 0; i + 1 < certs.length; i++) {
      if (!certs[i]!.verify(certs[i + 1]!.publicKey)) throw new Error(`certificate chain for ${identity} is broken at position ${i}`);
    }
    // Istio answers leaf, intermediates…, root: the root is the trust bundle, the rest is what we present.
    const root = pems.length > 1 ? pems[pems.length - 1]! : undefined;
    if (root !== undefined && root !== this.#trustBundle) {
      this.#trustBundle = root;
      this.#log.info({ ca: this.#o.address }, 'trust bundle updated from CA response');
    }
    const chain = pems.length > 1 ? pems.slice(0, -1) : pems;
    return {
      certPem: pems[0]!,
      keyPem,
      chainPem: chain.join(''),
      rootPem: this.#trustBundle,
      identity,
      serial: leaf.serialNumber.toLowerCase(),
      notBefore: new Date(leaf.validFrom),
      notAfter: new Date(leaf.validTo),
    };
  }

  /** For `/config_dump`: every cached certificate. */
  certificates(): CaCertificateDump[] {
    return [...this.#cache].map(([identity, c]) => ({
      identity,
      serial: c.cert.serial,
      notBefore: c.cert.notBefore.toISOString(),
      notAfter: c.cert.notAfter.toISOString(),
      fetchedAt: c.fetchedAt.toISOString(),
      lastError: c.lastError ?? null,
    }));
  }

  /** Drops an identity's cached certificate (its last pod left). */
  forget(identity: string): void {
    this.#cache.delete(identity);
  }

  close(): void {
    this.#closed = true;
    this.#client?.close();
    this.#client = undefined;
  }
}

function halfLife(c: WorkloadCertificate): number {
  return c.notBefore.getTime() + (c.notAfter.getTime() - c.notBefore.getTime()) / 2;
}
