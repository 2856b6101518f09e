import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';

const bin = join(dirname(fileURLToPath(import.meta.url)), '../dist/test-control-plane.js');
const dirs: string[] = [];
const pids: number[] = [];

afterAll(async () => {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already exited.
    }
  }
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

it('without --token makes a random bearer token that only the 0600 token file holds, not argv', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'wcp-token-'));
  dirs.push(dir);
  const config = join(dir, 'mesh.yaml');
  await writeFile(config, 'workloads: []\n');
  const child = spawn(process.execPath, [bin, '--config', config, '--out-dir', join(dir, 'out'), '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid !== undefined) pids.push(child.pid);
  const first = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += String(d);
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
    });
    child.once('exit', (code) => reject(new Error(`weir-test-control-plane exited ${code} before serving`)));
  });
  const { tokenFile } = JSON.parse(first) as { tokenFile: string };
  const token = await readFile(tokenFile, 'utf8');
  expect(token).toMatch(/^[0-9a-f]{24}$/);
  expect((await stat(tokenFile)).mode & 0o777).toBe(0o600);
  const argv = await readFile(`/proc/${child.pid}/cmdline`, 'utf8');
  expect(argv).toContain('--out-dir');
  expect(argv).not.toContain(token);
  child.kill('SIGTERM');
  expect(await new Promise((r) => child.once('exit', r))).toBe(0);
}, 30_000);
