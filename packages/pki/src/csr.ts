import { createPrivateKey, createPublicKey, generateKeyPair, sign, verify, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import * as der from './der.js';
import { PkiError } from './errors.js';
import { workloadKeyProblem } from './key-policy.js';
import { parseSpiffeUri } from './spiffe.js';

const generateKeyPairAsync = promisify(generateKeyPair);

const OID_ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';

export interface CreateCsrOptions {
  /** The SPIFFE ID to request, carried as the request's only (URI) SAN. */
  identity: string;
  /** An existing EC P-256 private key (PKCS#8 or SEC1 PEM) to request for; default a fresh one. */
  keyPem?: string;
}

export interface CertificateSigningRequest {
  /** PKCS#10 request, PEM (`CERTIFICATE REQUEST`). */
  csrPem: string;
  /** The request's private key, PKCS#8 PEM. */
  keyPem: string;
  /** The request's public key, SubjectPublicKeyInfo DER (to check the returned certificate against). */
  publicKeyDer: Buffer;
}

export interface ParsedCertificateSigningRequest {
  /** URI SANs of the extensionRequest, in order (a ztunnel CSR has exactly one: the SPIFFE ID). */
  identities: string[];
  /** The requested public key, SubjectPublicKeyInfo PEM. */
  publicKeyPem: string;
  /** The requested public key, SubjectPublicKeyInfo DER. */
  publicKeyDer: Buffer;
}

/**
 * A PKCS#10 request as Istio's ztunnel sends to `IstioCertificateService/CreateCertificate`: empty
 * subject, ECDSA P-256 key, one extensionRequest holding a critical SAN with the SPIFFE URI, signed
 * ecdsa-with-SHA256.
 */
export async function createCertificateSigningRequest(o: CreateCsrOptions): Promise<CertificateSigningRequest> {
  parseSpiffeUri(o.identity);
  const privateKey = o.keyPem === undefined ? (await generateKeyPairAsync('ec', { namedCurve: 'prime256v1' })).privateKey : loadP256Key(o.keyPem);
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const san = der.sequence(
    der.oid(OID_SUBJECT_ALT_NAME),
    der.boolean(true),
    der.octetString(der.sequence(der.implicitPrimitive(6, Buffer.from(o.identity, 'latin1')))),
  );
  const info = der.sequence(
    der.smallInteger(0),
    der.sequence(),
    spki,
    der.explicit(0, der.sequence(der.oid(OID_EXTENSION_REQUEST), der.set(der.sequence(san)))),
  );
  const algorithm = der.sequence(der.oid(OID_ECDSA_WITH_SHA256));
  // node:crypto's ECDSA signatures are DER (Ecdsa-Sig-Value), as PKCS#10 wants.
  const csr = der.sequence(info, algorithm, der.bitString(sign('sha256', info, privateKey)));
  return {
    csrPem: pemBlock('CERTIFICATE REQUEST', csr),
    keyPem: pemBlock('PRIVATE KEY', privateKey.export({ type: 'pkcs8', format: 'der' })),
    publicKeyDer: spki,
  };
}

/** Signature algorithms a request may use, by OID: SHA-2 ECDSA or RSA PKCS#1 v1.5, as Go (istiod) verifies them. */
const SIGNATURE_ALGORITHMS: Record<string, { name: string; keyType: 'ec' | 'rsa'; hash: string }> = {
  [OID_ECDSA_WITH_SHA256]: { name: 'ecdsa-with-SHA256', keyType: 'ec', hash: 'sha256' },
  '1.2.840.10045.4.3.3': { name: 'ecdsa-with-SHA384', keyType: 'ec', hash: 'sha384' },
  '1.2.840.10045.4.3.4': { name: 'ecdsa-with-SHA512', keyType: 'ec', hash: 'sha512' },
  '1.2.840.113549.1.1.11': { name: 'sha256WithRSAEncryption', keyType: 'rsa', hash: 'sha256' },
  '1.2.840.113549.1.1.12': { name: 'sha384WithRSAEncryption', keyType: 'rsa', hash: 'sha384' },
  '1.2.840.113549.1.1.13': { name: 'sha512WithRSAEncryption', keyType: 'rsa', hash: 'sha512' },
};

/**
 * Parses a PKCS#10 request and verifies its self-signature; returns the URI SANs it asks for and its
 * public key. Accepts what Istio's CA signs for: an EC P-256/P-384 key (ztunnel sends P-256) signed
 * ecdsa-with-SHA256/384/512, or an RSA key of at least 2048 bits signed sha256/384/512WithRSAEncryption.
 * Anything else, and a signature algorithm for another key type than the request's, throws
 * `ERR_PKI_INVALID_CSR` naming the field and the value seen.
 */
export function parseCertificateSigningRequest(pem: string): ParsedCertificateSigningRequest {
  const m = /-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([\s\S]*?)-----END (?:NEW )?CERTIFICATE REQUEST-----/.exec(pem);
  if (!m?.[1]) throw invalid('CSR holds no PEM CERTIFICATE REQUEST block');
  const bytes = Buffer.from(m[1].replace(/\s+/g, ''), 'base64');
  let info: der.Element;
  let algorithm: der.Element;
  let signature: der.Element;
  let spki: der.Element;
  let attributes: der.Element | undefined;
  let algorithmOid: der.Element | undefined;
  try {
    const outer = der.readElement(bytes);
    if (outer.tag !== 0x30 || outer.raw.length !== bytes.length) throw new Error('not one DER SEQUENCE');
    const top = der.children(outer.content);
    if (top.length !== 3 || top[0] === undefined || top[1] === undefined || top[2] === undefined) throw new Error(`${top.length} top-level elements, expected 3`);
    [info, algorithm, signature] = [top[0], top[1], top[2]];
    const fields = der.children(info.content);
    const [version, subject, key, attrs] = fields;
    if (version?.tag !== 0x02 || subject?.tag !== 0x30 || key?.tag !== 0x30) throw new Error('CertificationRequestInfo is not version, subject, subjectPKInfo');
    if (!version.content.equals(Buffer.from([0]))) throw new Error(`version ${version.content.toString('hex')}, expected 0 (v1)`);
    if (fields.length > 4 || (attrs !== undefined && attrs.tag !== 0xa0)) throw new Error('CertificationRequestInfo holds something other than one [0] attributes after subjectPKInfo');
    spki = key;
    attributes = attrs;
    if (algorithm.tag !== 0x30) throw new Error('signatureAlgorithm is not an AlgorithmIdentifier SEQUENCE');
    algorithmOid = der.children(algorithm.content)[0];
    if (signature.tag !== 0x03 || signature.content[0] !== 0) throw new Error('signature is not a BIT STRING of whole bytes');
  } catch (cause) {
    throw invalid(`CSR does not parse as PKCS#10: ${(cause as Error).message}`, cause);
  }
  const algorithmName = algorithmOid?.tag === 0x06 ? oidString(algorithmOid.content) : '(none)';
  const signatureAlgorithm = SIGNATURE_ALGORITHMS[algorithmName];
  if (signatureAlgorithm === undefined) {
    const known = Object.values(SIGNATURE_ALGORITHMS).map((a) => a.name).join(', ');
    throw invalid(`CSR signatureAlgorithm ${algorithmName} is not supported (${known})`);
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: Buffer.from(spki.raw), format: 'der', type: 'spki' });
  } catch (cause) {
    throw invalid(`CSR subjectPublicKeyInfo is not a usable public key: ${String(cause)}`, cause);
  }
  if (publicKey.asymmetricKeyType !== signatureAlgorithm.keyType) {
    throw invalid(`CSR signatureAlgorithm ${signatureAlgorithm.name} does not match its subjectPublicKeyInfo (key type ${publicKey.asymmetricKeyType})`);
  }
  const keyProblem = workloadKeyProblem(publicKey);
  if (keyProblem !== undefined) throw invalid(`CSR subjectPublicKeyInfo: ${keyProblem}`);
  if (!verify(signatureAlgorithm.hash, info.raw, publicKey, signature.content.subarray(1))) {
    throw invalid('CSR signature does not verify against its own public key (the request was altered or signed with another key)');
  }
  return { identities: attributes ? uriSans(attributes) : [], publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(), publicKeyDer: Buffer.from(spki.raw) };
}

/** URI SANs in the extensionRequest attribute of the `[0] attributes` element. */
function uriSans(attributes: der.Element): string[] {
  const out: string[] = [];
  try {
    for (const attribute of der.children(attributes.content)) {
      const [type, values] = der.children(attribute.content);
      if (!type?.raw.equals(der.oid(OID_EXTENSION_REQUEST)) || !values) continue;
      for (const extensions of der.children(values.content)) {
        for (const ext of der.children(extensions.content)) {
          const parts = der.children(ext.content);
          if (!parts[0]?.raw.equals(der.oid(OID_SUBJECT_ALT_NAME))) continue;
          const value = parts.at(-1);
          if (value?.tag !== 0x04) throw new Error('subjectAltName without an OCTET STRING value');
          for (const name of der.children(der.readElement(value.content).content)) {
            if (name.tag === 0x86) out.push(name.content.toString('latin1'));
          }
        }
      }
    }
  } catch (cause) {
    throw invalid(`CSR extensionRequest does not parse: ${(cause as Error).message}`, cause);
  }
  return out;
}

function loadP256Key(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (cause) {
    throw new PkiError('ERR_PKI_INVALID_KEY', `CSR keyPem does not parse as a private key: ${String(cause)}`, { cause });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    const detail = key.asymmetricKeyDetails?.namedCurve ?? '';
    throw new PkiError('ERR_PKI_INVALID_KEY', `CSR key type ${key.asymmetricKeyType ?? '?'} ${detail} is not EC P-256`);
  }
  return key;
}

function invalid(message: string, cause?: unknown): PkiError {
  return new PkiError('ERR_PKI_INVALID_CSR', message, cause === undefined ? undefined : { cause });
}

function oidString(content: Buffer): string {
  const arcs: number[] = [];
  let v = 0;
  for (const b of content) {
    v = v * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      if (arcs.length === 0) arcs.push(Math.min(2, Math.floor(v / 40)), v - 40 * Math.min(2, Math.floor(v / 40)));
      else arcs.push(v);
      v = 0;
    }
  }
  return arcs.join('.');
}

function pemBlock(label: string, body: Buffer): string {
  const b64 = body.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}
