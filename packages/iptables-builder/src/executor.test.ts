import { describe, expect, it } from 'vitest';

import { localExecutor, netnsExecutor, type CommandExecutor } from './executor.js';
import { renderChecks } from './render-iptables.js';
import { inpodRules } from './presets.js';
import { ipRouteArgs, ipRuleArgs, inpodRouting } from './routing.js';

describe('executors', () => {
  it('localExecutor feeds stdin and returns output and exit code without a shell', async () => {
    expect(await localExecutor.run('cat', [], { input: 'a b; $(x)\n' })).toEqual({ stdout: 'a b; $(x)\n', stderr: '', code: 0 });
    const r = await localExecutor.run('sh', ['-c', 'echo oops >&2; exit 3']);
    expect(r).toEqual({ stdout: '', stderr: 'oops\n', code: 3 });
    expect((await localExecutor.run('weir-no-such-binary', [])).code).toBe(127);
  });

  it('netnsExecutor runs through nsenter --net', async () => {
    const seen: string[][] = [];
    const base: CommandExecutor = { run: async (cmd, args) => (seen.push([cmd, ...args]), { stdout: '', stderr: '', code: 0 }) };
    await netnsExecutor('/var/run/netns/pod', base).run('iptables-save', ['-t', 'nat']);
    expect(seen).toEqual([['nsenter', '--net=/var/run/netns/pod', '--', 'iptables-save', '-t', 'nat']]);
  });
});

describe('checks and routing argv', () => {
  it('renders -C checks per rule', () => {
    const checks = renderChecks(inpodRules({ dnsCapture: false }), 'ipv4');
    expect(checks).toHaveLength(14);
    expect(checks[0]).toEqual({ command: 'iptables', args: ['-t', 'mangle', '-C', 'PREROUTING', '-j', 'ISTIO_PRERT'] });
    expect(checks.at(-1)?.args.join(' ')).toBe(
      '-t nat -C ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
    );
  });

  it('renders Istio policy routing for both families', () => {
    const r = inpodRouting({ ipv6: true });
    expect(r.rules.map((x) => ipRuleArgs(x, 'add').join(' '))).toEqual([
      '-4 rule add fwmark 0x111/0xfff pref 32764 lookup 133',
      '-6 rule add fwmark 0x111/0xfff pref 32764 lookup 133',
    ]);
    expect(r.routes.map((x) => ipRouteArgs(x, 'replace').join(' '))).toEqual([
      '-4 route replace local 0.0.0.0/0 dev lo table 133',
      '-6 route replace local ::/0 dev lo table 133',
    ]);
  });
});
