import { X509Certificate as NodeX509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  SubjectKeyIdentifierExtension,
  X509Certificate,
  X509CertificateGenerator,
} from '@peculiar/x509';
import { PkiError } from './errors.js';
import { parseSpiffeUri } from './spiffe.js';

// @peculiar/x509 is typed against the DOM's Crypto; Node's webcrypto is the same API.
type X509Crypto = NonNullable<Parameters<typeof X509CertificateGenerator.create>[1]>;
type SigningKey = Extract<Parameters<typeof X509CertificateGenerator.create>[0], { signingKey: unknown }>['signingKey'];
const crypto = webcrypto as unknown as X509Crypto;
const subtle = webcrypto.subtle;

const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;
const RSA_SHA256 = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
// Backdate fresh certificates a little so a peer whose clock is slightly behind accepts them.
const CLOCK_SKEW_MS = 60_000;

/** A SPIFFE workload certificate with its private key, ready for `tls.createSecureContext`. */
export interface WorkloadCertificate {
  /** The leaf certificate alone, PEM. */
  certPem: string;
  /** The leaf's private key, PKCS#8 PEM (ECDSA P-256). */
  keyPem: string;
  /** Leaf followed by every intermediate up to (not including) the root, PEM. */
  chainPem: string;
  /** The root certificate (the trust bundle), PEM. */
  rootPem: string;
  /** The SPIFFE ID in the certificate's only URI SAN. */
  identity: string;
  /** Serial number, lower-case hex. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CreateCaOptions {
  trustDomain: string;
  commonName?: string;
  /** Default 3650 (ten years, as Istio's self-signed root). */
  validityDays?: number;
  notBefore?: Date;
}

export interface LoadCaOptions {
  /** The CA certificate, PEM; further certificates after it are taken as its chain to the root. */
  certPem: string;
  /** The CA key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM; EC P-256 or RSA. */
  keyPem: string;
  /** Intermediates between `certPem` and the root (Istio's `cert-chain.pem` minus the CA cert itself). */
  chainPem?: string;
  /** The root; defaults to the last certificate of the chain (or the CA cert when self-signed). */
  rootPem?: string;
  /** Defaults to the CA certificate's `spiffe://<td>` URI SAN, then its subject O. */
  trustDomain?: string;
}

export interface IssueWorkloadOptions {
  /** `spiffe://<trust domain>/ns/<ns>/sa/<sa>`; the trust domain must be this CA's. */
  identity: string;
  /** Default 86400 (24 h). Ignored when `notAfter` is given. */
  ttlSeconds?: number;
  notBefore?: Date;
  notAfter?: Date;
}

export interface IssueIntermediateOptions {
  commonName?: string;
  /** Default 365. */
  validityDays?: number;
  notBefore?: Date;
}

interface CaParts {
  trustDomain: string;
  cert: X509Certificate;
  signingKey: SigningKey;
  signingAlgorithm: typeof ECDSA_SHA256 | typeof RSA_SHA256;
  keyPem: string;
  /** Intermediates above this CA (not the CA itself, not the root). */
  issuers: string[];
  rootPem: string;
}

/**
 * A small certificate authority for a SPIFFE trust domain: a self-signed ECDSA P-256 root (or a loaded
 * CA, e.g. Istio's `cacerts`), issuing workload certificates with one URI SAN.
 */
export class LocalCa {
  readonly trustDomain: string;
  /** This CA's own certificate, PEM. */
  readonly certPem: string;
  /** This CA's private key, PKCS#8 PEM. */
  readonly keyPem: string;
  /** This CA's certificate followed by its intermediates up to (not including) the root; for a root CA, its certificate. */
  readonly caChainPem: string;
  /** The root of trust (the bundle peers verify against), PEM. */
  readonly rootPem: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly #parts: CaParts;

  private constructor(parts: CaParts) {
    this.#parts = parts;
    this.trustDomain = parts.trustDomain;
    this.certPem = toPem(parts.cert);
    this.keyPem = parts.keyPem;
    this.rootPem = parts.rootPem;
    const isRoot = normalizePem(parts.rootPem) === this.certPem;
    this.caChainPem = isRoot ? this.certPem : [this.certPem, ...parts.issuers].join('');
    this.notBefore = parts.cert.notBefore;
    this.notAfter = parts.cert.notAfter;
  }

  /** Creates a new self-signed root CA for `trustDomain`. */
  static async create(o: CreateCaOptions): Promise<LocalCa> {
    assertTrustDomain(o.trustDomain);
    const validityDays = o.validityDays ?? 3650;
    assertPositive('validityDays', validityDays);
    const notBefore = o.notBefore ?? new Date(Date.now() - CLOCK_SKEW_MS);
    const notAfter = new Date(notBefore.getTime() + validityDays * DAY_MS);
    const keys = await subtle.generateKey(EC_P256, true, ['sign', 'verify']);
    const cert = await X509CertificateGenerator.createSelfSigned(
      {
        serialNumber: newSerial(),
        name: caName(o.trustDomain, o.commonName),
        notBefore,
        notAfter,
        signingAlgorithm: ECDSA_SHA256,
        keys: keys as unknown as Parameters<typeof X509CertificateGenerator.createSelfSigned>[0]['keys'],
        extensions: [
          new BasicConstraintsExtension(true, undefined, true),
          new KeyUsagesExtension(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign | KeyUsageFlags.digitalSignature, true),
          new SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${o.trustDomain}` }], false),
          await SubjectKeyIdentifierExtension.create(keys.publicKey as never, false, crypto),
        ],
      },
      crypto,
    );
    const keyPem = pkcs8Pem(Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey)));
    return new LocalCa({
      trustDomain: o.trustDomain,
      cert,
      signingKey: keys.privateKey as unknown as SigningKey,
      signingAlgorithm: ECDSA_SHA256,
      keyPem,
      issuers: [],
      rootPem: toPem(cert),
    });
  }

  /** Loads an existing CA certificate and key (EC P-256 or RSA), checking that they belong together. */
  static async load(o: LoadCaOptions): Promise<LocalCa> {
    const [first, ...rest] = splitPem(o.certPem);
    if (first === undefined) {
      throw new PkiError('ERR_PKI_INVALID_CERTIFICATE', 'CA certPem holds no PEM CERTIFICATE block');
    }
    const issuers = [...rest, ...(o.chainPem === undefined ? [] : splitPem(o.chainPem))];
    let nodeCert: NodeX509Certificate;
    let cert: X509Certificate;
    try {
      nodeCert = new NodeX509Certificate(first);
      cert = new X509Certificate(first);
    } catch (cause) {
      throw new PkiError('ERR_PKI_INVALID_CERTIFICATE', `CA certPem does not parse as X.509: ${String(cause)}`, { cause });
    }
    if (!nodeCert.ca) {
      throw new PkiError('ERR_PKI_NOT_A_CA', `certificate ${nodeCert.subject || '(empty subject)'} is not a CA (basicConstraints CA:false)`);
    }
    let keyObject;
    try {
      keyObject = createPrivateKey(o.keyPem);
    } catch (cause) {
      throw new PkiError('ERR_PKI_INVALID_KEY', `CA keyPem does not parse as a private key: ${String(cause)}`, { cause });
    }
    if (!nodeCert.checkPrivateKey(keyObject)) {
      throw new PkiError('ERR_PKI_INVALID_KEY', `CA keyPem does not match the public key of certificate ${nodeCert.subject}`);
    }
    const der = keyObject.export({ type: 'pkcs8', format: 'der' });
    let signingKey: SigningKey;
    let signingAlgorithm: CaParts['signingAlgorithm'];
    if (keyObject.asymmetricKeyType === 'ec' && keyObject.asymmetricKeyDetails?.namedCurve === 'prime256v1') {
      signingKey = (await subtle.importKey('pkcs8', der, EC_P256, false, ['sign'])) as unknown as SigningKey;
      signingAlgorithm = ECDSA_SHA256;
    } else if (keyObject.asymmetricKeyType === 'rsa') {
      signingKey = (await subtle.importKey('pkcs8', der, RSA_SHA256, false, ['sign'])) as unknown as SigningKey;
      signingAlgorithm = RSA_SHA256;
    } else {
      const detail = keyObject.asymmetricKeyDetails?.namedCurve ?? '';
      throw new PkiError('ERR_PKI_INVALID_KEY', `CA key type ${keyObject.asymmetricKeyType ?? '?'} ${detail} is not supported (EC P-256 or RSA)`);
    }
    const trustDomain = o.trustDomain ?? trustDomainOf(cert);
    if (trustDomain === undefined) {
      throw new PkiError(
        'ERR_PKI_TRUST_DOMAIN',
        `cannot tell the trust domain of CA certificate ${nodeCert.subject || '(empty subject)'}: no spiffe:// URI SAN and no O=; pass trustDomain`,
      );
    }
    assertTrustDomain(trustDomain);
    const rootPem = o.rootPem !== undefined ? normalizePem(o.rootPem) : (issuers.at(-1) ?? toPem(cert));
    // Keep the root out of the chain we send: peers have it already.
    const rootNormalized = normalizePem(rootPem);
    return new LocalCa({
      trustDomain,
      cert,
      signingKey,
      signingAlgorithm,
      keyPem: pkcs8Pem(der),
      issuers: issuers.map(normalizePem).filter((p) => p !== rootNormalized),
      rootPem,
    });
  }

  /** Issues a workload certificate: fresh P-256 key, URI SAN = `identity` only, serverAuth + clientAuth. */
  async issueWorkloadCertificate(o: IssueWorkloadOptions): Promise<WorkloadCertificate> {
    const id = parseSpiffeUri(o.identity);
    if (id.trustDomain !== this.trustDomain) {
      throw new PkiError(
        'ERR_PKI_TRUST_DOMAIN',
        `identity ${o.identity} is in trust domain ${id.trustDomain}, this CA signs for ${this.trustDomain}`,
      );
    }
    const ttlSeconds = o.ttlSeconds ?? 86_400;
    assertPositive('ttlSeconds', ttlSeconds);
    const start = o.notBefore?.getTime() ?? Date.now();
    const notBefore = o.notBefore ?? new Date(start - CLOCK_SKEW_MS);
    const notAfter = o.notAfter ?? new Date(start + ttlSeconds * 1000);
    this.#assertWithinCa(notBefore, notAfter);
    const keys = await subtle.generateKey(EC_P256, true, ['sign', 'verify']);
    const serialNumber = newSerial();
    const cert = await X509CertificateGenerator.create(
      {
        serialNumber,
        // Empty subject as Istio's workload certificates; RFC 5280 then wants the SAN critical.
        subject: '',
        issuer: this.#parts.cert.subjectName,
        notBefore,
        notAfter,
        signingAlgorithm: this.#parts.signingAlgorithm,
        signingKey: this.#parts.signingKey,
        publicKey: keys.publicKey as never,
        extensions: [
          new BasicConstraintsExtension(false, undefined, true),
          new KeyUsagesExtension(KeyUsageFlags.digitalSignature | KeyUsageFlags.keyEncipherment, true),
          new ExtendedKeyUsageExtension([ExtendedKeyUsage.serverAuth, ExtendedKeyUsage.clientAuth], false),
          new SubjectAlternativeNameExtension([{ type: 'url', value: o.identity }], true),
          await SubjectKeyIdentifierExtension.create(keys.publicKey as never, false, crypto),
          await AuthorityKeyIdentifierExtension.create(this.#parts.cert.publicKey, false, crypto),
        ],
      },
      crypto,
    );
    const certPem = toPem(cert);
    return {
      certPem,
      keyPem: pkcs8Pem(Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey))),
      chainPem: [certPem, ...this.#chainAboveLeaf()].join(''),
      rootPem: this.rootPem,
      identity: o.identity,
      serial: cert.serialNumber.toLowerCase(),
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
    };
  }

  /** Issues an intermediate CA (pathLength 0) under this one, for multi-level chains. */
  async issueIntermediate(o: IssueIntermediateOptions = {}): Promise<LocalCa> {
    const validityDays = o.validityDays ?? 365;
    assertPositive('validityDays', validityDays);
    const notBefore = o.notBefore ?? new Date(Date.now() - CLOCK_SKEW_MS);
    const notAfter = new Date(notBefore.getTime() + validityDays * DAY_MS);
    this.#assertWithinCa(notBefore, notAfter);
    const keys = await subtle.generateKey(EC_P256, true, ['sign', 'verify']);
    const cert = await X509CertificateGenerator.create(
      {
        serialNumber: newSerial(),
        subject: caName(this.trustDomain, o.commonName ?? 'Intermediate CA'),
        issuer: this.#parts.cert.subjectName,
        notBefore,
        notAfter,
        signingAlgorithm: this.#parts.signingAlgorithm,
        signingKey: this.#parts.signingKey,
        publicKey: keys.publicKey as never,
        extensions: [
          new BasicConstraintsExtension(true, 0, true),
          new KeyUsagesExtension(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign | KeyUsageFlags.digitalSignature, true),
          new SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${this.trustDomain}` }], false),
          await SubjectKeyIdentifierExtension.create(keys.publicKey as never, false, crypto),
          await AuthorityKeyIdentifierExtension.create(this.#parts.cert.publicKey, false, crypto),
        ],
      },
      crypto,
    );
    return new LocalCa({
      trustDomain: this.trustDomain,
      cert,
      signingKey: keys.privateKey as unknown as SigningKey,
      signingAlgorithm: ECDSA_SHA256,
      keyPem: pkcs8Pem(Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey))),
      issuers: this.#chainAboveLeaf(),
      rootPem: this.rootPem,
    });
  }

  /** Certificates a leaf of this CA sends after itself: this CA and its intermediates, not the root. */
  #chainAboveLeaf(): string[] {
    return this.caChainPem === this.rootPem ? [] : splitPem(this.caChainPem);
  }

  #assertWithinCa(notBefore: Date, notAfter: Date): void {
    if (!(notAfter.getTime() > notBefore.getTime())) {
      throw new PkiError('ERR_PKI_VALIDITY', `notAfter ${notAfter.toISOString()} is not after notBefore ${notBefore.toISOString()}`);
    }
    if (notAfter.getTime() > this.notAfter.getTime()) {
      throw new PkiError(
        'ERR_PKI_VALIDITY',
        `requested notAfter ${notAfter.toISOString()} outlives the CA certificate (notAfter ${this.notAfter.toISOString()})`,
      );
    }
  }
}

function caName(trustDomain: string, commonName: string | undefined): string {
  // Istio's self-signed root is O=<trust domain>; keep that, CN optional.
  const o = `O=${escapeRdn(trustDomain)}`;
  return commonName === undefined ? o : `${o}, CN=${escapeRdn(commonName)}`;
}

function escapeRdn(v: string): string {
  return v.replace(/([,+"\\<>;=])/g, '\\$1');
}

function trustDomainOf(cert: X509Certificate): string | undefined {
  const san = cert.getExtension(SubjectAlternativeNameExtension);
  for (const name of san?.names.items ?? []) {
    if (name.type === 'url' && name.value.startsWith('spiffe://')) {
      const td = name.value.slice('spiffe://'.length).split('/')[0];
      if (td) return td;
    }
  }
  const o = cert.subjectName.getField('O')[0];
  return o === undefined ? undefined : o.toLowerCase();
}

function assertTrustDomain(td: string): void {
  if (!/^[a-z0-9._-]+$/.test(td)) {
    throw new PkiError('ERR_PKI_TRUST_DOMAIN', `trust domain ${JSON.stringify(td)} is not a valid SPIFFE trust domain (lower-case a-z 0-9 . - _)`);
  }
}

function assertPositive(name: string, v: number): void {
  if (!Number.isFinite(v) || v <= 0) {
    throw new PkiError('ERR_PKI_VALIDITY', `${name} must be a positive number, got ${v}`);
  }
}

/** 16 random bytes, top bit clear so the DER INTEGER stays positive without padding. */
function newSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f | 0x01;
  return b.toString('hex');
}

function toPem(cert: X509Certificate): string {
  return normalizePem(cert.toString('pem'));
}

function pkcs8Pem(der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN PRIVATE KEY-----\n${b64}\n-----END PRIVATE KEY-----\n`;
}

function normalizePem(pem: string): string {
  return `${pem.replace(/\r\n/g, '\n').trim()}\n`;
}

/** Splits a PEM bundle into its CERTIFICATE blocks, each normalized to end in one newline. */
export function splitPem(pem: string): string[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map(normalizePem);
}
