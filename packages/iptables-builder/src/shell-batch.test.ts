import { describe, expect, it } from 'vitest';

import { localExecutor, type CommandExecutor } from './executor.js';
import { runShellBatch, sysctlPath } from './shell-batch.js';

describe('runShellBatch', () => {
  it('runs every step in one shell and hands back each stdout, stderr and exit code', async () => {
    const calls: string[] = [];
    const exec: CommandExecutor = { run: (cmd, args, o) => (calls.push(cmd), localExecutor.run(cmd, args, o)) };
    const tricky = `it's "$HOME" \`id\` \\ $(echo no)\nno newline at end`;
    const out = await runShellBatch(exec, [
      { id: 'a', argv: ['printf', '%s', 'one line'] },
      { id: 'b', argv: ['sh', '-c', 'echo to-err >&2; exit 3'] },
      { id: 'c', argv: ['cat'], input: tricky },
      { id: 'd', argv: ['printf', 'x\\n\\n'] },
    ]);
    expect(calls).toEqual(['sh']);
    expect(out.results.get('a')).toEqual({ stdout: 'one line', stderr: '', code: 0 });
    expect(out.results.get('b')).toEqual({ stdout: '', stderr: 'to-err\n', code: 3 });
    expect(out.results.get('c')).toEqual({ stdout: `${tricky}\n`, stderr: '', code: 0 });
    expect(out.results.get('d')?.stdout).toBe('x\n\n');
  });

  it('stops at the first failure when asked', async () => {
    const out = await runShellBatch(
      localExecutor,
      [
        { id: 'ok', argv: ['true'] },
        { id: 'bad', argv: ['false'] },
        { id: 'never', argv: ['true'] },
      ],
      { stopOnFailure: true, writeSysctls: new Map([['net.ipv4.tcp_migrate_req', '1']]) },
    );
    expect(out.results.get('ok')?.code).toBe(0);
    expect(out.results.get('bad')?.code).toBe(1);
    expect(out.results.has('never')).toBe(false);
    expect(out.results.has('sysctl:net.ipv4.tcp_migrate_req')).toBe(false);
  });

  it('reads IPv6 state and sysctls without a process, and runs IPv6-only steps only when it is on', async () => {
    const out = await runShellBatch(
      localExecutor,
      [
        { id: 'on', argv: ['true'], ipv6: true },
        { id: 'off', argv: ['true'], ipv6: false },
      ],
      { sysctls: ['net.ipv4.ip_forward', 'net.weir.no_such_key'] },
    );
    expect(out.results.has('on')).toBe(out.ipv6);
    expect(out.results.has('off')).toBe(!out.ipv6);
    expect(out.sysctls.get('net.ipv4.ip_forward')).toMatch(/^[01]$/);
    expect(out.sysctls.has('net.weir.no_such_key')).toBe(false);
  });

  it('a shell that never ran is an error naming why', async () => {
    const dead: CommandExecutor = { run: async () => ({ stdout: '', stderr: 'nsenter: cannot open /x: No such file', code: 1 }) };
    await expect(runShellBatch(dead, [{ id: 'a', argv: ['true'] }])).rejects.toMatchObject({
      code: 'ERR_IPTABLES_COMMAND_FAILED',
      message: expect.stringMatching(/cannot open \/x/),
    });
  });

  it('rejects sysctl keys and values that are not plain', async () => {
    expect(sysctlPath('net.ipv4.tcp_migrate_req')).toBe('/proc/sys/net/ipv4/tcp_migrate_req');
    expect(() => sysctlPath('../../etc/passwd')).toThrow(/invalid sysctl key/);
    await expect(runShellBatch(localExecutor, [], { writeSysctls: new Map([['net.ipv4.x', "1'; rm -rf /"]]) })).rejects.toThrow(/invalid sysctl value/);
  });
});
