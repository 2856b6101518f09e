// InpodProxy.stop() while its start() is still in progress: once stop() has resolved, nothing listens
// in the pod's netns (a leftover 15001/15006/15008/15053 would keep serving, or block the next proxy's
// bind) and the pod's certificate is released, wherever in start() the stop came.
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsMetrics } from '../src/dns/index.js';
import { IdentityManager } from '../src/identity.js';
import { InpodProxy, type InpodProxyOptions } from '../src/inpod-proxy.js';
import { createLogger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { gatedIdentities, requireRoot, uniqueName, waitFor } from './support.js';

const run = promisify(execFile);
const PORTS = [15001, 15006, 15008, 15053];
let name: string;
let netns: Netns;
let ca: LocalCa;

/**
 * Our ports with a socket listening on them in the pod netns (TCP and UDP, as `ss` lists them).
 * Synchronous on purpose: the event loop is blocked while `ss` runs, so a start() still going cannot
 * close what it bound before we look.
 */
function listening(): string[] {
  const stdout = execFileSync('ip', ['netns', 'exec', name, 'ss', '-Hlntu'], { encoding: 'utf8' });
  return stdout.split('\n').filter((l) => PORTS.some((p) => l.includes(`:${p} `)));
}

beforeAll(async () => {
  requireRoot();
  ca = await LocalCa.create({ trustDomain: 'cluster.local' });
  name = uniqueName('s');
  await run('ip', ['netns', 'add', name]);
  await run('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  netns = openNetns(`/var/run/netns/${name}`);
});

afterAll(async () => {
  netns?.close();
  if (name) await run('ip', ['netns', 'del', name]).catch(() => {});
});

function proxy(identities: IdentityManager, extra: Partial<InpodProxyOptions> = {}): InpodProxy {
  return new InpodProxy({
    uid: `uid-${name}`,
    workloadInfo: { name: 'p', namespace: 'ns', serviceAccount: 'sa' },
    netns,
    store: new WorkloadStore(),
    identities,
    trustBundle: ca.rootPem,
    trustDomain: 'cluster.local',
    mark: 1337,
    reusePort: false,
    origSrc: 'auto',
    ipv6: false,
    metrics: new ZtunnelMetrics(),
    logger: createLogger({ write: () => {} }).logger,
    dns: { upstreams: [{ address: '127.0.0.53', port: 53 }], metrics: new DnsMetrics(new Registry()) },
    socks5: true,
    ...extra,
  });
}

const ticks = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('InpodProxy.stop() during start()', () => {
  it.each([false, true])('at 0..40 event-loop turns into start() (awaitCertificate: %s): once stop() resolves nothing listens and the certificate is released', async (awaitCertificate) => {
    const identities = new IdentityManager(ca);
    // Another user keeps the certificate cached, so most stops land in the binding steps, not the fetch.
    const held = await identities.acquire(`spiffe://cluster.local/ns/ns/sa/sa`, () => {});
    const outcomes = new Set<string>();
    try {
      for (let n = 0; n <= 40; n++) {
        const p = proxy(identities, { awaitCertificate });
        const started = p.start().then(
          () => 'started',
          (e: { code?: string }) => String(e.code),
        );
        await ticks(n);
        await p.stop({ deadlineMs: 0 });
        expect(listening(), `stop after ${n} turns`).toEqual([]);
        // Only the other user's subscription is left.
        expect(identities.certificates().length, `stop after ${n} turns`).toBe(1);
        outcomes.add(await started);
        expect(listening(), `after start() settled (${n} turns)`).toEqual([]);
      }
      // Both sides of the race were exercised.
      expect(outcomes).toContain('ERR_ZTUNNEL_PROXY_STOPPED');
    } finally {
      held.release();
      identities.close();
    }
    expect(identities.certificates()).toEqual([]);
  });

  it('during the certificate fetch, which start() does not wait for: once stop() resolves nothing listens, and the certificate is released as it arrives', async () => {
    const { identities, release: issue } = gatedIdentities(ca);
    try {
      const p = proxy(identities);
      await p.start();
      expect(listening().length).toBeGreaterThanOrEqual(5);
      expect(identities.certificates()).toMatchObject([{ state: 'Initializing' }]);
      await p.stop({ deadlineMs: 0 });
      expect(listening()).toEqual([]);
      issue();
      await waitFor('the certificate released', async () => identities.certificates().length === 0);
      expect(listening()).toEqual([]);
    } finally {
      identities.close();
    }
  });

  it('awaitCertificate, during the certificate fetch: stop() resolves at once, start() then binds nothing and releases the certificate', async () => {
    const { identities, release: issue } = gatedIdentities(ca);
    try {
      const p = proxy(identities, { awaitCertificate: true });
      const started = p.start().catch((e: unknown) => e);
      await ticks(3);
      await p.stop({ deadlineMs: 0 });
      expect(listening()).toEqual([]);
      issue();
      expect(await started).toMatchObject({ code: 'ERR_ZTUNNEL_PROXY_STOPPED' });
      expect(listening()).toEqual([]);
      expect(identities.certificates()).toEqual([]);
    } finally {
      identities.close();
    }
  });

  it('a start() that fails on its own (port taken) leaves nothing bound once it rejects, DNS included', async () => {
    const identities = new IdentityManager(ca);
    const first = proxy(identities);
    await first.start();
    try {
      const second = proxy(identities);
      await expect(second.start()).rejects.toBeDefined();
      await second.stop({ deadlineMs: 0 });
      expect(identities.certificates().length).toBe(1);
    } finally {
      await first.stop({ deadlineMs: 0 });
      identities.close();
    }
    expect(listening()).toEqual([]);
    expect(identities.certificates()).toEqual([]);
  });
});
