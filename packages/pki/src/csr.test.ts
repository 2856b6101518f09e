import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createCertificateSigningRequest, parseCertificateSigningRequest } from './csr.js';
import { PkiError } from './errors.js';
import { LocalCa } from './local-ca.js';
import { handMadeCsr } from '../test/hand-made-csr.js';

const ID = 'spiffe://cluster.local/ns/default/sa/web';
const dir = mkdtempSync(join(tmpdir(), 'weir-pki-csr-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs openssl; stdout and stderr together (3.0 reports `req -verify` verdicts on stderr, exit 0 either way). */
function openssl(args: string[], input?: string): string {
  const r = spawnSync('openssl', args, { encoding: 'utf8', input });
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

/** The error `fn` throws (fails the test when it throws none). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

/** An openssl `req -new` request for a fresh key made with `keyArgs`, asking for ID; the key file is `<name>.key`. */
function opensslCsr(name: string, keyArgs: string[], extra: string[] = []): { csrPem: string; keyFile: string } {
  const keyFile = join(dir, `${name}.key`);
  const keyGen = keyArgs[0] === '-key' ? ['-key', keyArgs[1]!] : ['-newkey', ...keyArgs, '-nodes', '-keyout', keyFile];
  const csrPem = openssl(['req', '-new', ...keyGen, '-subj', '/O=cluster.local', '-addext', `subjectAltName=critical,URI:${ID}`, ...extra]);
  return { csrPem: csrPem.slice(csrPem.indexOf('-----BEGIN')), keyFile: keyArgs[0] === '-key' ? keyArgs[1]! : keyFile };
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

describe('parseCertificateSigningRequest: which keys and signature algorithms it takes', () => {
  const spkiOf = (keyFile: string): Buffer => createPublicKey(readFileSync(keyFile)).export({ type: 'spki', format: 'der' });

  it.each([
    ['RSA 2048, sha256WithRSAEncryption (Istio agent default)', 'rsa2048', ['rsa:2048'], []],
    ['RSA 3072, sha384WithRSAEncryption', 'rsa3072', ['rsa:3072'], ['-sha384']],
    ['EC P-384, ecdsa-with-SHA384 (Istio agent ECC_CURVE=P384)', 'p384', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], ['-sha384']],
    ['EC P-384, ecdsa-with-SHA256', 'p384sha256', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], []],
    ['EC P-256, ecdsa-with-SHA512', 'p256sha512', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], ['-sha512']],
  ])('takes an openssl request: %s', (_, name, keyArgs, extra) => {
    const { csrPem, keyFile } = opensslCsr(name, keyArgs, extra);
    const parsed = parseCertificateSigningRequest(csrPem);
    expect(parsed.identities).toEqual([ID]);
    expect(parsed.publicKeyDer.equals(spkiOf(keyFile))).toBe(true);
  });

  it.each([
    ['RSA 1024', 'rsa1024', ['rsa:1024'], [], /^CSR subjectPublicKeyInfo: RSA key of 1024 bits is shorter than 2048$/],
    ['EC P-521', 'p521', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-521'], [], /^CSR subjectPublicKeyInfo: EC curve secp521r1 is not P-256 or P-384$/],
    ['EC secp256k1', 'k256', ['ec', '-pkeyopt', 'ec_paramgen_curve:secp256k1'], [], /^CSR subjectPublicKeyInfo: EC curve secp256k1 is not P-256 or P-384$/],
    ['Ed25519', 'ed25519', ['ed25519'], [], /^CSR signatureAlgorithm 1\.3\.101\.112 is not supported \(ecdsa-with-SHA256, .*sha512WithRSAEncryption\)$/],
    ['EC P-256 over SHA-1', 'p256sha1', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], ['-sha1'], /^CSR signatureAlgorithm 1\.2\.840\.10045\.4\.1 is not supported/],
    ['RSA-PSS signature', 'pss', ['rsa:2048'], ['-sigopt', 'rsa_padding_mode:pss'], /^CSR signatureAlgorithm 1\.2\.840\.113549\.1\.1\.10 is not supported/],
  ])('refuses an openssl request: %s', (_, name, keyArgs, extra, message) => {
    const { csrPem } = opensslCsr(name, keyArgs, extra);
    expect(openssl(['req', '-verify', '-noout'], csrPem)).toContain('verify OK');
    const err = thrown(() => parseCertificateSigningRequest(csrPem));
    expect(err).toBeInstanceOf(PkiError);
    expect(err).toMatchObject({ code: 'ERR_PKI_INVALID_CSR', message: expect.stringMatching(message) });
  });

  it('refuses a P-256 key written with explicit curve parameters (RFC 5480 wants the named curve; Go refuses them too)', () => {
    const keyFile = join(dir, 'explicit.key');
    openssl(['ecparam', '-name', 'prime256v1', '-param_enc', 'explicit', '-genkey', '-noout', '-out', keyFile]);
    const { csrPem } = opensslCsr('explicit', ['-key', keyFile]);
    expect(() => parseCertificateSigningRequest(csrPem)).toThrow(/^CSR subjectPublicKeyInfo: EC key for P-256 carries explicit curve parameters/);
  });

  it('refuses a signature algorithm for another key type than the request carries, before verifying', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    // Honest labels verify: the hand-made layout is sound.
    expect(parseCertificateSigningRequest(handMadeCsr(rsa, '1.2.840.113549.1.1.11')).identities).toEqual([]);
    expect(parseCertificateSigningRequest(handMadeCsr(ec, '1.2.840.10045.4.3.2')).identities).toEqual([]);
    const cases: [string, RegExp][] = [
      [handMadeCsr(rsa, '1.2.840.10045.4.3.2'), /^CSR signatureAlgorithm ecdsa-with-SHA256 does not match its subjectPublicKeyInfo \(key type rsa\)$/],
      [handMadeCsr(rsa, '1.2.840.10045.4.3.3', 'sha384'), /^CSR signatureAlgorithm ecdsa-with-SHA384 does not match its subjectPublicKeyInfo \(key type rsa\)$/],
      [handMadeCsr(ec, '1.2.840.113549.1.1.11'), /^CSR signatureAlgorithm sha256WithRSAEncryption does not match its subjectPublicKeyInfo \(key type ec\)$/],
      [handMadeCsr(ec, '1.2.3.4'), /^CSR signatureAlgorithm 1\.2\.3\.4 is not supported/],
      // Right family, wrong hash: the label decides the hash, so the signature does not verify.
      [handMadeCsr(ec, '1.2.840.10045.4.3.3', 'sha256'), /^CSR signature does not verify/],
    ];
    for (const [pem, message] of cases) {
      expect(thrown(() => parseCertificateSigningRequest(pem))).toMatchObject({ code: 'ERR_PKI_INVALID_CSR', message: expect.stringMatching(message) });
    }
  });

  it('issues for the RSA and P-384 keys it takes, and LocalCa refuses the keys it does not', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    writeFileSync(join(dir, 'root3.pem'), ca.rootPem);
    for (const name of ['rsa2048', 'p384']) {
      const { publicKeyPem } = parseCertificateSigningRequest(opensslCsr(`${name}-issue`, name === 'p384' ? ['ec', '-pkeyopt', 'ec_paramgen_curve:P-384'] : ['rsa:2048']).csrPem);
      const cert = await ca.issueWorkloadCertificate({ identity: ID, publicKeyPem, ttlSeconds: 600 });
      expect(new X509Certificate(cert.certPem).checkPrivateKey(createPrivateKey(readFileSync(join(dir, `${name}-issue.key`))))).toBe(true);
      writeFileSync(join(dir, `${name}-leaf.pem`), cert.certPem);
      expect(openssl(['verify', '-CAfile', join(dir, 'root3.pem'), join(dir, `${name}-leaf.pem`)])).toContain('OK');
    }
    const spkiPem = (k: KeyObject): string => k.export({ type: 'spki', format: 'pem' }).toString();
    const rsa1024 = spkiPem(generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey);
    const p521 = spkiPem(generateKeyPairSync('ec', { namedCurve: 'secp521r1' }).publicKey);
    await expect(ca.issueWorkloadCertificate({ identity: ID, publicKeyPem: rsa1024 })).rejects.toMatchObject({
      code: 'ERR_PKI_INVALID_KEY',
      message: 'workload publicKeyPem: RSA key of 1024 bits is shorter than 2048',
    });
    await expect(ca.issueWorkloadCertificate({ identity: ID, publicKeyPem: p521 })).rejects.toMatchObject({
      code: 'ERR_PKI_INVALID_KEY',
      message: 'workload publicKeyPem: EC curve secp521r1 is not P-256 or P-384',
    });
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
