import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCa } from '@weir/pki';
import { afterAll, describe, expect, it } from 'vitest';
import { IdentityManager, loadOrCreateCa } from './identity.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('loadOrCreateCa', () => {
  it('creates once under concurrency and every caller gets the same CA', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wzt-ca-'));
    dirs.push(dir);
    const files = { certPath: join(dir, 'ca', 'root-cert.pem'), keyPath: join(dir, 'ca', 'ca-key.pem'), trustDomain: 'cluster.local' };
    const results = await Promise.all([loadOrCreateCa(files), loadOrCreateCa(files), loadOrCreateCa(files)]);
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(new Set(results.map((r) => r.ca.certPem)).size).toBe(1);
    expect((await stat(files.keyPath)).mode & 0o777).toBe(0o600);
    const again = await loadOrCreateCa(files);
    expect(again.created).toBe(false);
    expect(again.ca.rootPem).toBe(results[0]!.ca.rootPem);
  });

  it('names the files when they cannot be loaded', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wzt-ca-'));
    dirs.push(dir);
    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(dir, 'c.pem'), 'nope');
    await writeFile(join(dir, 'k.pem'), 'nope');
    await expect(loadOrCreateCa({ certPath: join(dir, 'c.pem'), keyPath: join(dir, 'k.pem'), trustDomain: 'cluster.local' })).rejects.toThrow(
      /c\.pem .* cannot be loaded/,
    );
  });
});

describe('IdentityManager', () => {
  it('issues P-256 SPIFFE certificates, shares them, and rotates at half-life', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const mgr = new IdentityManager(ca, { ttlSeconds: 2 });
    const id = 'spiffe://cluster.local/ns/ns1/sa/sa-a';
    const rotated: string[] = [];
    const [a, b] = await Promise.all([mgr.acquire(id, (c) => rotated.push(c.serial)), mgr.acquire(id, () => {})]);
    expect(a.cert.serial).toBe(b.cert.serial);
    const x = new X509Certificate(a.cert.certPem);
    expect(x.subjectAltName).toBe(`URI:${id}`);
    expect(x.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(mgr.certificates()).toMatchObject([{ identity: id, state: 'Available', serial: a.cert.serial }]);
    await new Promise((r) => setTimeout(r, 1500));
    expect(rotated.length).toBeGreaterThanOrEqual(1);
    expect(rotated[0]).not.toBe(a.cert.serial);
    a.release();
    b.release();
    expect(mgr.certificates()).toEqual([]);
    mgr.close();
  });

  it('reports a failure for an identity outside the trust domain', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const mgr = new IdentityManager(ca);
    await expect(mgr.acquire('spiffe://other.td/ns/a/sa/b', () => {})).rejects.toThrow(/spiffe:\/\/other\.td\/ns\/a\/sa\/b not issued/);
    mgr.close();
  });
});

describe('IdentityManager during a CA outage', () => {
  it('backs off while the source re-serves its cached certificate, and drops it once expired (fail closed)', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const first = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/a/sa/a', ttlSeconds: 4 });
    const calls: number[] = [];
    const t0 = Date.now();
    // A CaClient in an outage: the cached certificate until it expires, then an error.
    const source = {
      issueWorkloadCertificate: () => {
        calls.push(Date.now() - t0);
        if (calls.length === 1) return Promise.resolve(first);
        return Date.now() < first.notAfter.getTime() ? Promise.resolve(first) : Promise.reject(new Error('CA unavailable'));
      },
    };
    const m = new IdentityManager(source, { ttlSeconds: 4 });
    const { release } = await m.acquire('spiffe://cluster.local/ns/a/sa/a', () => {});
    await new Promise((r) => setTimeout(r, first.notAfter.getTime() - Date.now() + 1500));
    // Half-life at ~2 s, then retries at +1 s, +2 s (capped by expiry): a handful of asks, not one per second forever.
    expect(calls.length).toBeGreaterThanOrEqual(2);
    expect(calls.length).toBeLessThanOrEqual(5);
    const [state] = m.certificates();
    expect(state?.state).not.toBe('Available');
    expect(state?.serial).toBeUndefined();
    release();
    m.close();
  }, 15_000);
});
