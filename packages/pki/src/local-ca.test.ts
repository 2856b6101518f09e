import { execFile } from 'node:child_process';
import { X509Certificate, createHash, createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as der from './der.js';
import { LocalCa, PkiError, splitPem } from './index.js';

const run = promisify(execFile);
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-pki-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function opensslVerify(rootPem: string, untrusted: string[], leafPem: string, extra: string[] = []): Promise<string> {
  const n = Math.random().toString(36).slice(2);
  const root = join(dir, `${n}-root.pem`);
  const leaf = join(dir, `${n}-leaf.pem`);
  await writeFile(root, rootPem);
  await writeFile(leaf, leafPem);
  const args = ['verify', '-CAfile', root, ...extra];
  if (untrusted.length > 0) {
    const chain = join(dir, `${n}-chain.pem`);
    await writeFile(chain, untrusted.join(''));
    args.push('-untrusted', chain);
  }
  const { stdout } = await run('openssl', [...args, leaf]);
  return stdout;
}

describe('LocalCa', () => {
  it('creates a P-256 root with CA:true and keyCertSign', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local', commonName: 'Weir Root' });
    const cert = new X509Certificate(ca.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.subject).toContain('O=cluster.local');
    expect(cert.subject).toContain('CN=Weir Root');
    expect(cert.checkIssued(cert)).toBe(true);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(ca.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(cert.checkPrivateKey(createPrivateKey(ca.keyPem))).toBe(true);
    expect(ca.rootPem).toBe(ca.certPem);
    const text = await opensslText(ca.certPem);
    expect(text).toMatch(/CA:TRUE/);
    expect(text).toMatch(/Certificate Sign/);
    expect(await opensslVerify(ca.rootPem, [], ca.certPem)).toMatch(/OK/);
  });

  it('issues a workload certificate that chains to the root (node:crypto and openssl verify)', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const id = 'spiffe://cluster.local/ns/default/sa/web';
    const wl = await ca.issueWorkloadCertificate({ identity: id });
    const leaf = new X509Certificate(wl.certPem);
    const root = new X509Certificate(wl.rootPem);
    expect(leaf.checkIssued(root)).toBe(true);
    expect(leaf.verify(root.publicKey)).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(leaf.subjectAltName).toBe(`URI:${id}`);
    expect(leaf.checkPrivateKey(createPrivateKey(wl.keyPem))).toBe(true);
    expect(wl.identity).toBe(id);
    expect(wl.chainPem).toBe(wl.certPem);
    expect(wl.serial).toBe(leaf.serialNumber.toLowerCase());
    const ttl = wl.notAfter.getTime() - wl.notBefore.getTime();
    expect(ttl).toBeGreaterThanOrEqual(86_400_000);
    expect(ttl).toBeLessThanOrEqual(86_400_000 + 120_000);
    const text = await opensslText(wl.certPem);
    expect(text).toMatch(/CA:FALSE/);
    expect(text).toMatch(/Digital Signature, Key Encipherment/);
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(/X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/default\/sa\/web/);
    expect(text).not.toMatch(/DNS:/);
    expect(await opensslVerify(wl.rootPem, [], wl.certPem, ['-purpose', 'sslserver'])).toMatch(/OK/);
    expect(await opensslVerify(wl.rootPem, [], wl.certPem, ['-purpose', 'sslclient'])).toMatch(/OK/);
    // The key really signs: ECDSA P-256 over SHA-256.
    const sig = sign('sha256', Buffer.from('hbone'), createPrivateKey(wl.keyPem));
    expect(verify('sha256', Buffer.from('hbone'), createPublicKey(wl.certPem), sig)).toBe(true);
  });

  it('a certificate from another CA does not verify against this root', async () => {
    const a = await LocalCa.create({ trustDomain: 'cluster.local' });
    const b = await LocalCa.create({ trustDomain: 'cluster.local' });
    const wl = await b.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b' });
    expect(new X509Certificate(wl.certPem).verify(new X509Certificate(a.rootPem).publicKey)).toBe(false);
    await expect(opensslVerify(a.rootPem, [], wl.certPem)).rejects.toThrow(/unable to get local issuer|verification failed/);
  });

  it('issues through an intermediate: chainPem is leaf + intermediate, root kept out', async () => {
    const root = await LocalCa.create({ trustDomain: 'example.org' });
    const inter = await root.issueIntermediate({ commonName: 'Node CA' });
    expect(inter.rootPem).toBe(root.rootPem);
    const wl = await inter.issueWorkloadCertificate({ identity: 'spiffe://example.org/ns/x/sa/y', ttlSeconds: 3600 });
    const chain = splitPem(wl.chainPem);
    expect(chain).toHaveLength(2);
    expect(chain[0]).toBe(wl.certPem);
    expect(chain[1]).toBe(inter.certPem);
    expect(wl.chainPem).not.toContain(splitPem(root.rootPem)[0]!.split('\n')[1]);
    const i = new X509Certificate(inter.certPem);
    expect(new X509Certificate(wl.certPem).checkIssued(i)).toBe(true);
    expect(i.checkIssued(new X509Certificate(root.rootPem))).toBe(true);
    expect(await opensslVerify(wl.rootPem, [inter.certPem], wl.certPem)).toMatch(/OK/);
    await expect(opensslVerify(wl.rootPem, [], wl.certPem)).rejects.toThrow();
  });

  it('loads what it created and keeps issuing verifiable certificates', async () => {
    const ca = await LocalCa.create({ trustDomain: 'td.test' });
    const again = await LocalCa.load({ certPem: ca.certPem, keyPem: ca.keyPem });
    expect(again.trustDomain).toBe('td.test');
    expect(again.certPem).toBe(ca.certPem);
    const wl = await again.issueWorkloadCertificate({ identity: 'spiffe://td.test/ns/n/sa/s' });
    expect(await opensslVerify(ca.rootPem, [], wl.certPem)).toMatch(/OK/);
  });

  it('names a loaded CA by the key identifier its certificate carries, not one it computes', async () => {
    const key = join(dir, 'ski-ca.key');
    const crt = join(dir, 'ski-ca.crt');
    // A SubjectKeyIdentifier no SHA-1 of the key gives (other tools derive it otherwise, e.g. Go 1.25).
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt,
      '-days', '30', '-subj', '/O=cluster.local', '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign',
      '-addext', 'subjectKeyIdentifier=0102030405060708090a0b0c0d0e0f10', '-addext', 'authorityKeyIdentifier=none']);
    const certPem = await readFile(crt, 'utf8');
    const ca = await LocalCa.load({ certPem, keyPem: await readFile(key, 'utf8') });
    const wl = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/default/sa/ski' });
    expect(new X509Certificate(wl.certPem).checkIssued(new X509Certificate(certPem))).toBe(true);
    expect(await opensslVerify(certPem, [], wl.certPem)).toMatch(/OK/);
  });

  it('loads an openssl-made RSA CA with a SEC1/PKCS#1 key (Istio cacerts style) and issues from it', async () => {
    const key = join(dir, 'rsa-ca.key');
    const crt = join(dir, 'rsa-ca.crt');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', crt, '-days', '30',
      '-subj', '/CN=Root CA', '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign']);
    const certPem = await readFile(crt, 'utf8');
    const keyPem = await readFile(key, 'utf8');
    await expect(LocalCa.load({ certPem, keyPem })).rejects.toThrow(PkiError);
    const ca = await LocalCa.load({ certPem, keyPem, trustDomain: 'cluster.local' });
    const wl = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/default/sa/rsa' });
    expect(await opensslVerify(certPem, [], wl.certPem)).toMatch(/OK/);
    const ec = join(dir, 'ec.key');
    await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', ec]);
    const ecPem = await readFile(ec, 'utf8');
    expect(ecPem).toMatch(/BEGIN EC PRIVATE KEY/);
    await expect(LocalCa.load({ certPem, keyPem: ecPem, trustDomain: 'cluster.local' })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_KEY' });
  });

  it('loads a P-384 CA and signs with ecdsa-with-SHA384; refuses a short RSA key naming its size', async () => {
    const key = join(dir, 'p384-ca.key');
    const crt = join(dir, 'p384-ca.crt');
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', key, '-out', crt,
      '-days', '30', '-subj', '/O=cluster.local', '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign']);
    const certPem = await readFile(crt, 'utf8');
    const ca = await LocalCa.load({ certPem, keyPem: await readFile(key, 'utf8') });
    const wl = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/default/sa/p384' });
    expect(await opensslVerify(certPem, [], wl.certPem)).toMatch(/OK/);
    const leafFile = join(dir, 'p384-leaf.crt');
    await writeFile(leafFile, wl.certPem);
    const text = (await promisify(execFile)('openssl', ['x509', '-in', leafFile, '-noout', '-text'])).stdout;
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA384/);
    const inter = await ca.issueIntermediate({ commonName: 'Node CA', validityDays: 7 });
    const below = await inter.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/default/sa/under' });
    expect(await opensslVerify(certPem, [inter.certPem], below.certPem)).toMatch(/OK/);

    const rsaKey = join(dir, 'rsa1024-ca.key');
    const rsaCrt = join(dir, 'rsa1024-ca.crt');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:1024', '-nodes', '-keyout', rsaKey, '-out', rsaCrt, '-days', '30',
      '-subj', '/O=cluster.local', '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign']);
    await expect(LocalCa.load({ certPem: await readFile(rsaCrt, 'utf8'), keyPem: await readFile(rsaKey, 'utf8') })).rejects.toMatchObject({
      code: 'ERR_PKI_INVALID_KEY',
      message: 'CA key of O=cluster.local: RSA key of 1024 bits is shorter than 2048',
    });
  });

  it('loads a CA whose chain runs CA, intermediates, root; refuses a misordered chain or a foreign root', async () => {
    const root = await LocalCa.create({ trustDomain: 'cluster.local' });
    const other = await LocalCa.create({ trustDomain: 'cluster.local' });
    const mid = await root.issueIntermediate({ commonName: 'Node CA', validityDays: 7 });
    const loaded = await LocalCa.load({ certPem: mid.certPem, keyPem: mid.keyPem, chainPem: root.rootPem });
    const wl = await loaded.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b' });
    expect(await opensslVerify(root.rootPem, [mid.certPem], wl.certPem)).toMatch(/OK/);
    await expect(LocalCa.load({ certPem: mid.certPem, keyPem: mid.keyPem, chainPem: other.rootPem + root.rootPem })).rejects.toMatchObject({
      code: 'ERR_PKI_CHAIN',
      message: 'the CA certificate (O=cluster.local\nCN=Node CA) is not signed by the next one (O=cluster.local): the chain must run CA certificate, intermediates, root',
    });
    await expect(LocalCa.load({ certPem: mid.certPem, keyPem: mid.keyPem, rootPem: other.rootPem })).rejects.toMatchObject({
      code: 'ERR_PKI_CHAIN',
      message: expect.stringMatching(/^the CA certificate \(O=cluster.local\nCN=Node CA\) is not signed by the root/),
    });
  });

  it('honours notBefore/notAfter so tests can make expired and not-yet-valid certificates', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local', notBefore: new Date(Date.now() - 10 * 86_400_000) });
    const expired = await ca.issueWorkloadCertificate({
      identity: 'spiffe://cluster.local/ns/a/sa/b',
      notBefore: new Date(Date.now() - 3 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    await expect(opensslVerify(ca.rootPem, [], expired.certPem)).rejects.toThrow(/expired/);
    const future = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b', notBefore: new Date(Date.now() + 86_400_000) });
    await expect(opensslVerify(ca.rootPem, [], future.certPem)).rejects.toThrow(/not yet valid/);
  });

  it('rejects bad identities, foreign trust domains, bad validity and non-CA certificates with typed errors', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local', validityDays: 2 });
    await expect(ca.issueWorkloadCertificate({ identity: 'http://x/ns/a/sa/b' })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_IDENTITY' });
    await expect(ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns//sa/b' })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_IDENTITY' });
    await expect(ca.issueWorkloadCertificate({ identity: 'spiffe://other.td/ns/a/sa/b' })).rejects.toMatchObject({
      code: 'ERR_PKI_TRUST_DOMAIN',
      message: expect.stringContaining('other.td'),
    });
    await expect(ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b', ttlSeconds: 7 * 86_400 })).rejects.toMatchObject({
      code: 'ERR_PKI_VALIDITY',
    });
    await expect(ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b', ttlSeconds: -1 })).rejects.toMatchObject({
      code: 'ERR_PKI_VALIDITY',
    });
    await expect(LocalCa.create({ trustDomain: 'Bad Domain' })).rejects.toMatchObject({ code: 'ERR_PKI_TRUST_DOMAIN' });
    const wl = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b' });
    await expect(LocalCa.load({ certPem: wl.certPem, keyPem: wl.keyPem })).rejects.toMatchObject({ code: 'ERR_PKI_NOT_A_CA' });
    const other = await LocalCa.create({ trustDomain: 'cluster.local' });
    await expect(LocalCa.load({ certPem: ca.certPem, keyPem: other.keyPem })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_KEY' });
    await expect(LocalCa.load({ certPem: 'nope', keyPem: ca.keyPem })).rejects.toMatchObject({ code: 'ERR_PKI_INVALID_CERTIFICATE' });
  });

  it('refuses dates a certificate cannot carry with ERR_PKI_VALIDITY (not a RangeError or a malformed time)', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const id = 'spiffe://cluster.local/ns/a/sa/b';
    await expect(ca.issueWorkloadCertificate({ identity: id, notAfter: new Date('soon') })).rejects.toMatchObject({
      code: 'ERR_PKI_VALIDITY',
      message: 'notAfter Invalid Date is not a date a certificate can carry (years 0000-9999)',
    });
    await expect(ca.issueWorkloadCertificate({ identity: id, notBefore: new Date(Number.NaN) })).rejects.toMatchObject({ code: 'ERR_PKI_VALIDITY' });
    await expect(LocalCa.create({ trustDomain: 'cluster.local', validityDays: 3_000_000 })).rejects.toMatchObject({
      code: 'ERR_PKI_VALIDITY',
      message: expect.stringMatching(/^notAfter .* is not a date a certificate can carry/),
    });
    // The last representable year still encodes and parses (GeneralizedTime).
    const long = await LocalCa.create({ trustDomain: 'cluster.local', notBefore: new Date('9999-01-01T00:00:00Z'), validityDays: 300 });
    expect(new X509Certificate(long.certPem).validTo).toBe('Oct 28 00:00:00 9999 GMT');
  });

  it('refuses server names an IA5String or iPAddress SAN cannot carry', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    for (const dnsNames of [['bücher.example'], [''], ['a b.example']]) {
      await expect(ca.issueServerCertificate({ dnsNames })).rejects.toMatchObject({
        code: 'ERR_PKI_INVALID_IDENTITY',
        message: expect.stringContaining(`DNS name ${JSON.stringify(dnsNames[0])} is not a non-empty ASCII name`),
      });
    }
    const idn = await ca.issueServerCertificate({ dnsNames: ['xn--bcher-kva.example', '*.svc.example'] });
    expect(new X509Certificate(idn.certPem).subjectAltName).toBe('DNS:xn--bcher-kva.example, DNS:*.svc.example');
    await expect(ca.issueServerCertificate({ ipAddresses: ['fe80::1%eth0'] })).rejects.toMatchObject({
      code: 'ERR_PKI_INVALID_IDENTITY',
      message: 'IP address "fe80::1%eth0" has a zone index, which an iPAddress SAN cannot carry',
    });
  });

  it('will not issue an intermediate under a CA whose pathLenConstraint is 0 (own or loaded)', async () => {
    const root = await LocalCa.create({ trustDomain: 'cluster.local' });
    const inter = await root.issueIntermediate({ commonName: 'Node CA' });
    await expect(inter.issueIntermediate()).rejects.toMatchObject({
      code: 'ERR_PKI_NOT_A_CA',
      message: 'CA certificate O=cluster.local\nCN=Node CA has pathLenConstraint 0: verifiers refuse an intermediate under it',
    });
    const key = join(dir, 'pathlen.key');
    const crt = join(dir, 'pathlen.crt');
    for (const [pathlen, allowed] of [['0', false], ['1', true]] as const) {
      await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt,
        '-days', '30', '-subj', '/O=cluster.local', '-addext', `basicConstraints=critical,CA:true,pathlen:${pathlen}`, '-addext', 'keyUsage=critical,keyCertSign']);
      const loaded = await LocalCa.load({ certPem: await readFile(crt, 'utf8'), keyPem: await readFile(key, 'utf8') });
      if (!allowed) {
        await expect(loaded.issueIntermediate({ validityDays: 7 })).rejects.toMatchObject({ code: 'ERR_PKI_NOT_A_CA' });
        continue;
      }
      const below = await loaded.issueIntermediate({ validityDays: 7 });
      const wl = await below.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b' });
      expect(await opensslVerify(loaded.rootPem, [below.certPem], wl.certPem)).toMatch(/OK/);
    }
  });
});

describe('leaf certificates (workload and server share one extension block)', () => {
  const golden = JSON.parse(readFileSync(new URL('./testdata/leaf-tbs-golden.json', import.meta.url), 'utf8')) as {
    caCertPem: string;
    caKeyPem: string;
    workloadPublicKeyPem: string;
    expected: Record<string, string[]>;
  };
  const SKI = der.oid('2.5.29.14').toString('hex');
  const notBefore = new Date('2026-06-01T00:00:00Z');

  /** The TBSCertificate field by field (extensions one by one), random parts named instead of shown. */
  function tbsTemplate(certPem: string, freshKey: boolean): string[] {
    const body = Buffer.from(certPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const [tbs] = der.children(der.readElement(body).content);
    const [version, serial, alg, issuer, validity, subject, spki, exts] = der.children(tbs!.content);
    const [list] = der.children(exts!.content);
    const extensions = der.children(list!.content).map((e) => {
      const parts = der.children(e.content);
      const [id, value] = [parts[0], parts.at(-1)];
      if (id!.raw.toString('hex') !== SKI) return e.raw.toString('hex');
      // The SubjectKeyIdentifier is the SHA-1 of the key's bits, whatever the key.
      const [, bits] = der.children(spki!.content);
      expect(der.readElement(value!.content).content.equals(createHash('sha1').update(bits!.content.subarray(1)).digest())).toBe(true);
      return freshKey ? '<ski>' : e.raw.toString('hex');
    });
    return [
      version!.raw.toString('hex'),
      `<serial ${serial!.content.length}>`,
      ...[alg, issuer, validity, subject].map((f) => f!.raw.toString('hex')),
      freshKey ? '<spki>' : spki!.raw.toString('hex'),
      ...extensions,
    ];
  }

  it('issues the same DER as before the two shared their code (all but serial, fresh key and signature)', async () => {
    const ca = await LocalCa.load({ certPem: golden.caCertPem, keyPem: golden.caKeyPem });
    const forKey = await ca.issueWorkloadCertificate({
      identity: 'spiffe://cluster.local/ns/default/sa/web',
      publicKeyPem: golden.workloadPublicKeyPem,
      notBefore,
      notAfter: new Date('2026-06-02T00:00:00Z'),
    });
    const issued: Record<string, [string, boolean]> = {
      workloadForKey: [forKey.certPem, false],
      workloadFreshKey: [(await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/b', notBefore, ttlSeconds: 3600 })).certPem, true],
      serverDns: [
        (await ca.issueServerCertificate({ dnsNames: ['istiod.istio-system.svc', 'localhost'], ipAddresses: ['127.0.0.1', '::1'], notBefore, validityDays: 30 }))
          .certPem,
        true,
      ],
      serverCn: [(await ca.issueServerCertificate({ dnsNames: ['x.example'], commonName: 'Weir Control Plane', notBefore, validityDays: 30 })).certPem, true],
      serverIpOnly: [(await ca.issueServerCertificate({ ipAddresses: ['10.0.0.1', 'fd00::1'], notBefore, validityDays: 1 })).certPem, true],
    };
    expect(Object.keys(issued).sort()).toEqual(Object.keys(golden.expected).sort());
    for (const [name, [pem, freshKey]] of Object.entries(issued)) {
      expect({ name, tbs: tbsTemplate(pem, freshKey) }).toEqual({ name, tbs: golden.expected[name] });
    }
  });

  it('workload and server leaves differ only in extended key usage and SAN (node:crypto and openssl read them so)', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const wl = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/default/sa/web' });
    const server = await ca.issueServerCertificate({ dnsNames: ['istiod.istio-system.svc'] });
    const w = new X509Certificate(wl.certPem);
    const s = new X509Certificate(server.certPem);
    expect(w.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    expect(s.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
    expect([w.ca, s.ca]).toEqual([false, false]);
    /** openssl's text of the extensions: name (marked critical) to its value lines. */
    const extensions = async (pem: string): Promise<Map<string, string>> => {
      const out = new Map<string, string[]>();
      let values: string[] | undefined;
      for (const line of (await opensslText(pem)).split('\n')) {
        const header = /^ {12}(X509v3 [^:]+):( critical)?\s*$/.exec(line);
        if (header) out.set(`${header[1]}${header[2] ? ' (critical)' : ''}`, (values = []));
        else if (values && /^ {16}\S/.test(line)) values.push(line.trim());
        else values = undefined;
      }
      return new Map([...out].map(([name, lines]) => [name, lines.join(' ')]));
    };

    const we = await extensions(wl.certPem);
    const se = await extensions(server.certPem);
    expect([...we.keys()]).toEqual([
      'X509v3 Basic Constraints (critical)',
      'X509v3 Key Usage (critical)',
      'X509v3 Extended Key Usage',
      'X509v3 Subject Alternative Name (critical)',
      'X509v3 Subject Key Identifier',
      'X509v3 Authority Key Identifier',
    ]);
    // The server certificate has a CN, so its SAN is not critical (RFC 5280 4.2.1.6).
    expect([...se.keys()]).toEqual([...we.keys()].map((k) => (k.startsWith('X509v3 Subject Alternative') ? 'X509v3 Subject Alternative Name' : k)));
    for (const shared of ['X509v3 Basic Constraints (critical)', 'X509v3 Key Usage (critical)', 'X509v3 Authority Key Identifier']) {
      expect(se.get(shared)).toBe(we.get(shared));
    }
    expect(we.get('X509v3 Key Usage (critical)')).toBe('Digital Signature, Key Encipherment');
    expect(we.get('X509v3 Extended Key Usage')).toBe('TLS Web Server Authentication, TLS Web Client Authentication');
    expect(se.get('X509v3 Extended Key Usage')).toBe('TLS Web Server Authentication');
  });
});

async function opensslText(pem: string): Promise<string> {
  const f = join(dir, `${Math.random().toString(36).slice(2)}.pem`);
  await writeFile(f, pem);
  const { stdout } = await run('openssl', ['x509', '-noout', '-text', '-in', f]);
  return stdout;
}
