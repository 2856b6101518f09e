import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createCertificateSigningRequest, parseCertificateSigningRequest } from './csr.js';
import { PkiError } from './errors.js';
import { LocalCa } from './local-ca.js';

const ID = 'spiffe://cluster.local/ns/default/sa/web';
const dir = mkdtempSync(join(tmpdir(), 'weir-pki-csr-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs openssl; stdout and stderr together (3.0 reports `req -verify` verdicts on stderr, exit 0 either way). */
function openssl(args: string[]): string {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  if (r.error) throw new Error(`this test needs the openssl CLI on PATH: ${r.error.message}`, { cause: r.error });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed (exit ${r.status}): ${r.stderr}`);
  return r.stdout + r.stderr;
}

/** Flips one bit of the DER inside a PEM block at `offset` bytes from the end of the body. */
function tamper(pem: string, fromEnd: number): string {
  const body = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  body[body.length - fromEnd]! ^= 0x01;
  return `-----BEGIN CERTIFICATE REQUEST-----\n${body.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
}

describe('createCertificateSigningRequest', () => {
  it('writes a request openssl verifies: v1, empty subject, P-256 key, critical URI SAN, ecdsa-with-SHA256 (as ztunnel)', async () => {
    const { csrPem, keyPem, publicKeyDer } = await createCertificateSigningRequest({ identity: ID });
    const file = join(dir, 'x.csr');
    writeFileSync(file, csrPem);
    const text = openssl(['req', '-in', file, '-verify', '-noout', '-text']);
    expect(text).toMatch(/Version: 1 \(0x0\)/);
    expect(text).toMatch(/Subject:\s*\n/);
    expect(text).toContain('ASN1 OID: prime256v1');
    expect(text).toMatch(/X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/web\n/);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).toContain('self-signature verify OK');
    const key = createPrivateKey(keyPem);
    expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(createPublicKey(key).export({ type: 'spki', format: 'der' }).equals(publicKeyDer)).toBe(true);
  });

  it('openssl rejects a request whose signature was altered', async () => {
    const { csrPem } = await createCertificateSigningRequest({ identity: ID });
    const file = join(dir, 'bad.csr');
    writeFileSync(file, tamper(csrPem, 3));
    expect(openssl(['req', '-in', file, '-verify', '-noout'])).toMatch(/verify failure/);
  });

  it('uses a given P-256 key and refuses other keys and non-SPIFFE identities', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const keyPem = privateKey.export({ type: 'sec1', format: 'pem' }).toString();
    const csr = await createCertificateSigningRequest({ identity: ID, keyPem });
    expect(parseCertificateSigningRequest(csr.csrPem).publicKeyDer.equals(createPublicKey(privateKey).export({ type: 'spki', format: 'der' }))).toBe(true);
    expect(createPrivateKey(csr.keyPem).export({ type: 'pkcs8', format: 'der' }).equals(privateKey.export({ type: 'pkcs8', format: 'der' }))).toBe(true);

    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await expect(createCertificateSigningRequest({ identity: ID, keyPem: rsa })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_KEY', message: /rsa.*not EC P-256/ });
    await expect(createCertificateSigningRequest({ identity: ID, keyPem: 'nope' })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_KEY' });
    await expect(createCertificateSigningRequest({ identity: 'https://x/y' })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_IDENTITY' });
  });
});

describe('parseCertificateSigningRequest', () => {
  it('round-trips: the identity and public key come back, signature verified', async () => {
    const { csrPem, publicKeyDer } = await createCertificateSigningRequest({ identity: ID });
    const parsed = parseCertificateSigningRequest(csrPem);
    expect(parsed.identities).toEqual([ID]);
    expect(parsed.publicKeyDer.equals(publicKeyDer)).toBe(true);
    expect(createPublicKey(parsed.publicKeyPem).export({ type: 'spki', format: 'der' }).equals(publicKeyDer)).toBe(true);
  });

  it('reads an openssl-made request (another writer) with its URI SAN', () => {
    const keyFile = join(dir, 'o.key');
    writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const pem = openssl(['req', '-new', '-key', keyFile, '-subj', '/O=cluster.local', '-addext', `subjectAltName=critical,URI:${ID},DNS:x.example`]);
    expect(parseCertificateSigningRequest(pem).identities).toEqual([ID]);
  });

  it('rejects a tampered request with a PkiError naming what failed', async () => {
    const { csrPem } = await createCertificateSigningRequest({ identity: ID });
    // A bit of the SAN URI (inside the signed info): signature no longer verifies.
    const body = Buffer.from(csrPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const at = body.indexOf(Buffer.from('sa/web'));
    body[at + 3] = 'x'.charCodeAt(0);
    const altered = `-----BEGIN CERTIFICATE REQUEST-----\n${body.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    const err = (() => {
      try {
        parseCertificateSigningRequest(altered);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(PkiError);
    expect(err).toMatchObject({ code: 'ERR_PKI_INVALID_CSR', message: /signature does not verify/ });

    expect(() => parseCertificateSigningRequest(tamper(csrPem, 3))).toThrow(/signature does not verify/);
    expect(() => parseCertificateSigningRequest('hello')).toThrow(/no PEM CERTIFICATE REQUEST block/);
    const truncated = `-----BEGIN CERTIFICATE REQUEST-----\n${body.subarray(0, body.length - 10).toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(() => parseCertificateSigningRequest(truncated)).toThrow(/does not parse as PKCS#10: .*runs past the end/);
  });
});

describe('LocalCa issuing for a CSR key', () => {
  it('issues a workload certificate for the CSR key; openssl verifies it against the root', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const { csrPem, keyPem } = await createCertificateSigningRequest({ identity: ID });
    const { identities, publicKeyPem } = parseCertificateSigningRequest(csrPem);
    const cert = await ca.issueWorkloadCertificate({ identity: identities[0]!, publicKeyPem, ttlSeconds: 600 });
    expect('keyPem' in cert).toBe(false);
    const x = new X509Certificate(cert.certPem);
    expect(x.checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
    expect(x.subjectAltName).toBe(`URI:${ID}`);
    expect(x.verify(createPublicKey(ca.certPem))).toBe(true);
    writeFileSync(join(dir, 'root.pem'), ca.rootPem);
    writeFileSync(join(dir, 'leaf.pem'), cert.certPem);
    expect(openssl(['verify', '-CAfile', join(dir, 'root.pem'), join(dir, 'leaf.pem')])).toContain('OK');
    await expect(ca.issueWorkloadCertificate({ identity: ID, publicKeyPem: 'junk' })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_KEY' });
  });

  it('issues a TLS server certificate with DNS and IP SANs that verifies as serverAuth for those names', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const s = await ca.issueServerCertificate({ dnsNames: ['localhost', 'istiod.istio-system.svc'], ipAddresses: ['127.0.0.1', '::1', '::ffff:10.0.0.1'] });
    const x = new X509Certificate(s.certPem);
    expect(x.subjectAltName).toBe('DNS:localhost, DNS:istiod.istio-system.svc, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:0:0:0:0:0:FFFF:A00:1');
    expect(x.checkHost('localhost')).toBe('localhost');
    expect(x.checkIP('::1')).toBe('::1');
    expect(x.checkPrivateKey(createPrivateKey(s.keyPem))).toBe(true);
    writeFileSync(join(dir, 'root2.pem'), ca.rootPem);
    writeFileSync(join(dir, 'server.pem'), s.certPem);
    expect(openssl(['verify', '-purpose', 'sslserver', '-CAfile', join(dir, 'root2.pem'), join(dir, 'server.pem')])).toContain('OK');
    await expect(ca.issueServerCertificate({})).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_IDENTITY' });
    await expect(ca.issueServerCertificate({ ipAddresses: ['300.1.1.1'] })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_IDENTITY' });
  });
});
