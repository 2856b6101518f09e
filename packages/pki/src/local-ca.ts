import { X509Certificate, createHash, createPrivateKey, createPublicKey, generateKeyPair, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { promisify } from 'node:util';
import * as der from './der.js';
import { PkiError } from './errors.js';
import { workloadKeyProblem } from './key-policy.js';
import { parseSpiffeUri } from './spiffe.js';

const generateKeyPairAsync = promisify(generateKeyPair);

const OID = {
  ecPublicKey: '1.2.840.10045.2.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  organizationName: '2.5.4.10',
  commonName: '2.5.4.3',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;
// KeyUsage bits (RFC 5280 4.2.1.3) as the DER BIT STRING's first byte and its unused trailing bits.
const KU_LEAF = { byte: 0xa0, unused: 5 }; // digitalSignature, keyEncipherment
const KU_CA = { byte: 0x86, unused: 1 }; // digitalSignature, keyCertSign, cRLSign

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
  /** The CA key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM; EC P-256/P-384 or RSA ≥ 2048. */
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

export interface IssueWorkloadForKeyOptions extends IssueWorkloadOptions {
  /** The workload's public key (SubjectPublicKeyInfo PEM: EC P-256/P-384 or RSA >= 2048), e.g. from a CSR; no key is generated. */
  publicKeyPem: string;
}

/** A workload certificate issued for a key the caller holds (a CSR's): no private key. */
export type SignedWorkloadCertificate = Omit<WorkloadCertificate, 'keyPem'>;

export interface IssueServerOptions {
  /** DNS SANs (also checked by TLS clients' hostname verification). */
  dnsNames?: string[];
  /** IP SANs, IPv4 or IPv6 text. */
  ipAddresses?: string[];
  /** Subject CN; default the first DNS name. */
  commonName?: string;
  /** Default 365. */
  validityDays?: number;
  notBefore?: Date;
}

/** A TLS server certificate (serverAuth, DNS/IP SANs) with its fresh private key. */
export interface ServerCertificate {
  certPem: string;
  /** PKCS#8 PEM (ECDSA P-256). */
  keyPem: string;
  /** Leaf followed by every intermediate up to (not including) the root, PEM. */
  chainPem: string;
  rootPem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface IssueIntermediateOptions {
  commonName?: string;
  /** Default 365. */
  validityDays?: number;
  notBefore?: Date;
}

interface CaParts {
  trustDomain: string;
  /** This CA's certificate, DER. */
  certDer: Buffer;
  /** Its subject Name as encoded in the certificate: the issuer of everything it signs. */
  subjectDer: Buffer;
  /** Key identifier of its public key (the AuthorityKeyIdentifier of what it signs). */
  keyId: Buffer;
  /** basicConstraints pathLenConstraint; 0: it may sign no intermediate. */
  pathLength: number | undefined;
  notBefore: Date;
  notAfter: Date;
  signingKey: KeyObject;
  keyPem: string;
  /** Intermediates above this CA (not the CA itself, not the root). */
  issuers: string[];
  rootPem: string;
}

interface NewCertificate {
  serialHex: string;
  issuer: Buffer;
  subject: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** SubjectPublicKeyInfo, DER. */
  spki: Buffer;
  extensions: Buffer[];
  signingKey: KeyObject;
}

interface LeafOptions {
  /** Subject Name, DER. */
  subject: Buffer;
  /** SubjectPublicKeyInfo, DER. */
  spki: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** ExtendedKeyUsage purpose OIDs, in order. */
  extKeyUsage: string[];
  /** GeneralNames, DER. */
  subjectAltName: Buffer;
  /** RFC 5280 4.2.1.6: critical when the subject is empty. */
  subjectAltNameCritical: boolean;
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
    this.certPem = certificatePem(parts.certDer);
    this.keyPem = parts.keyPem;
    this.rootPem = parts.rootPem;
    const isRoot = normalizePem(parts.rootPem) === this.certPem;
    this.caChainPem = isRoot ? this.certPem : [this.certPem, ...parts.issuers].join('');
    this.notBefore = parts.notBefore;
    this.notAfter = parts.notAfter;
  }

  /** Creates a new self-signed root CA for `trustDomain`. */
  static async create(o: CreateCaOptions): Promise<LocalCa> {
    assertTrustDomain(o.trustDomain);
    const validityDays = o.validityDays ?? 3650;
    assertPositive('validityDays', validityDays);
    const notBefore = o.notBefore ?? new Date(Date.now() - CLOCK_SKEW_MS);
    const notAfter = new Date(notBefore.getTime() + validityDays * DAY_MS);
    assertValidity(notBefore, notAfter);
    const keys = await newKeyPair();
    const name = caName(o.trustDomain, o.commonName);
    const spki = keys.publicKey.export({ type: 'spki', format: 'der' });
    const certDer = signCertificate({
      serialHex: newSerial(),
      issuer: name,
      subject: name,
      notBefore,
      notAfter,
      spki,
      extensions: [
        extension(OID.basicConstraints, true, der.sequence(der.boolean(true))),
        extension(OID.keyUsage, true, der.bitString(Buffer.from([KU_CA.byte]), KU_CA.unused)),
        extension(OID.subjectAltName, false, uriSan(`spiffe://${o.trustDomain}`)),
        extension(OID.subjectKeyIdentifier, false, der.octetString(keyIdentifier(spki))),
      ],
      signingKey: keys.privateKey,
    });
    return new LocalCa({
      trustDomain: o.trustDomain,
      ...certificateParts(certDer),
      signingKey: keys.privateKey,
      keyPem: pkcs8Pem(keys.privateKey),
      issuers: [],
      rootPem: certificatePem(certDer),
    });
  }

  /** Loads an existing CA certificate and key (EC P-256/P-384 or RSA ≥ 2048), checking that they belong together. */
  static async load(o: LoadCaOptions): Promise<LocalCa> {
    const [first, ...rest] = splitPem(o.certPem);
    if (first === undefined) {
      throw new PkiError('ERR_PKI_INVALID_CERTIFICATE', 'CA certPem holds no PEM CERTIFICATE block');
    }
    const issuers = [...rest, ...(o.chainPem === undefined ? [] : splitPem(o.chainPem))];
    let nodeCert: X509Certificate;
    let parts: ReturnType<typeof certificateParts>;
    try {
      nodeCert = new X509Certificate(first);
      parts = certificateParts(nodeCert.raw);
    } catch (cause) {
      throw new PkiError('ERR_PKI_INVALID_CERTIFICATE', `CA certPem does not parse as X.509: ${String(cause)}`, { cause });
    }
    if (!nodeCert.ca) {
      throw new PkiError('ERR_PKI_NOT_A_CA', `certificate ${nodeCert.subject || '(empty subject)'} is not a CA (basicConstraints CA:false)`);
    }
    let keyObject: KeyObject;
    try {
      keyObject = createPrivateKey(o.keyPem);
    } catch (cause) {
      throw new PkiError('ERR_PKI_INVALID_KEY', `CA keyPem does not parse as a private key: ${String(cause)}`, { cause });
    }
    if (!nodeCert.checkPrivateKey(keyObject)) {
      throw new PkiError('ERR_PKI_INVALID_KEY', `CA keyPem does not match the public key of certificate ${nodeCert.subject}`);
    }
    const unusable = caKeyProblem(keyObject);
    if (unusable !== undefined) throw new PkiError('ERR_PKI_INVALID_KEY', `CA key of ${nodeCert.subject || '(empty subject)'}: ${unusable}`);
    const trustDomain = o.trustDomain ?? trustDomainOf(nodeCert, parts.subjectDer);
    if (trustDomain === undefined) {
      throw new PkiError(
        'ERR_PKI_TRUST_DOMAIN',
        `cannot tell the trust domain of CA certificate ${nodeCert.subject || '(empty subject)'}: no spiffe:// URI SAN and no O=; pass trustDomain`,
      );
    }
    assertTrustDomain(trustDomain);
    const rootPem = o.rootPem !== undefined ? normalizePem(o.rootPem) : (issuers.at(-1) ?? certificatePem(parts.certDer));
    assertChain(nodeCert, issuers, rootPem);
    // Keep the root out of the chain we send: peers have it already.
    const rootNormalized = normalizePem(rootPem);
    return new LocalCa({
      trustDomain,
      ...parts,
      signingKey: keyObject,
      keyPem: pkcs8Pem(keyObject),
      issuers: issuers.map(normalizePem).filter((p) => p !== rootNormalized),
      rootPem,
    });
  }

  /**
   * Issues a workload certificate: URI SAN = `identity` only, serverAuth + clientAuth; for a fresh P-256
   * key, or for `publicKeyPem` (a CSR's key; the result then has no `keyPem`).
   */
  async issueWorkloadCertificate(o: IssueWorkloadForKeyOptions): Promise<SignedWorkloadCertificate>;
  async issueWorkloadCertificate(o: IssueWorkloadOptions): Promise<WorkloadCertificate>;
  async issueWorkloadCertificate(o: IssueWorkloadOptions & { publicKeyPem?: string }): Promise<WorkloadCertificate | SignedWorkloadCertificate> {
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
    const keys = o.publicKeyPem === undefined ? await newKeyPair() : undefined;
    const leaf = this.#signLeaf({
      // Empty subject as Istio's workload certificates; RFC 5280 then wants the SAN critical.
      subject: der.sequence(),
      spki: keys ? keys.publicKey.export({ type: 'spki', format: 'der' }) : workloadSpki(o.publicKeyPem ?? ''),
      notBefore,
      notAfter,
      extKeyUsage: [OID.serverAuth, OID.clientAuth],
      subjectAltName: uriSan(o.identity),
      subjectAltNameCritical: true,
    });
    const signed: SignedWorkloadCertificate = { ...leaf, identity: o.identity };
    return keys ? { ...signed, keyPem: pkcs8Pem(keys.privateKey) } : signed;
  }

  /** Issues a TLS server certificate (serverAuth) naming `dnsNames` and `ipAddresses`, fresh P-256 key. */
  async issueServerCertificate(o: IssueServerOptions): Promise<ServerCertificate> {
    const names = [
      ...(o.dnsNames ?? []).map((n) => der.implicitPrimitive(2, dnsNameBytes(n))),
      ...(o.ipAddresses ?? []).map((ip) => der.implicitPrimitive(7, ipAddressBytes(ip))),
    ];
    if (names.length === 0) throw new PkiError('ERR_PKI_INVALID_IDENTITY', 'a server certificate needs at least one DNS name or IP address');
    const { notBefore, notAfter } = this.#validityInDays(o);
    const keys = await newKeyPair();
    const commonName = o.commonName ?? o.dnsNames?.[0];
    const leaf = this.#signLeaf({
      subject: commonName === undefined ? der.sequence() : der.sequence(der.set(der.sequence(der.oid(OID.commonName), der.directoryString(commonName)))),
      spki: keys.publicKey.export({ type: 'spki', format: 'der' }),
      notBefore,
      notAfter,
      extKeyUsage: [OID.serverAuth],
      subjectAltName: der.sequence(...names),
      subjectAltNameCritical: commonName === undefined,
    });
    return { ...leaf, keyPem: pkcs8Pem(keys.privateKey) };
  }

  /** Issues an intermediate CA (pathLength 0) under this one, for multi-level chains. */
  async issueIntermediate(o: IssueIntermediateOptions = {}): Promise<LocalCa> {
    if (this.#parts.pathLength === 0) {
      const subject = new X509Certificate(this.certPem).subject || '(empty subject)';
      throw new PkiError('ERR_PKI_NOT_A_CA', `CA certificate ${subject} has pathLenConstraint 0: verifiers refuse an intermediate under it`);
    }
    const { notBefore, notAfter } = this.#validityInDays(o);
    const keys = await newKeyPair();
    const spki = keys.publicKey.export({ type: 'spki', format: 'der' });
    const certDer = signCertificate({
      serialHex: newSerial(),
      subject: caName(this.trustDomain, o.commonName ?? 'Intermediate CA'),
      issuer: this.#parts.subjectDer,
      notBefore,
      notAfter,
      spki,
      extensions: [
        extension(OID.basicConstraints, true, der.sequence(der.boolean(true), der.smallInteger(0))),
        extension(OID.keyUsage, true, der.bitString(Buffer.from([KU_CA.byte]), KU_CA.unused)),
        extension(OID.subjectAltName, false, uriSan(`spiffe://${this.trustDomain}`)),
        extension(OID.subjectKeyIdentifier, false, der.octetString(keyIdentifier(spki))),
        extension(OID.authorityKeyIdentifier, false, der.sequence(der.implicitPrimitive(0, this.#parts.keyId))),
      ],
      signingKey: this.#parts.signingKey,
    });
    return new LocalCa({
      trustDomain: this.trustDomain,
      ...certificateParts(certDer),
      signingKey: keys.privateKey,
      keyPem: pkcs8Pem(keys.privateKey),
      issuers: this.#chainAboveLeaf(),
      rootPem: this.rootPem,
    });
  }

  /**
   * Signs an end-entity certificate: CA:false, digitalSignature + keyEncipherment, the given extended
   * key usages and SAN, key identifiers; what workload and server certificates share.
   */
  #signLeaf(o: LeafOptions): Omit<ServerCertificate, 'keyPem'> {
    const serial = newSerial();
    const certDer = signCertificate({
      serialHex: serial,
      subject: o.subject,
      issuer: this.#parts.subjectDer,
      notBefore: o.notBefore,
      notAfter: o.notAfter,
      spki: o.spki,
      extensions: [
        extension(OID.basicConstraints, true, der.sequence()),
        extension(OID.keyUsage, true, der.bitString(Buffer.from([KU_LEAF.byte]), KU_LEAF.unused)),
        extension(OID.extKeyUsage, false, der.sequence(...o.extKeyUsage.map((id) => der.oid(id)))),
        extension(OID.subjectAltName, o.subjectAltNameCritical, o.subjectAltName),
        extension(OID.subjectKeyIdentifier, false, der.octetString(keyIdentifier(o.spki))),
        extension(OID.authorityKeyIdentifier, false, der.sequence(der.implicitPrimitive(0, this.#parts.keyId))),
      ],
      signingKey: this.#parts.signingKey,
    });
    const certPem = certificatePem(certDer);
    return {
      certPem,
      chainPem: [certPem, ...this.#chainAboveLeaf()].join(''),
      rootPem: this.rootPem,
      serial,
      notBefore: wholeSeconds(o.notBefore),
      notAfter: wholeSeconds(o.notAfter),
    };
  }

  /** Certificates a leaf of this CA sends after itself: this CA and its intermediates, not the root. */
  #chainAboveLeaf(): string[] {
    return this.caChainPem === this.rootPem ? [] : splitPem(this.caChainPem);
  }

  /** `validityDays` (default 365) from `notBefore` (default now, less the clock skew), inside this CA's validity. */
  #validityInDays(o: { validityDays?: number; notBefore?: Date }): { notBefore: Date; notAfter: Date } {
    const validityDays = o.validityDays ?? 365;
    assertPositive('validityDays', validityDays);
    const notBefore = o.notBefore ?? new Date(Date.now() - CLOCK_SKEW_MS);
    const notAfter = new Date(notBefore.getTime() + validityDays * DAY_MS);
    this.#assertWithinCa(notBefore, notAfter);
    return { notBefore, notAfter };
  }

  #assertWithinCa(notBefore: Date, notAfter: Date): void {
    assertValidity(notBefore, notAfter);
    if (notAfter.getTime() > this.notAfter.getTime()) {
      throw new PkiError(
        'ERR_PKI_VALIDITY',
        `requested notAfter ${notAfter.toISOString()} outlives the CA certificate (notAfter ${this.notAfter.toISOString()})`,
      );
    }
  }
}

function newKeyPair(): Promise<{ publicKey: KeyObject; privateKey: KeyObject }> {
  return generateKeyPairAsync('ec', { namedCurve: 'prime256v1' });
}

/** SubjectPublicKeyInfo DER of a caller's workload key: EC P-256/P-384 or RSA >= 2048, as a CSR may carry. */
function workloadSpki(publicKeyPem: string): Buffer {
  let key: KeyObject;
  try {
    key = createPublicKey(publicKeyPem);
  } catch (cause) {
    throw new PkiError('ERR_PKI_INVALID_KEY', `publicKeyPem does not parse as a public key: ${String(cause)}`, { cause });
  }
  const problem = workloadKeyProblem(key);
  if (problem !== undefined) throw new PkiError('ERR_PKI_INVALID_KEY', `workload publicKeyPem: ${problem}`);
  return key.export({ type: 'spki', format: 'der' });
}

/** A dNSName's IA5String bytes: ASCII only, so an internationalized name comes as its A-label (as Go's x509 requires). */
function dnsNameBytes(name: string): Buffer {
  if (!/^[\x21-\x7e]+$/.test(name)) {
    throw new PkiError('ERR_PKI_INVALID_IDENTITY', `DNS name ${JSON.stringify(name)} is not a non-empty ASCII name (give an internationalized name as its xn-- A-label)`);
  }
  return Buffer.from(name, 'latin1');
}

/** An IP address as the 4 or 16 bytes of an iPAddress GeneralName. */
function ipAddressBytes(ip: string): Buffer {
  if (ip.includes('%')) throw new PkiError('ERR_PKI_INVALID_IDENTITY', `IP address ${JSON.stringify(ip)} has a zone index, which an iPAddress SAN cannot carry`);
  const family = isIP(ip);
  if (family === 4) return Buffer.from(ip.split('.').map(Number));
  if (family !== 6) throw new PkiError('ERR_PKI_INVALID_IDENTITY', `IP address ${JSON.stringify(ip)} is not IPv4 or IPv6 text`);
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two hex groups first.
  const text = ip.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_, a: string, b: string, c: string, d: string) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`);
  const [head = '', tail] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/**
 * The chain peers will be sent must verify: each certificate of [CA, ...issuers] signed by the next, the
 * last by the root (or the root itself). A misordered `cert-chain.pem` otherwise fails only later, in
 * every peer's handshake.
 */
function assertChain(ca: X509Certificate, issuers: string[], rootPem: string): void {
  let root: X509Certificate;
  let chain: X509Certificate[];
  try {
    root = new X509Certificate(rootPem);
    chain = [ca, ...issuers.map((pem) => new X509Certificate(pem))];
  } catch (cause) {
    throw new PkiError('ERR_PKI_INVALID_CERTIFICATE', `CA chain or root does not parse as X.509: ${String(cause)}`, { cause });
  }
  for (const [i, cert] of chain.entries()) {
    const next = chain[i + 1];
    if (next === undefined && cert.fingerprint256 === root.fingerprint256) return;
    const signer = next ?? root;
    if (!cert.checkIssued(signer) || !cert.verify(signer.publicKey)) {
      const what = i === 0 ? 'the CA certificate' : `chain certificate ${i}`;
      throw new PkiError(
        'ERR_PKI_CHAIN',
        `${what} (${cert.subject || '(empty subject)'}) is not signed by ${next ? `the next one (${signer.subject})` : `the root (${signer.subject})`}: ` +
          'the chain must run CA certificate, intermediates, root',
      );
    }
  }
}

/** Why a CA key cannot sign here, or undefined: EC P-256/P-384 or RSA of at least 2048 bits, as Istio's CAs use. */
function caKeyProblem(key: KeyObject): string | undefined {
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec') {
    return d?.namedCurve === 'prime256v1' || d?.namedCurve === 'secp384r1' ? undefined : `EC curve ${d?.namedCurve ?? '(unknown)'} is not P-256 or P-384`;
  }
  if (key.asymmetricKeyType === 'rsa') {
    return (d?.modulusLength ?? 0) >= 2048 ? undefined : `RSA key of ${d?.modulusLength ?? '?'} bits is shorter than 2048`;
  }
  return `key type ${key.asymmetricKeyType ?? '(unknown)'} is not EC P-256/P-384 or RSA`;
}

/** The hash and AlgorithmIdentifier a CA key signs with: SHA-384 for P-384, SHA-256 otherwise (as Go's x509 picks). */
function signatureOf(key: KeyObject): { hash: 'sha256' | 'sha384'; algorithm: Buffer } {
  if (key.asymmetricKeyType === 'rsa') return { hash: 'sha256', algorithm: der.sequence(der.oid(OID.sha256WithRsa), der.nullValue()) };
  if (key.asymmetricKeyDetails?.namedCurve === 'secp384r1') return { hash: 'sha384', algorithm: der.sequence(der.oid(OID.ecdsaWithSha384)) };
  return { hash: 'sha256', algorithm: der.sequence(der.oid(OID.ecdsaWithSha256)) };
}

/** TBSCertificate (v3) signed by `signingKey` (ECDSA or RSA PKCS#1 v1.5, hash per signatureOf). */
function signCertificate(c: NewCertificate): Buffer {
  const { hash, algorithm } = signatureOf(c.signingKey);
  const tbs = der.sequence(
    der.explicit(0, der.smallInteger(2)),
    der.unsignedInteger(Buffer.from(c.serialHex, 'hex')),
    algorithm,
    c.issuer,
    der.sequence(der.time(c.notBefore), der.time(c.notAfter)),
    c.subject,
    c.spki,
    der.explicit(3, der.sequence(...c.extensions)),
  );
  // ECDSA signatures come out DER-encoded (Ecdsa-Sig-Value), as X.509 wants.
  return der.sequence(tbs, algorithm, der.bitString(sign(hash, tbs, c.signingKey)));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return der.sequence(der.oid(id), ...(critical ? [der.boolean(true)] : []), der.octetString(value));
}

/** GeneralNames with one uniformResourceIdentifier ([6] IA5String). */
function uriSan(uri: string): Buffer {
  return der.sequence(der.implicitPrimitive(6, Buffer.from(uri, 'latin1')));
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's bits. */
function keyIdentifier(spki: Buffer): Buffer {
  const [, key] = der.children(der.readElement(spki).content);
  if (!key) throw new PkiError('ERR_PKI_INVALID_KEY', 'SubjectPublicKeyInfo without a subjectPublicKey');
  return createHash('sha1').update(key.content.subarray(1)).digest();
}

/** What issuing needs from a CA certificate: its subject Name as encoded, validity, key identifier, path length. */
function certificateParts(certDer: Buffer): Pick<CaParts, 'certDer' | 'subjectDer' | 'keyId' | 'pathLength' | 'notBefore' | 'notAfter'> {
  const [tbs] = der.children(der.readElement(certDer).content);
  if (!tbs) throw new Error('no TBSCertificate');
  const fields = der.children(tbs.content);
  // version is [0] EXPLICIT and may be absent (v1): serial, signature, issuer, validity, subject, spki follow.
  const rest = fields[0]?.tag === 0xa0 ? fields.slice(1) : fields;
  const [, , , validity, subject, spki] = rest;
  if (!validity || !subject || !spki) throw new Error('TBSCertificate is missing validity, subject or subjectPublicKeyInfo');
  const [notBefore, notAfter] = der.children(validity.content);
  if (!notBefore || !notAfter) throw new Error('validity without notBefore/notAfter');
  return {
    certDer: Buffer.from(certDer),
    subjectDer: Buffer.from(subject.raw),
    keyId: subjectKeyIdentifierOf(rest.slice(6)) ?? keyIdentifier(spki.raw),
    pathLength: pathLengthOf(rest.slice(6)),
    notBefore: der.readTime(notBefore),
    notAfter: der.readTime(notAfter),
  };
}

/**
 * The SubjectKeyIdentifier a CA certificate carries: issued certificates must name exactly it as
 * their AuthorityKeyIdentifier, and other tools derive it differently (Go 1.25: truncated SHA-256).
 */
function subjectKeyIdentifierOf(afterSpki: der.Element[]): Buffer | undefined {
  const value = extensionValue(afterSpki, OID.subjectKeyIdentifier);
  const [keyId] = value ? der.children(value) : [];
  return keyId ? Buffer.from(keyId.content) : undefined;
}

/** basicConstraints' pathLenConstraint: how many intermediates may follow this CA (undefined: no limit). */
function pathLengthOf(afterSpki: der.Element[]): number | undefined {
  const value = extensionValue(afterSpki, OID.basicConstraints);
  const [constraints] = value ? der.children(value) : [];
  const pathLength = constraints ? der.children(constraints.content).find((e) => e.tag === 0x02) : undefined;
  return pathLength ? pathLength.content.reduce((n, b) => n * 256 + b, 0) : undefined;
}

/** The DER inside the extnValue OCTET STRING of extension `id`, from the TBSCertificate fields after the key. */
function extensionValue(afterSpki: der.Element[], id: string): Buffer | undefined {
  const extensions = afterSpki.find((f) => f.tag === 0xa3);
  const [list] = extensions ? der.children(extensions.content) : [];
  if (!list) return undefined;
  const oid = der.oid(id);
  for (const ext of der.children(list.content)) {
    const parts = der.children(ext.content);
    if (parts[0]?.raw.equals(oid)) return parts.at(-1)?.content;
  }
  return undefined;
}

function caName(trustDomain: string, commonName: string | undefined): Buffer {
  // Istio's self-signed root is O=<trust domain>; keep that, CN optional.
  const rdn = (type: string, value: string): Buffer => der.set(der.sequence(der.oid(type), der.directoryString(value)));
  return der.sequence(rdn(OID.organizationName, trustDomain), ...(commonName === undefined ? [] : [rdn(OID.commonName, commonName)]));
}

function trustDomainOf(cert: X509Certificate, subjectDer: Buffer): string | undefined {
  for (const name of (cert.subjectAltName ?? '').split(', ')) {
    if (name.startsWith('URI:spiffe://')) {
      const td = name.slice('URI:spiffe://'.length).split('/')[0];
      if (td) return td;
    }
  }
  const organization = der.oid(OID.organizationName);
  for (const rdn of der.children(der.readElement(subjectDer).content)) {
    for (const atv of der.children(rdn.content)) {
      const [type, value] = der.children(atv.content);
      if (type && value && type.raw.equals(organization)) return value.content.toString('utf8').toLowerCase();
    }
  }
  return undefined;
}

function assertTrustDomain(td: string): void {
  if (!/^[a-z0-9._-]+$/.test(td)) {
    throw new PkiError('ERR_PKI_TRUST_DOMAIN', `trust domain ${JSON.stringify(td)} is not a valid SPIFFE trust domain (lower-case a-z 0-9 . - _)`);
  }
}

/** Both dates exist and fit the certificate's four-digit years, and notAfter comes after notBefore. */
function assertValidity(notBefore: Date, notAfter: Date): void {
  for (const [name, d] of [['notBefore', notBefore], ['notAfter', notAfter]] as const) {
    const year = d.getUTCFullYear();
    if (!(year >= 0 && year <= 9999)) throw new PkiError('ERR_PKI_VALIDITY', `${name} ${String(d)} is not a date a certificate can carry (years 0000-9999)`);
  }
  if (!(notAfter.getTime() > notBefore.getTime())) {
    throw new PkiError('ERR_PKI_VALIDITY', `notAfter ${notAfter.toISOString()} is not after notBefore ${notBefore.toISOString()}`);
  }
}

function assertPositive(name: string, v: number): void {
  if (!Number.isFinite(v) || v <= 0) {
    throw new PkiError('ERR_PKI_VALIDITY', `${name} must be a positive number, got ${v}`);
  }
}

/** 16 random bytes: top bit clear so the INTEGER is positive without padding, first byte non-zero so it stays 16 bytes. */
function newSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f | 0x01;
  return b.toString('hex');
}

/** The certificate's validity as encoded: whole seconds. */
function wholeSeconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

function certificatePem(certDer: Buffer): string {
  return pemBlock('CERTIFICATE', certDer);
}

function pkcs8Pem(key: KeyObject): string {
  return pemBlock('PRIVATE KEY', key.export({ type: 'pkcs8', format: 'der' }));
}

function pemBlock(label: string, body: Buffer): string {
  const b64 = body.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

function normalizePem(pem: string): string {
  return `${pem.replace(/\r\n/g, '\n').trim()}\n`;
}

/** Splits a PEM bundle into its CERTIFICATE blocks, each normalized to end in one newline. */
export function splitPem(pem: string): string[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map(normalizePem);
}
