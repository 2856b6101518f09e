import { randomBytes, webcrypto } from 'node:crypto';
import {
  Pkcs10CertificateRequestGenerator,
  SubjectAlternativeNameExtension,
  X509CertificateGenerator,
} from '@peculiar/x509';

// @peculiar/x509 is typed against the DOM's Crypto; Node's webcrypto is the same API.
export type X509Crypto = NonNullable<Parameters<typeof X509CertificateGenerator.create>[1]>;
export const x509Crypto = webcrypto as unknown as X509Crypto;
export const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
export const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;

export function pemBlock(label: string, der: ArrayBuffer | Uint8Array): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

/** Splits a PEM bundle into its certificates, each normalised to end with one newline. */
export function splitCertificates(pem: string): string[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map((c) => `${c.replace(/\r\n/g, '\n')}\n`);
}

export function newSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
}

/**
 * A fresh ECDSA P-256 key and a PKCS#10 request for it whose only name is the SPIFFE URI SAN (empty
 * subject, as ztunnel's CSRs).
 */
export async function createCsr(identity: string): Promise<{ csrPem: string; keyPem: string; publicKeyDer: Uint8Array }> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const csr = await Pkcs10CertificateRequestGenerator.create(
    {
      keys: keys as never,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [new SubjectAlternativeNameExtension([{ type: 'url', value: identity }], true)],
    },
    x509Crypto,
  );
  return {
    csrPem: csr.toString('pem'),
    keyPem: pemBlock('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)),
    publicKeyDer: new Uint8Array(await webcrypto.subtle.exportKey('spki', keys.publicKey)),
  };
}
