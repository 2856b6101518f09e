import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCa } from '@weir/pki';
import { afterAll, describe, expect, it } from 'vitest';
import { IdentityManager, loadOrCreateCa, type WorkloadCertificate } from './identity.js';
import type { Logger } from './logger.js';

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

describe('IdentityManager.whenAvailable', () => {
  const id = 'spiffe://cluster.local/ns/ns1/sa/web';

  it('tells an acquirer whose fetch failed when another one gets a certificate for the identity, and only then', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    let fail = true;
    const mgr = new IdentityManager({
      issueWorkloadCertificate: async (o) => {
        if (fail) throw new Error('UNAVAILABLE');
        return ca.issueWorkloadCertificate(o);
      },
    });
    const woken: string[] = [];
    await expect(mgr.acquire(id, () => {})).rejects.toThrow(/UNAVAILABLE/);
    const stop = mgr.whenAvailable(id, () => woken.push('a'));
    const stopOther = mgr.whenAvailable('spiffe://cluster.local/ns/ns1/sa/other', () => woken.push('other'));
    // Another failed fetch for the identity: nothing to take.
    await expect(mgr.acquire(id, () => {})).rejects.toThrow(/UNAVAILABLE/);
    await Promise.resolve();
    expect(woken).toEqual([]);
    fail = false;
    // Pod B of the same identity: the waiting acquirer hears of it, and takes the held one without an ask.
    const b = await mgr.acquire(id, () => {});
    expect(woken).toEqual(['a']);
    const a = await mgr.acquire(id, () => {});
    expect(a.cert.serial).toBe(b.cert.serial);
    stop();
    // Already held when watching starts: told once, soon (not from inside the call).
    const late: string[] = [];
    const stopLate = mgr.whenAvailable(id, () => late.push('late'));
    expect(late).toEqual([]);
    await Promise.resolve();
    expect(late).toEqual(['late']);
    stopLate();
    stopOther();
    a.release();
    b.release();
    mgr.close();
  });

  it('does not tell of a certificate that is already expired when the source answers', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const expired = await ca.issueWorkloadCertificate({ identity: id, ttlSeconds: 1 });
    await new Promise((r) => setTimeout(r, expired.notAfter.getTime() - Date.now() + 50));
    const mgr = new IdentityManager({ issueWorkloadCertificate: () => Promise.resolve(expired) });
    const woken: string[] = [];
    const stop = mgr.whenAvailable(id, () => woken.push('a'));
    const got = await mgr.acquire(id, () => {});
    await Promise.resolve();
    expect(woken).toEqual([]);
    stop();
    got.release();
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

describe('IdentityManager with a source that answers with stale certificates', () => {
  const id = 'spiffe://cluster.local/ns/a/sa/stale';
  /** A source serving `issue()` on every ask, counting asks; a logger keeping warn lines. */
  const counting = (issue: () => Promise<WorkloadCertificate>) => {
    const source = {
      calls: 0,
      answered: 0,
      /** Date.now() at each ask: gaps are lower-bounded by the backoff timers whatever the load. */
      askedAt: [] as number[],
      issueWorkloadCertificate: () => {
        source.calls++;
        source.askedAt.push(Date.now());
        return issue().finally(() => source.answered++);
      },
    };
    return source;
  };
  const warnings = () => {
    const lines: { obj: Record<string, unknown>; msg: string }[] = [];
    const logger: Logger = {
      info: () => {},
      debug: () => {},
      error: () => {},
      warn: (obj: object, msg?: string) => void lines.push({ obj: obj as Record<string, unknown>, msg: msg ?? '' }),
      child: () => logger,
    };
    return { logger, lines };
  };

  it('rotates a fresh certificate at its half-life without a warning, also from a source that caches it until then', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    let cached: WorkloadCertificate | undefined;
    // Like the CA client: the cached certificate before its half-life, a new one from then on.
    const source = counting(async () => {
      if (cached && Date.now() < cached.notBefore.getTime() + (cached.notAfter.getTime() - cached.notBefore.getTime()) / 2) return cached;
      cached = await ca.issueWorkloadCertificate({ identity: id, notBefore: new Date(), notAfter: new Date(Date.now() + 3_000) });
      return cached;
    });
    const { logger, lines } = warnings();
    const m = new IdentityManager(source, { logger });
    const rotated: string[] = [];
    const { release } = await m.acquire(id, (c) => rotated.push(c.serial));
    try {
      await new Promise((r) => setTimeout(r, 3_500));
      expect(rotated.length).toBeGreaterThanOrEqual(1);
      // Every ask got a new certificate: none was answered from the cache, nothing was retried.
      expect(rotated.length).toBe(source.answered - 1);
      expect(lines).toEqual([]);
    } finally {
      release();
      m.close();
    }
  }, 10_000);

  it('backs off instead of looping when the source keeps answering with the certificate it has let expire', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    // Issued 60 s back (past half-life at once), expiring in 1.2 s, then served for ever: a cache that ignores expiry.
    const cert = await ca.issueWorkloadCertificate({ identity: id, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 1_200) });
    let issue = (): Promise<WorkloadCertificate> => Promise.resolve(cert);
    const source = counting(() => issue());
    const { logger, lines } = warnings();
    const m = new IdentityManager(source, { logger });
    const rotated: string[] = [];
    const { release } = await m.acquire(id, (c) => rotated.push(c.serial));
    try {
      await new Promise((r) => setTimeout(r, 2_500));
      // 1 ask, retries at <= 1 s and at the 1.2 s expiry, then >= 2 s backoff: a handful, not thousands.
      expect(source.calls).toBeGreaterThanOrEqual(2);
      expect(source.calls).toBeLessThanOrEqual(5);
      expect(lines.length).toBeGreaterThanOrEqual(1);
      // One warn per ask after the first, naming the identity and the certificate's notAfter.
      expect(lines.length).toBeLessThanOrEqual(source.calls);
      for (const l of lines) {
        expect(l.obj.identity).toBe(id);
        expect(JSON.stringify(l.obj) + l.msg).toContain(cert.notAfter.toISOString());
        expect(l.obj.retry_ms).toBeGreaterThanOrEqual(500);
      }
      // Fail closed: the expired certificate is no longer held.
      expect(m.certificates()[0]).toMatchObject({ state: 'Unavailable', error: expect.stringContaining(`expired at ${cert.notAfter.toISOString()}`) });
      // The source recovers: the next acquirer's fresh certificate also reaches the user holding the expired one.
      issue = () => ca.issueWorkloadCertificate({ identity: id });
      const again = await m.acquire(id, () => {});
      expect(rotated).toEqual([again.cert.serial]);
      expect(m.certificates()[0]).toMatchObject({ state: 'Available', serial: again.cert.serial });
      again.release();
    } finally {
      release();
      m.close();
    }
  }, 10_000);

  it('backs off from a source whose certificate is expired when received, and hands the next valid one to its users', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    const cert = await ca.issueWorkloadCertificate({ identity: id, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() - 1_000) });
    let issue = (): Promise<WorkloadCertificate> => Promise.resolve(cert);
    const source = counting(() => issue());
    const { logger, lines } = warnings();
    const m = new IdentityManager(source, { logger });
    const rotated: string[] = [];
    // The first one is handed out as the source gave it (peers refuse it), never held.
    const first = await m.acquire(id, (c) => rotated.push(c.serial));
    try {
      expect(first.cert.serial).toBe(cert.serial);
      expect(m.certificates()[0]).toMatchObject({ state: 'Unavailable', error: expect.stringContaining(`expired at ${cert.notAfter.toISOString()}`) });
      // Asks at 0 and after 0.5-1 s; the next one is 1-2 s after that. Timers never fire early, so
      // the gaps prove the backoff however late a starved event loop runs them.
      const until = Date.now() + 5_000;
      while (source.calls < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      expect(source.calls, 'the source is asked again after the backoff').toBeGreaterThanOrEqual(2);
      await new Promise((r) => setTimeout(r, 1_000));
      const [a0, a1, a2] = source.askedAt;
      expect(a1! - a0!).toBeGreaterThanOrEqual(495);
      if (a2 !== undefined) expect(a2 - a1!).toBeGreaterThanOrEqual(995);
      expect(lines.length).toBe(source.answered);
      for (const l of lines) expect(l.obj).toMatchObject({ identity: id, serial: cert.serial, expiry: cert.notAfter.toISOString() });
      expect(rotated).toEqual([]);
      issue = () => ca.issueWorkloadCertificate({ identity: id });
      const deadline = Date.now() + 5_000;
      while (rotated.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(rotated, `a valid certificate reaches the user (${source.calls} asks)`).toHaveLength(1);
      expect(m.certificates()[0]).toMatchObject({ state: 'Available', serial: rotated[0] });
    } finally {
      first.release();
      m.close();
    }
  }, 20_000);

  it('backs off while every answer is a new certificate already due for refresh', async () => {
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    // A new serial each time, but issued 60 s back with 50 s left: past half-life on arrival.
    const source = counting(() => ca.issueWorkloadCertificate({ identity: id, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 50_000) }));
    const { logger, lines } = warnings();
    const m = new IdentityManager(source, { logger });
    const rotated: string[] = [];
    const { cert, release } = await m.acquire(id, (c) => rotated.push(c.serial));
    try {
      await new Promise((r) => setTimeout(r, 4_000));
      // Asks at 0, then after 0.5-1 s, 1-2 s, 2-4 s: at most 4 in 4 s (a steady 1 s timer would make 5).
      expect(source.calls).toBeGreaterThanOrEqual(2);
      expect(source.calls).toBeLessThanOrEqual(4);
      // Each one is still valid, so it is used (subscribers get it) while the manager keeps asking.
      expect(rotated.length).toBe(source.answered - 1);
      expect(rotated).not.toContain(cert.serial);
      expect(lines.map((l) => l.obj.identity)).toEqual(Array<string>(source.answered).fill(id));
      expect(m.certificates()[0]?.state).toBe('Available');
    } finally {
      release();
      m.close();
    }
  }, 10_000);
});
