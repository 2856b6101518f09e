import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SupervisedProcess, Topology, type TopologyNode } from '../src/index.js';
import { requirePrerequisites, running, uniqueName } from './helpers.js';

describe('process supervision', () => {
  let topo: Topology;
  let node: TopologyNode;

  beforeAll(async () => {
    await requirePrerequisites();
    topo = await Topology.create({ name: uniqueName('s') });
    node = await topo.addNode({ name: 'node-1' });
  });

  afterAll(async () => {
    await topo?.destroy();
  });

  it('runs the process inside the netns and captures stdout and stderr to its log file', async () => {
    const proc = await node.spawn({ name: 'talker', cmd: 'sh', args: ['-c', 'readlink /proc/self/ns/net; echo to-stderr >&2; echo "$GREETING"'], env: { GREETING: 'hi' } });
    expect(await proc.exited).toEqual({ code: 0, signal: null });
    const netns = (await node.exec('readlink', ['/proc/self/ns/net'], { check: true })).stdout.trim();
    expect((await proc.readLog()).split('\n')).toEqual([netns, 'to-stderr', 'hi', '']);
    expect(proc.logFile).toBe(`${topo.stateDir}/logs/talker.log`);
  });

  it('escalates to SIGKILL for a process group that ignores SIGTERM', async () => {
    const proc = await node.spawn({ name: 'stubborn', cmd: 'sh', args: ['-c', 'trap "" TERM; echo ready; while :; do sleep 0.05; done'] });
    await proc.waitForOutput('ready');
    const started = Date.now();
    const exit = await proc.stop('SIGTERM', 300);
    expect(exit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(proc.running).toBe(false);
  });

  it('stops the whole process group, children included', async () => {
    const proc = await node.spawn({ name: 'parent', cmd: 'sh', args: ['-c', 'sleep 1000 & echo child=$!; wait'] });
    const line = await proc.waitForOutput(/^child=\d+$/);
    const child = Number(line.split('=')[1]);
    expect(running(child)).toBe(true);
    await proc.stop();
    await expect.poll(() => running(child)).toBe(false);
  });

  it('fails waitForOutput early, with the log, when the process exits first', async () => {
    const proc = await node.spawn({ name: 'quitter', cmd: 'sh', args: ['-c', 'echo bad config >&2; exit 3'] });
    await expect(proc.waitForOutput('listening', 5000)).rejects.toThrow(/quitter exited before printing listening; log: bad config/);
    expect(await proc.exited).toEqual({ code: 3, signal: null });
  });

  it('reports a missing program through the exit status and log', async () => {
    const proc = await node.spawn({ name: 'missing', cmd: '/nonexistent/program' });
    const exit = await proc.exited;
    expect(exit.code).not.toBe(0);
    expect(await proc.readLog()).toContain('/nonexistent/program');
  });

  it('an attached handle (another process) can watch and stop a process by pid', async () => {
    const proc = await node.spawn({ name: 'watched', cmd: 'sleep', args: ['1000'] });
    const handle = SupervisedProcess.attach(proc.record);
    expect(handle.running).toBe(true);
    await handle.stop('SIGTERM', 2000);
    expect(handle.running).toBe(false);
    expect(await proc.exited).toEqual({ code: null, signal: 'SIGTERM' });
    // A record whose pid now belongs to another process (different start time) is never signalled.
    const impostor = SupervisedProcess.attach({ ...proc.record, pid: process.pid });
    expect(impostor.running).toBe(false);
    await impostor.stop('SIGKILL');
  });
});
