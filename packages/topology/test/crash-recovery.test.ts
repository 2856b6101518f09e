import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Topology, isSameProcess, probeTcp } from '../src/index.js';
import { netnsOwnedBy, requirePrerequisites, rootNetnsView, running, uniqueName } from './helpers.js';

const child = fileURLToPath(new URL('./fixtures/crash-child.mjs', import.meta.url));

interface ChildReport {
  pids: number[];
  stateDir: string;
  podIp: string;
  cgroup: string;
}

/** Run the fixture (which uses the built dist/) until it prints its report. */
function startChild(name: string, mode: 'crash' | 'detach'): Promise<{ report: ChildReport; pid: number; exited: Promise<unknown> }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [child, name, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const exited = new Promise((r) => proc.once('exit', r));
    proc.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve({ report: JSON.parse(line) as ChildReport, pid: proc.pid as number, exited });
    });
    proc.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    proc.once('exit', (code) => reject(new Error(`crash-child exited ${code} before reporting (is dist/ built? npm run build): ${err}`)));
  });
}

describe('crash recovery', () => {
  const prefix = uniqueName('c');
  let rootBefore: Awaited<ReturnType<typeof rootNetnsView>>;

  beforeAll(async () => {
    await requirePrerequisites();
    rootBefore = await rootNetnsView();
  });

  afterAll(async () => {
    await Topology.cleanupByPrefix(prefix);
  });

  it('cleanupByPrefix removes the namespaces, processes (in them or recorded), cgroups and state of a SIGKILLed owner', async () => {
    const name = `${prefix}-crash`;
    const { report, pid, exited } = await startChild(name, 'crash');
    process.kill(pid, 'SIGKILL');
    await exited;
    // The owner is gone; what it started is not.
    expect(report.pids.length).toBe(4);
    for (const p of report.pids) expect(running(p)).toBe(true);
    expect((await netnsOwnedBy(name)).length).toBe(3);

    const result = await Topology.cleanupByPrefix(prefix);
    expect(result.netns.sort()).toEqual([`${name}-demo-server`, `${name}-node-1`, `${name}-underlay`].sort());
    expect(result.killed.sort()).toEqual([...report.pids].sort());
    expect(result.stateDirs).toEqual([report.stateDir]);
    for (const p of report.pids) expect(running(p)).toBe(false);
    expect(await netnsOwnedBy(prefix)).toEqual([]);
    expect(existsSync(report.stateDir)).toBe(false);
    expect(existsSync(report.cgroup)).toBe(false);
    expect(await rootNetnsView()).toEqual(rootBefore);

    const again = await Topology.cleanupByPrefix(prefix);
    expect(again).toMatchObject({ netns: [], killed: [], stateDirs: [] });
  });

  it('another process can attach to a topology whose owner exited, use it, and destroy it', async () => {
    const name = `${prefix}-detach`;
    const { report, exited } = await startChild(name, 'detach');
    await exited;
    const topo = await Topology.attach(report.stateDir);
    expect(topo.processes.map((p) => p.pid).sort()).toEqual([...report.pids].sort());
    const node = topo.node('node-1');
    const probe = await probeTcp(node.netnsPath, { host: report.podIp, port: 9000, payload: 'still here' });
    expect(probe).toMatchObject({ ok: true, received: 'still here' });
    const pod = topo.pod('demo', 'server');
    expect(pod?.ip).toBe(report.podIp);
    const client = await node.addPod({ name: 'client', namespace: 'demo' });
    expect((await client.probeTcp({ host: report.podIp, port: 9000, payload: 'x' })).ok).toBe(true);

    const processes = topo.processes;
    await topo.destroy();
    for (const p of processes) expect(isSameProcess(p.pid, p.record.startTime)).toBe(false);
    expect(await netnsOwnedBy(name)).toEqual([]);
    expect(existsSync(report.stateDir)).toBe(false);
  });

  it('does not touch topologies whose names only share a prefix string', async () => {
    const keep = await Topology.create({ name: `${prefix}1` });
    try {
      await Topology.cleanupByPrefix(prefix);
      expect(await netnsOwnedBy(`${prefix}1`)).toEqual([`${prefix}1-underlay`]);
    } finally {
      await keep.destroy();
    }
  });
});
