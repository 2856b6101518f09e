import { readFileSync } from 'node:fs';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RuleApplier } from '../src/applier.js';
import { detectBackend, iptablesCommand } from '../src/backend.js';
import { IptablesError } from '../src/errors.js';
import { netnsExecutor, type CommandExecutor } from '../src/executor.js';
import { parseIptablesSave } from '../src/parse-iptables.js';
import { inpodRules } from '../src/presets.js';
import { defineRuleSet } from '../src/validate.js';
import { renderChecks } from '../src/render-iptables.js';
import { addNetns, delNetns, recording, requireRootTools, ruleLines, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'nsenter', 'iptables-legacy-restore', 'iptables-nft-restore']);

const seed = readFileSync(new URL('../testdata/seed-tproxy.save', import.meta.url), 'utf8');
const names: string[] = [];
afterAll(() => names.forEach(delNetns));

function netns(tag: string): { name: string; path: string } {
  const name = uniqueName(tag);
  names.push(name);
  return { name, path: addNetns(name) };
}

for (const backend of ['legacy', 'nft'] as const) {
  describe(`iptables-${backend} in a fresh netns`, () => {
    const ns = { name: '', path: '' };
    const save = (): string =>
      sh('ip', ['netns', 'exec', ns.name, iptablesCommand(backend, 'ipv4', 'save')])
        .split('\n')
        .filter((l) => !l.startsWith('#'))
        .join('\n');
    const iptables = (...args: string[]): string =>
      sh('ip', ['netns', 'exec', ns.name, `iptables-${backend}`, '-w', ...args]);

    beforeAll(() => Object.assign(ns, netns(backend === 'legacy' ? 'L' : 'N')));

    it("tproxy mode reads back as the seed's rules, in the seed's order", async () => {
      const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend });
      const result = await applier.apply(inpodRules({ mode: 'tproxy', dnsCapture: false }));
      expect(result).toMatchObject({ changed: true, repaired: [], backend });
      const text = save();
      expect(ruleLines(text, 'mangle')).toEqual(ruleLines(seed, 'mangle'));
      expect(ruleLines(text, 'nat')).toEqual(ruleLines(seed, 'nat'));
      const chains = (t: string, table: string): string[] =>
        (parseIptablesSave(t, 'ipv4').find((x) => x.name === table)?.chains ?? []).map((c) => `${c.name} ${c.policy}`);
      expect(chains(text, 'mangle')).toEqual(chains(seed, 'mangle'));
      expect(chains(text, 'nat')).toEqual(chains(seed, 'nat'));
    });

    it('applying again changes nothing and runs nothing but iptables-save', async () => {
      const before = save();
      const exec = recording(netnsExecutor(ns.path));
      const result = await new RuleApplier({ executor: exec, backend }).apply(inpodRules({ dnsCapture: false }));
      expect(result.changed).toBe(false);
      expect(exec.calls.map((c) => c.cmd)).toEqual([iptablesCommand(backend, 'ipv4', 'save')]);
      expect(save()).toBe(before);
    });

    it('-C checks pass for every applied rule, and fail for a deleted one', async () => {
      const rules = inpodRules({ dnsCapture: false });
      const check = (args: readonly string[]): boolean => {
        try {
          iptables(...args);
          return true;
        } catch {
          return false;
        }
      };
      const checks = renderChecks(rules, 'ipv4');
      expect(checks.map((c) => check(c.args))).toEqual(checks.map(() => true));
      iptables('-t', 'nat', '-D', 'ISTIO_OUTPUT', '-p', 'tcp', '-m', 'mark', '--mark', '0x111/0xfff', '-j', 'ACCEPT');
      expect(checks.filter((c) => !check(c.args)).map((c) => c.args.join(' '))).toEqual([
        '-t nat -C ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
      ]);
      await new RuleApplier({ executor: netnsExecutor(ns.path), backend }).apply(rules);
      expect(checks.every((c) => check(c.args))).toBe(true);
    });

    it('names a rule deleted by hand and puts it back', async () => {
      const rules = inpodRules({ dnsCapture: false });
      const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend });
      iptables('-t', 'nat', '-D', 'ISTIO_OUTPUT', '-p', 'tcp', '-m', 'mark', '--mark', '0x111/0xfff', '-j', 'ACCEPT');
      iptables('-t', 'mangle', '-D', 'PREROUTING', '-j', 'ISTIO_PRERT');
      const diff = await applier.diff(rules);
      expect(diff.changes).toEqual([
        { kind: 'missing-rule', family: 'ipv4', table: 'mangle', chain: 'PREROUTING', rule: '-j ISTIO_PRERT' },
        {
          kind: 'missing-rule',
          family: 'ipv4',
          table: 'nat',
          chain: 'ISTIO_OUTPUT',
          rule: '-p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
        },
      ]);
      const result = await applier.apply(rules);
      expect(result.repaired.map((r) => `${r.table} ${r.chain} ${r.rule}`)).toEqual([
        'mangle PREROUTING -j ISTIO_PRERT',
        'nat ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
      ]);
      expect(ruleLines(save(), 'nat')).toEqual(ruleLines(seed, 'nat'));
      expect((await applier.diff(rules)).inSync).toBe(true);
    });

    it('switches mode by replacing only its own chains', async () => {
      iptables('-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '--dport', '9999', '-j', 'ACCEPT');
      const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend });
      const redirect = inpodRules({ mode: 'redirect' });
      await applier.apply(redirect);
      expect((await applier.diff(redirect)).inSync).toBe(true);
      const text = save();
      expect(ruleLines(text, 'mangle')).not.toContain(expect.stringContaining('TPROXY'));
      expect(ruleLines(text, 'raw')).toContain('-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1');
      expect(ruleLines(text, 'nat')).toContain('-A OUTPUT -p tcp -m tcp --dport 9999 -j ACCEPT');
    });

    it('a failing restore leaves the previous rules and reports iptables stderr', async () => {
      await new RuleApplier({ executor: netnsExecutor(ns.path), backend }).apply(inpodRules({ mode: 'redirect', dnsCapture: false }));
      const before = save();
      // Simulates a kernel without the target: the nat table (second in the restore) names one that
      // cannot be loaded, after mangle and nat have already been committed.
      const restores: string[] = [];
      const broken: CommandExecutor = {
        run: (cmd, args, opts) => {
          if (opts?.input === undefined) return netnsExecutor(ns.path).run(cmd, args, opts);
          restores.push(opts.input);
          const input = opts.input.replace(/-j REDIRECT --to-ports 15001/g, '-j WEIRMISSING');
          return netnsExecutor(ns.path).run(cmd, args, { input });
        },
      };
      const applier = new RuleApplier({ executor: broken, backend });
      const error = await applier.apply(inpodRules({ mode: 'tproxy' })).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(IptablesError);
      expect(error).toMatchObject({ code: 'ERR_IPTABLES_RESTORE_FAILED' });
      expect((error as { stderr: string }).stderr).toMatch(/WEIRMISSING/);
      expect(save()).toBe(before);
      // mangle was committed before nat failed, so a second restore put it back.
      expect(restores).toHaveLength(2);
      expect(restores[1]).toMatch(/^\*mangle\n/);
    });

    it('cleanup removes every ISTIO_ chain and jump and nothing else', async () => {
      iptables('-t', 'filter', '-N', 'OTHER');
      iptables('-t', 'filter', '-A', 'OTHER', '-j', 'RETURN');
      iptables('-t', 'filter', '-A', 'INPUT', '-j', 'OTHER');
      const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend });
      await applier.cleanup(['ipv4']);
      const text = save();
      expect(text).not.toMatch(/ISTIO_/);
      expect(ruleLines(text, 'nat')).toEqual(['-A OUTPUT -p tcp -m tcp --dport 9999 -j ACCEPT']);
      expect(ruleLines(text, 'filter')).toEqual(['-A INPUT -j OTHER', '-A OTHER -j RETURN']);
      const exec = recording(netnsExecutor(ns.path));
      await new RuleApplier({ executor: exec, backend }).cleanup(['ipv4']);
      expect(exec.calls.every((c) => /-save$/.test(c.cmd))).toBe(true);
    });
  });
}

describe('every match and target round-trips through iptables-save', () => {
  for (const backend of ['legacy', 'nft'] as const) {
    it(`stays in sync on ${backend}`, async () => {
      const ns = netns(backend === 'legacy' ? 'RL' : 'RN');
      const set = uniqueName('s');
      sh('ip', ['netns', 'exec', ns.name, 'ipset', 'create', set, 'hash:ip', 'family', 'inet', 'comment']);
      const tcp = { kind: 'protocol', protocol: 'tcp' } as const;
      const udp = { kind: 'protocol', protocol: 'udp' } as const;
      const rules = defineRuleSet({
        families: [
          {
            family: 'ipv4',
            tables: [
              {
                name: 'raw',
                chains: [
                  { name: 'PREROUTING', rules: [{ matches: [], target: { kind: 'jump', chain: 'ISTIO_RT' } }] },
                  { name: 'ISTIO_RT', rules: [{ matches: [udp, { kind: 'udp', sport: { port: 53 } }], target: { kind: 'CT', zone: 7 } }] },
                ],
              },
              {
                name: 'mangle',
                chains: [
                  { name: 'OUTPUT', rules: [{ matches: [], target: { kind: 'jump', chain: 'ISTIO_MT' } }] },
                  {
                    name: 'ISTIO_MT',
                    rules: [
                      { matches: [{ kind: 'comment', text: 'weir test rule' }], target: { kind: 'MARK', value: 0x10, mask: 0xff } },
                      { matches: [{ kind: 'comment', text: 'bare_word-1' }], target: { kind: 'MARK', value: 0x20 } },
                      { matches: [{ kind: 'connmark', value: 0x1 }], target: { kind: 'CONNMARK', op: 'restore', nfmask: 0xff, ctmask: 0xff00 } },
                      {
                        matches: [{ kind: 'outInterface', name: 'eth+', invert: true }, tcp, { kind: 'tcp', sport: { port: 1000, toPort: 2000, invert: true } }],
                        target: { kind: 'RETURN' },
                      },
                    ],
                  },
                ],
              },
              {
                name: 'nat',
                chains: [
                  { name: 'POSTROUTING', rules: [{ matches: [], target: { kind: 'jump', chain: 'ISTIO_NT' }, position: 'first' }] },
                  {
                    name: 'ISTIO_NT',
                    rules: [
                      {
                        matches: [{ kind: 'owner', socketExists: true }, tcp, { kind: 'set', name: set, flags: ['dst', 'src'], invert: true }],
                        target: { kind: 'SNAT', toSource: '192.0.2.1' },
                      },
                    ],
                  },
                ],
              },
              {
                name: 'filter',
                chains: [
                  { name: 'INPUT', rules: [{ matches: [], target: { kind: 'jump', chain: 'ISTIO_FT' } }] },
                  {
                    name: 'ISTIO_FT',
                    rules: [
                      { matches: [{ kind: 'conntrack', ctstate: ['INVALID'], invert: true }, { kind: 'source', cidr: '10.0.0.0/8' }], target: { kind: 'DROP' } },
                      { matches: [{ kind: 'inInterface', name: 'lo' }, { kind: 'mark', value: 0x539, invert: true }], target: { kind: 'ACCEPT' } },
                    ],
                  },
                ],
              },
            ],
          },
        ],
      });
      const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend });
      expect((await applier.apply(rules)).changed).toBe(true);
      expect((await applier.diff(rules)).changes).toEqual([]);
      await applier.cleanup(['ipv4']);
      expect(sh('ip', ['netns', 'exec', ns.name, iptablesCommand(backend, 'ipv4', 'save')])).not.toMatch(/ISTIO_/);
    });
  }
});

describe('IPv6', () => {
  it('applies the v6 tproxy rule set with ip6tables and reads it back in sync', async () => {
    const ns = netns('6');
    const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend: 'nft' });
    const rules = inpodRules({ ipv4: false, ipv6: true });
    expect((await applier.apply(rules)).changed).toBe(true);
    expect((await applier.diff(rules)).changes).toEqual([]);
    const text = sh('ip', ['netns', 'exec', ns.name, 'ip6tables-nft-save']);
    expect(text).toContain('-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
    expect(text).toContain('--on-ip :: --tproxy-mark 0x111/0xfff');
  });
});

describe('detectBackend', () => {
  it('picks nft in an empty netns and legacy once legacy holds rules', async () => {
    const ns = netns('D');
    const exec = netnsExecutor(ns.path);
    expect(await detectBackend(exec)).toBe('nft');
    sh('ip', ['netns', 'exec', ns.name, 'iptables-legacy', '-w', '-t', 'filter', '-A', 'INPUT', '-j', 'ACCEPT']);
    expect(await detectBackend(exec)).toBe('legacy');
    const missing: CommandExecutor = { run: async (cmd) => ({ stdout: '', stderr: `${cmd}: not found`, code: 127 }) };
    await expect(detectBackend(missing)).rejects.toMatchObject({ code: 'ERR_IPTABLES_BACKEND_UNAVAILABLE' });
  });
});
