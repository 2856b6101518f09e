import { readdir } from 'node:fs/promises';
import * as net from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityManager } from '../src/identity.js';
import { InpodManager } from '../src/inpod-manager.js';
import { createLogger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { requireRoot, uniqueName, waitFor } from './support.js';

// The ZDS handler's state machine against real netns (created here with `ip netns`), driven directly.

const run = promisify(execFile);
const names: string[] = [];
let ca: LocalCa;

async function makeNetns(): Promise<string> {
  const name = uniqueName('m');
  await run('ip', ['netns', 'add', name]);
  names.push(name);
  await run('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  return name;
}

const open = (name: string): Netns => openNetns(`/var/run/netns/${name}`);
const info = { name: 'p', namespace: 'ns', serviceAccount: 'sa' };

function manager(retryMs = 200): { m: InpodManager; lines: string[]; metrics: ZtunnelMetrics; identities: IdentityManager } {
  const lines: string[] = [];
  const { logger } = createLogger({ write: (l) => lines.push(l) });
  const metrics = new ZtunnelMetrics();
  const identities = new IdentityManager(ca);
  const m = new InpodManager({
    proxy: { store: new WorkloadStore(), identities, trustBundle: ca.rootPem, trustDomain: 'cluster.local', mark: 1337, reusePort: false, origSrc: 'auto', ipv6: true },
    metrics,
    logger,
    retryMs,
  });
  return { m, lines, metrics, identities };
}

async function listening(name: string): Promise<number[]> {
  const { stdout } = await run('ip', ['netns', 'exec', name, 'ss', '-Htln']);
  return [...stdout.matchAll(/:(\d+)\s/g)].map((x) => Number(x[1])).filter((p) => p >= 15000 && p < 16000);
}

beforeAll(async () => {
  requireRoot();
  ca = await LocalCa.create({ trustDomain: 'cluster.local' });
});

afterAll(async () => {
  for (const n of names) await run('ip', ['netns', 'del', n]).catch(() => {});
});

describe('InpodManager', () => {
  it('is not ready until the snapshot; Add is idempotent per netns; SnapshotSent drops unnamed pods', async () => {
    const { m, lines, metrics, identities } = manager();
    const [ns1, ns2] = [await makeNetns(), await makeNetns()];
    const fdsBefore = (await readdir('/proc/self/fd')).length;
    expect(m.pending()).toEqual(['node agent connection']);
    m.onConnected();
    expect(m.pending()).toEqual(['workload snapshot']);
    await m.onAdd({ uid: 'u1', workloadInfo: info, netns: open(ns1) });
    await m.onAdd({ uid: 'u2', workloadInfo: { ...info, name: 'q' }, netns: open(ns2) });
    await m.onSnapshotSent();
    expect(m.pending()).toEqual([]);
    expect((await listening(ns1)).sort()).toEqual([15001, 15006, 15008]);
    // Reconnect: a new snapshot names only u1 (with a fresh fd for the same netns).
    m.onDisconnected();
    expect(m.pending()).toEqual(['node agent connection']);
    m.onConnected();
    await m.onAdd({ uid: 'u1', workloadInfo: info, netns: open(ns1) });
    await m.onSnapshotSent();
    expect(m.pods().map((p) => [p.uid, p.state])).toEqual([['u1', 'Up']]);
    expect(await listening(ns2)).toEqual([]);
    expect(lines.join('')).toContain('pod not in snapshot, draining proxy');
    expect(await metrics.text()).toMatch(/workload_manager_proxies_started_total 2/);
    expect(await metrics.text()).toMatch(/workload_manager_proxies_stopped_total 1/);
    await m.close({ deadlineMs: 0 });
    expect(await listening(ns1)).toEqual([]);
    identities.close();
    // Every netns handle and listener the manager was given or made is closed again.
    await new Promise((r) => setTimeout(r, 100));
    expect((await readdir('/proc/self/fd')).length).toBe(fdsBefore);
  });

  it('replaces the proxy when the same uid comes with a different netns', async () => {
    const { m, identities } = manager();
    const [ns1, ns2] = [await makeNetns(), await makeNetns()];
    m.onConnected();
    await m.onAdd({ uid: 'u1', workloadInfo: info, netns: open(ns1) });
    await m.onAdd({ uid: 'u1', workloadInfo: info, netns: open(ns2) });
    expect(await listening(ns1)).toEqual([]);
    expect((await listening(ns2)).sort()).toEqual([15001, 15006, 15008]);
    await m.onDel('u1');
    expect(await listening(ns2)).toEqual([]);
    expect(m.pods()).toEqual([]);
    await m.close({ deadlineMs: 0 });
    identities.close();
  });

  it('nacks a proxy that cannot bind, keeps it Pending (not ready) and retries until it starts', async () => {
    // The retry comes late enough for the check below to see what the failed start left (nothing
    // but the blocker), also on a loaded machine: a retry in progress holds 15001 for a moment.
    const { m, lines, identities } = manager(2000);
    const ns = await makeNetns();
    // Something else holds 15006 in the pod (no SO_REUSEPORT on either side).
    const blocker = net.createServer();
    const { listenTcp } = await import('@weir/netns');
    const handle = open(ns);
    await listenTcp({ netns: handle, host: '::', port: 15006 }, blocker);
    m.onConnected();
    await expect(m.onAdd({ uid: 'u1', workloadInfo: info, netns: open(ns) })).rejects.toThrow(/pod u1: cannot listen on \[::\]:15006/);
    await m.onSnapshotSent();
    expect(m.pending()).toEqual(['pod u1']);
    expect(m.pods()[0]).toMatchObject({ uid: 'u1', state: 'Pending' });
    expect(await listening(ns)).toEqual([15006]);
    await new Promise<void>((r) => blocker.close(() => r()));
    handle.close();
    await waitFor('proxy up after retry', async () => m.pods()[0]?.state === 'Up', 10_000);
    expect(m.pending()).toEqual([]);
    expect(lines.join('')).toContain('retrying proxy start');
    await m.close({ deadlineMs: 0 });
    identities.close();
  });
});
