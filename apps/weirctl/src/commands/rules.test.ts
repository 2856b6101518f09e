import { describe, expect, it } from 'vitest';

import { runCli, type Io } from '../command.js';
import { parseRulesFlags, renderRules, rulesCommand } from './rules.js';

function collect(): Io & { stdout: string; stderr: string } {
  const io = {
    stdout: '',
    stderr: '',
    out: (t: string) => void (io.stdout += t),
    err: (t: string) => void (io.stderr += t),
  };
  return io;
}

const run = async (...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
  const io = collect();
  const code = await runCli({ rules: rulesCommand }, ['rules', ...argv], io);
  return { code, stdout: io.stdout, stderr: io.stderr };
};

describe('weirctl rules', () => {
  it('defaults to the tproxy rule set for IPv4 with DNS capture', async () => {
    const { code, stdout, stderr } = await run();
    expect(code).toBe(0);
    expect(stderr).toBe('');
    expect(stdout).toContain('-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006');
    expect(stdout).toContain('-j REDIRECT --to-ports 15053');
    expect(stdout).toContain('#   ip -4 rule add fwmark 0x111/0xfff pref 32764 lookup 133');
  });

  it('prints the seed rule set verbatim with --no-dns', () => {
    const text = renderRules(parseRulesFlags(['--no-dns']));
    expect(text).not.toContain('15053');
    expect(text).toContain('-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
  });

  it('renders redirect mode as nft, IPv6, without inbound capture', () => {
    const text = renderRules(parseRulesFlags(['--mode', 'redirect', '--format', 'nft', '--family', 'ipv6', '--no-inbound-capture']));
    expect(text).toContain('add table inet istio-ambient-nat');
    expect(text).toContain('ip6 daddr != ::1/128');
    expect(text).not.toContain('redirect to :15006');
    expect(text).toContain('#   ip -6 route replace local ::/0 dev lo table 133');
  });

  it('prints the host probe rules and their ipset', () => {
    const text = renderRules(parseRulesFlags(['--host-probe']));
    expect(text).toContain('#   ipset create istio-inpod-probes-v4 hash:ip family inet comment -exist');
    expect(text).toContain('-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127');
  });

  it.each([
    [['--mode', 'sidecar'], /^weirctl rules: --mode: .*"sidecar"/],
    [['--bogus'], /^weirctl rules: unknown flag --bogus$/],
    [['--family'], /^weirctl rules: flag --family needs a value$/],
    [['extra'], /^weirctl rules: unexpected argument extra$/],
    [['--host-probe', '--format', 'nft'], /^weirctl rules: --host-probe: /],
  ])('rejects %j with one line naming the flag and exit 2', async (argv, message) => {
    const { code, stdout, stderr } = await run(...argv);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(stderr.trimEnd()).toMatch(message);
  });

  it('unknown commands exit 2', async () => {
    const io = collect();
    expect(await runCli({ rules: rulesCommand }, ['nope'], io)).toBe(2);
    expect(io.stderr).toMatch(/unknown command 'nope'/);
  });
});
