import { describe, expect, it } from 'vitest';

import { localExecutor, type CommandExecutor } from './executor.js';
import { BatchScript, runShellBatch, sysctlPath, type NetnsSysctls } from './shell-batch.js';

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

describe('BatchScript.runDirect (no shell: each command exec\'d by the executor)', () => {
  const fake = (values: Record<string, string>, written: [string, string][] = []): NetnsSysctls => ({
    read: (keys) => {
      expect(keys[0]).toBe('net.ipv6.conf.*.disable_ipv6');
      return new Map(Object.entries(values));
    },
    write: (key, value) => {
      if (key === 'net.weir.refused') throw new Error('EINVAL');
      written.push([key, value]);
      return key !== 'net.weir.absent';
    },
  });

  it('counts IPv6 as on when only an interface with a dot in its name has it (a VLAN sub-interface)', async () => {
    const script = (): BatchScript => new BatchScript().when('v6', (s) => s.step({ id: 'v6', argv: ['true'] }), (s) => s.step({ id: 'v4', argv: ['true'] }));
    const off = { 'net.ipv6.conf.all.disable_ipv6': '1', 'net.ipv6.conf.default.disable_ipv6': '1', 'net.ipv6.conf.lo.disable_ipv6': '1' };
    expect((await script().runDirect(localExecutor, fake({ ...off, 'net.ipv6.conf.net1.100.disable_ipv6': '0' }))).ran).toEqual(['v6']);
    expect((await script().runDirect(localExecutor, fake({ ...off, 'net.ipv6.conf.net1.100.disable_ipv6': '1' }))).ran).toEqual(['v4']);
  });

  it('runs the same steps as the shell, one exec each, with the same outputs', async () => {
    const build = (): BatchScript =>
      new BatchScript()
        .step({ id: 'a', argv: ['printf', '%s', 'one line'] })
        .step({ id: 'b', argv: ['sh', '-c', 'echo to-err >&2; exit 3'] })
        .step({ id: 'c', argv: ['cat'], input: 'no newline at end' });
    const calls: string[] = [];
    const exec: CommandExecutor = { run: (cmd, args, o) => (calls.push(cmd), localExecutor.run(cmd, args, o)) };
    const direct = await build().runDirect(exec, fake({}));
    const shell = await build().run(localExecutor);
    expect(calls).toEqual(['printf', 'sh', 'cat']);
    expect(direct.results).toEqual(shell.results);
    expect(direct.ran).toEqual(['a', 'b', 'c']);
  });

  it('follows IPv6 and $fresh as the script does, stops at a failing stop step, and writes sysctls', async () => {
    const written: [string, string][] = [];
    const sysctls = fake({ 'net.ipv6.conf.lo.disable_ipv6': '1', 'net.ipv6.conf.eth0.disable_ipv6': '0', 'net.ipv4.tcp_migrate_req': '0 ' }, written);
    const out = await new BatchScript(['net.ipv4.tcp_migrate_req', 'net.weir.absent'])
      .step({ id: 'save', argv: ['printf', 'x ISTIO_OUTPUT y\n'] }, { unless: 'ISTIO_' })
      .step({ id: 'only-v4', argv: ['true'], ipv6: false })
      .when(
        'fresh',
        (s) => s.step({ id: 'install', argv: ['true'] }),
        (s) =>
          s.when('v6', (v) =>
            v
              .writeSysctl('net.ipv4.tcp_migrate_req', '1', { stop: true })
              .writeSysctl('net.weir.absent', '1', { stop: true })
              .step({ id: 'fail', argv: ['false'] }, { stop: true })
              .step({ id: 'never', argv: ['true'] }),
          ),
      )
      .runDirect(localExecutor, sysctls);
    expect(out.ipv6).toBe(true);
    expect(out.sysctls).toEqual(new Map([['net.ipv4.tcp_migrate_req', '0']]));
    expect(out.ran).toEqual(['save', 'sysctl:net.ipv4.tcp_migrate_req', 'sysctl:net.weir.absent', 'fail']);
    expect(out.results.get('fail')?.code).toBe(1);
    expect(written).toEqual([
      ['net.ipv4.tcp_migrate_req', '1'],
      ['net.weir.absent', '1'],
    ]);
  });

  it('a refused sysctl write or an executor that throws is that step failing; a failed read is the batch not running', async () => {
    const refused = await new BatchScript().writeSysctl('net.weir.refused', '1', { stop: true }).step({ id: 'never', argv: ['true'] }).runDirect(localExecutor, fake({}));
    expect(refused.results.get('sysctl:net.weir.refused')).toMatchObject({ code: 1, stderr: 'EINVAL' });
    expect(refused.results.has('never')).toBe(false);
    const throwing: CommandExecutor = { run: () => Promise.reject(new Error('netns fd is stale')) };
    const out = await new BatchScript().step({ id: 'save', argv: ['iptables-save'] }, { unless: 'ISTIO_' }).when('fresh', (s) => s.step({ id: 'x', argv: ['true'] }), (s) => s.step({ id: 'y', argv: ['true'] })).runDirect(throwing, fake({}));
    expect(out.results.get('save')).toMatchObject({ code: 127, stderr: 'netns fd is stale' });
    expect(out.ran).toEqual(['save', 'y']);
    const unreadable: NetnsSysctls = { read: () => Promise.reject(new Error('setns: EPERM')), write: () => true };
    await expect(new BatchScript().step({ id: 'a', argv: ['true'] }).runDirect(localExecutor, unreadable)).rejects.toMatchObject({
      code: 'ERR_IPTABLES_COMMAND_FAILED',
      message: expect.stringMatching(/did not run.*EPERM/),
    });
  });
});
