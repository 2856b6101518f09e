import { describe, expect, it } from 'vitest';
import { ShellExecutor } from './shell-executor.js';

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
