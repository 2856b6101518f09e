// CaClient against a real Istio-CA-shaped server (grpc-js, TLS, bearer token): certificates per
// identity from CSRs, rotation through the IdentityManager without dropping live TLS connections,
// and a CA outage served from the cache until expiry.
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CaClient } from '../src/ca-client/ca-client.js';
import { IdentityManager, type WorkloadCertificate } from '../src/identity.js';
import { TestControlPlane, recordingLogger, waitFor, type LogLine } from './support-control-plane.js';

let cp: TestControlPlane;
let ca: CaClient;
let lines: LogLine[];

function caClient(extra: Partial<ConstructorParameters<typeof CaClient>[0]> = {}): CaClient {
  lines = [];
  ca = new CaClient({
    address: `https://${cp.address}`,
    rootCaPem: cp.rootCaPem,
    trustBundlePem: 'unset\n',
    token: () => cp.token ?? undefined,
    clusterId: 'c1',
    retry: { attempts: 2, initialMs: 20, maxMs: 50 },
    logger: recordingLogger(lines),
    ...extra,
  });
  return ca;
}

const A = 'spiffe://cluster.local/ns/default/sa/web';
const B = 'spiffe://cluster.local/ns/data/sa/db';

afterEach(async () => {
  ca?.close();
  await cp?.close();
});

describe('CaClient', () => {
  beforeEach(async () => {
    cp = await TestControlPlane.start();
  });

  it('issues an ECDSA P-256 certificate per identity, impersonating it, and takes the trust bundle from the response', async () => {
    caClient();
    const a = await ca.issueWorkloadCertificate({ identity: A });
    expect(cp.issued).toHaveLength(1);
    expect(cp.issued[0]).toMatchObject({ identity: A, impersonated: A, serial: a.serial });
    const leaf = new X509Certificate(a.certPem);
    expect(leaf.subjectAltName).toBe(`URI:${A}`);
    expect(leaf.publicKey.asymmetricKeyDetails).toMatchObject({ namedCurve: 'prime256v1' });
    expect(leaf.checkPrivateKey((await import('node:crypto')).createPrivateKey(a.keyPem))).toBe(true);
    expect(leaf.verify(new X509Certificate(cp.rootCaPem).publicKey)).toBe(true);
    expect(a.rootPem).toBe(cp.rootCaPem);
    expect(ca.rootPem).toBe(cp.rootCaPem);
    expect(a.chainPem).toBe(a.certPem);
    expect(a.identity).toBe(A);
    expect(a.notAfter.getTime() - a.notBefore.getTime()).toBeGreaterThan(86_000_000);

    // Cached per identity: the same identity again costs no CA call; another identity does.
    expect(await ca.issueWorkloadCertificate({ identity: A })).toBe(a);
    const [b1, b2] = await Promise.all([ca.issueWorkloadCertificate({ identity: B }), ca.issueWorkloadCertificate({ identity: B })]);
    expect(b1).toBe(b2);
    expect(cp.issued.map((i) => i.identity)).toEqual([A, B]);
    expect(ca.certificates().map((c) => [c.identity, c.serial])).toEqual([
      [A, a.serial],
      [B, b1.serial],
    ]);
  });

  it('fails clearly when the CA refuses the token', async () => {
    caClient({ token: () => 'wrong' });
    await expect(ca.issueWorkloadCertificate({ identity: A })).rejects.toMatchObject({
      code: 'ERR_ZTUNNEL_CA',
      message: expect.stringMatching(/did not issue a certificate for spiffe:\/\/cluster.local\/ns\/default\/sa\/web: UNAUTHENTICATED/),
    });
    expect(lines.some((l) => l.level === 'error' && l.msg === 'CA unavailable, no certificate for identity')).toBe(true);
  });

  it('refuses a CA whose server certificate does not chain to CA_ROOT_CA', async () => {
    const other = await TestControlPlane.start();
    try {
      caClient({ rootCaPem: other.rootCaPem });
      await expect(ca.issueWorkloadCertificate({ identity: A })).rejects.toThrow(/UNAVAILABLE/);
      expect(cp.issued).toHaveLength(0);
    } finally {
      await other.close();
    }
  });

  it('rejects an identity the CA will not sign for', async () => {
    caClient();
    await expect(ca.issueWorkloadCertificate({ identity: 'spiffe://other.td/ns/a/sa/b' })).rejects.toThrow(/INVALID_ARGUMENT: identity .* outside trust domain/);
  });
});

describe('CaClient with short-lived certificates', () => {
  beforeEach(async () => {
    cp = await TestControlPlane.start({ certTtlSeconds: 4 });
  });

  it('rotates at half-life through the IdentityManager without dropping a live TLS connection', async () => {
    caClient();
    const ids = new IdentityManager(ca, { ttlSeconds: 4 });
    const rotated: WorkloadCertificate[] = [];
    let server: tls.Server | undefined;
    let conn: tls.TLSSocket | undefined;
    try {
      const { cert, release } = await ids.acquire(A, (c) => {
        rotated.push(c);
        server?.setSecureContext({ key: c.keyPem, cert: c.chainPem });
      });
      server = tls.createServer({ key: cert.keyPem, cert: cert.chainPem, minVersion: 'TLSv1.3' }, (s) => s.pipe(s));
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      const port = (server.address() as AddressInfo).port;
      const connect = async (): Promise<tls.TLSSocket> => {
        const s = tls.connect({ host: '127.0.0.1', port, ca: cp.rootCaPem, checkServerIdentity: () => undefined });
        await once(s, 'secureConnect');
        return s;
      };
      conn = await connect();
      const firstSerial = conn.getPeerX509Certificate()!.serialNumber.toLowerCase();
      expect(firstSerial).toBe(cert.serial);

      await waitFor('rotation', () => rotated.length > 0, 6000);
      expect(rotated[0]!.serial).not.toBe(cert.serial);
      expect(cp.issued.length).toBeGreaterThanOrEqual(2);
      // The old connection still carries bytes; a new one gets the new certificate.
      conn.write('still here');
      const [echo] = (await once(conn, 'data')) as [Buffer];
      expect(echo.toString()).toBe('still here');
      const fresh = await connect();
      expect(fresh.getPeerX509Certificate()!.serialNumber.toLowerCase()).toBe(rotated.at(-1)!.serial);
      fresh.destroy();
      expect(ids.certificates()[0]).toMatchObject({ identity: A, state: 'Available', serial: rotated.at(-1)!.serial });
      release();
    } finally {
      conn?.destroy();
      server?.close();
      ids.close();
    }
  });

  it('serves the cached certificate through a CA outage until it expires, and logs it', async () => {
    caClient();
    const first = await ca.issueWorkloadCertificate({ identity: A });
    cp.caAvailable = false;
    // Past half-life the client asks again; the CA is down, so the cached one is served.
    await new Promise((r) => setTimeout(r, first.notBefore.getTime() + (first.notAfter.getTime() - first.notBefore.getTime()) / 2 - Date.now() + 50));
    expect(await ca.issueWorkloadCertificate({ identity: A })).toBe(first);
    const warn = lines.find((l) => l.msg === 'CA unavailable, serving the cached certificate until it expires');
    expect(warn?.level).toBe('warn');
    expect(warn?.obj).toMatchObject({ identity: A, serial: first.serial, expiry: first.notAfter.toISOString(), error: expect.stringMatching(/UNAVAILABLE/) });
    expect(lines.filter((l) => l.msg === 'CA request failed, retrying').length).toBeGreaterThanOrEqual(1);
    expect(ca.certificates()[0]?.lastError).toMatch(/UNAVAILABLE/);

    // After expiry there is nothing safe to serve: a clear error.
    await new Promise((r) => setTimeout(r, first.notAfter.getTime() - Date.now() + 100));
    await expect(ca.issueWorkloadCertificate({ identity: A })).rejects.toMatchObject({ code: 'ERR_ZTUNNEL_CA' });
    expect(lines.some((l) => l.level === 'error' && l.msg === 'CA unavailable and the cached certificate has expired')).toBe(true);

    // The CA comes back: issuing resumes.
    cp.caAvailable = true;
    const again = await ca.issueWorkloadCertificate({ identity: A });
    expect(again.serial).not.toBe(first.serial);
  });
});
