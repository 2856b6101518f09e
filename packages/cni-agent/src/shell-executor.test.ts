import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ShellExecutor, ShellPool } from './shell-executor.js';

/** PIDs of this process's child processes. */
function children(): Set<number> {
  const pids = readFileSync(`/proc/${process.pid}/task/${process.pid}/children`, 'utf8').trim();
  return new Set(pids ? pids.split(' ').map(Number) : []);
}

describe('ShellExecutor', () => {
  it('runs commands in order through one shell, each with its own output and exit code', async () => {
    const sh = new ShellExecutor();
    try {
      const [a, b, c, d] = await Promise.all([
        sh.run('printf', ['%s|', "it's", 'two words', '$HOME']),
        sh.run('cat', [], { input: '*filter\nCOMMIT' }),
        sh.run('sh', ['-c', 'echo oops >&2; exit 3']),
        sh.run('no-such-command-weir', []),
      ]);
      expect(a).toEqual({ stdout: "it's|two words|$HOME|", stderr: '', code: 0 });
      expect(b).toEqual({ stdout: '*filter\nCOMMIT\n', stderr: '', code: 0 });
      expect(c).toEqual({ stdout: '', stderr: 'oops\n', code: 3 });
      expect(d.code).toBe(127);
      expect(d.stderr).toContain('no-such-command-weir');
      expect((await sh.run('true', [])).code).toBe(0);
    } finally {
      sh.close();
    }
  });

  it('reports a dead shell as a failed command instead of hanging', async () => {
    const sh = new ShellExecutor('/nonexistent/netns');
    const r = await sh.run('true', []);
    expect(r.code).toBe(127);
    sh.close();
  });
});

describe('ShellPool', () => {
  it('warm() starts every shell up front and captures then run on those shells', async () => {
    const before = children();
    const pool = new ShellPool(2);
    try {
      pool.warm();
      const started = [...children()].filter((p) => !before.has(p));
      expect(started).toHaveLength(2);
      const parents = await Promise.all(
        [0, 1].map(() => pool.with(async (exec) => Number((await exec.run('sh', ['-c', 'echo $PPID'])).stdout.trim()))),
      );
      expect(new Set(parents)).toEqual(new Set(started));
    } finally {
      pool.close();
    }
  });
});
