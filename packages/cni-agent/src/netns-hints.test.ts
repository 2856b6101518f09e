import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NetnsHints } from './netns-hints.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function fileIn(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weir-hints-'));
  dirs.push(dir);
  return join(dir, 'run', 'pod-netns.json');
}

const exists = (f: string): Promise<boolean> => readFile(f).then(() => true, () => false);

describe('NetnsHints', () => {
  it('writes a burst of changes once, after a delay; flushed() writes what is pending at once; a new instance loads it', async () => {
    const file = await fileIn();
    const hints = new NetnsHints(file, 60_000);
    for (let i = 0; i < 100; i++) hints.set(`uid-${i}`, `/var/run/netns/p${i}`);
    hints.set('uid-7', undefined);
    hints.set('uid-8', '/proc/123/ns/net');
    await new Promise((r) => setTimeout(r, 50));
    // Nothing written yet: the burst's write waits for the delay.
    expect(await exists(file)).toBe(false);
    await hints.flushed();
    const saved = JSON.parse(await readFile(file, 'utf8')) as Record<string, string>;
    expect(Object.keys(saved)).toHaveLength(98);
    expect(saved['uid-0']).toBe('/var/run/netns/p0');
    expect(saved['uid-7']).toBeUndefined();
    expect(saved['uid-8']).toBeUndefined();
    const again = new NetnsHints(file);
    await again.load();
    expect(again.get('uid-99')).toBe('/var/run/netns/p99');
  });

  it('writes by itself once the delay has passed', async () => {
    const file = await fileIn();
    const hints = new NetnsHints(file, 20);
    hints.set('a', '/var/run/netns/a');
    const end = Date.now() + 5000;
    while (!(await exists(file)) && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ a: '/var/run/netns/a' });
    hints.set('b', '/var/run/netns/b');
    await hints.flushed();
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({ a: '/var/run/netns/a', b: '/var/run/netns/b' });
  });
});
