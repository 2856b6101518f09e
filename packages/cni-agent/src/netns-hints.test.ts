import { mkdtemp, readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { NetnsHints } from './netns-hints.js';

const dirs: string[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function fileIn(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weir-hints-'));
  dirs.push(dir);
  return join(dir, 'run', 'pod-netns.json');
}

const read = (f: string): Promise<string> => readFile(f, 'utf8').catch(() => '');

async function loaded(file: string): Promise<NetnsHints> {
  const hints = new NetnsHints(file);
  await hints.load();
  return hints;
}

describe('NetnsHints', () => {
  it('appends each change to the journal at once, without waiting on any timer (a crash right after a capture keeps its hint)', async () => {
    // Timers frozen: a write that waited on one would never happen.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval'] });
    const file = await fileIn();
    const hints = new NetnsHints(file);
    hints.set('uid-a', '/var/run/netns/a');
    const deadline = Date.now() + 10_000;
    while (!(await read(`${file}.journal`)).includes('uid-a') && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
    }
    // A second agent reads it while the first still holds the journal open: what a SIGKILL leaves.
    expect((await loaded(file)).get('uid-a')).toBe('/var/run/netns/a');
    await hints.flushed();
  });

  it('a burst of changes and removals reloads to the same map; /proc paths are not remembered', async () => {
    const file = await fileIn();
    const hints = new NetnsHints(file);
    for (let i = 0; i < 100; i++) hints.set(`uid-${i}`, `/var/run/netns/p${i}`);
    hints.set('uid-7', undefined);
    hints.set('uid-8', '/proc/123/ns/net');
    hints.set('uid-9', '/var/run/netns/p9-new');
    await hints.flushed();
    const lines = (await read(`${file}.journal`)).split('\n').filter(Boolean);
    expect(lines.length).toBe(103);
    const again = await loaded(file);
    expect(again.get('uid-99')).toBe('/var/run/netns/p99');
    expect(again.get('uid-7')).toBeUndefined();
    expect(again.get('uid-8')).toBeUndefined();
    expect(again.get('uid-9')).toBe('/var/run/netns/p9-new');
  });

  it('compacts a long journal into the snapshot and keeps appending after it', async () => {
    const file = await fileIn();
    const hints = new NetnsHints(file);
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 100; i++) hints.set(`uid-${i}`, `/var/run/netns/r${round}-${i}`);
    }
    await hints.flushed();
    const snapshot = JSON.parse(await read(file)) as Record<string, string>;
    expect(Object.keys(snapshot)).toHaveLength(100);
    expect((await read(`${file}.journal`)).split('\n').filter(Boolean).length).toBeLessThan(256);
    hints.set('uid-0', undefined);
    await hints.flushed();
    const again = await loaded(file);
    expect(again.get('uid-0')).toBeUndefined();
    expect(again.get('uid-1')).toBe('/var/run/netns/r4-1');
    expect(again.get('uid-99')).toBe('/var/run/netns/r4-99');
  });

  it('loads a snapshot from an older agent, and skips a torn or foreign journal line', async () => {
    const file = await fileIn();
    const hints = new NetnsHints(file);
    hints.set('x', '/var/run/netns/x');
    await hints.flushed();
    await writeFile(file, JSON.stringify({ old: '/var/run/netns/old', bad: 7 }));
    await appendFile(`${file}.journal`, '{"uid":"y","netns":"/var/run/netns/y"}\n[1]\n{"uid":"z","netns":"/var/run/ne');
    const again = await loaded(file);
    expect(again.get('old')).toBe('/var/run/netns/old');
    expect(again.get('bad')).toBeUndefined();
    expect(again.get('x')).toBe('/var/run/netns/x');
    expect(again.get('y')).toBe('/var/run/netns/y');
    expect(again.get('z')).toBeUndefined();
    // The next append starts on a line of its own.
    again.set('w', '/var/run/netns/w');
    await again.flushed();
    expect((await loaded(file)).get('w')).toBe('/var/run/netns/w');
  });
});
