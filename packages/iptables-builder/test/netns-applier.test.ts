import { NETLINK_ROUTE, netlinkExchange, openNetns } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RuleApplier } from '../src/applier.js';
import { iptablesCommand } from '../src/backend.js';
import { IptablesError } from '../src/errors.js';
import { netnsExecutor, type CommandExecutor } from '../src/executor.js';
import { NetnsApplier, type NetnsRoundTrip, type NetnsSpec } from '../src/netns-applier.js';
import { inpodRules } from '../src/presets.js';
import { inpodRouting } from '../src/routing.js';
import type { NetlinkExchange } from '../src/rtnetlink.js';
import { addNetns, delNetns, directAt, recording, requireRootTools, ruleLines, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'nsenter', 'iptables-legacy-restore', 'iptables-nft-restore', 'ip6tables-nft-restore']);

const names: string[] = [];
afterAll(() => names.forEach(delNetns));

const MIGRATE = 'net.ipv4.tcp_migrate_req';
/** What the node agent asks for: IPv4 always, IPv6 capture when the netns has IPv6 on. */
const podSpec = (facts: { ipv6: boolean }): NetnsSpec => ({
  ruleSet: inpodRules({ ipv6: facts.ipv6 }),
  routing: inpodRouting({ ipv6: facts.ipv6 }),
  sysctls: { [MIGRATE]: '1' },
});

/** rtnetlink in the netns at `path` (policy routing in-process), as the node agent passes it. */
const netlinkAt =
  (path: string): NetlinkExchange =>
  (req, n, protocol = NETLINK_ROUTE) => {
    const netns = openNetns(path);
    try {
      return netlinkExchange(netns, protocol, req, n);
    } finally {
      netns.close();
    }
  };

// Policy routing by `ip` in the script, or over rtnetlink; commands in one nsenter'd `sh -c`, or
// each exec'd directly in the netns (no shell): the same behaviour.
const MODES = [
  { backend: 'legacy', netlink: false, direct: false },
  { backend: 'nft', netlink: false, direct: false },
  { backend: 'legacy', netlink: true, direct: false },
  { backend: 'nft', netlink: true, direct: false },
  { backend: 'legacy', netlink: true, direct: true },
  { backend: 'nft', netlink: true, direct: true },
] as const;

/** Breaks the tproxy rules' REDIRECT target (a restore that iptables refuses), in the script or the restore input. */
const breaking = (base: CommandExecutor): CommandExecutor => ({
  run: (cmd, args, opts) => {
    const bad = (x: string): string => x.replace(/-j REDIRECT --to-ports 15001/g, '-j WEIRMISSING');
    return base.run(cmd, args.map(bad), opts?.input === undefined ? opts : { input: bad(opts.input) });
  },
});

for (const { backend, netlink, direct } of MODES) {
  const via = `${netlink ? ', routing over rtnetlink' : ', routing by ip'}${direct ? ', commands exec\'d directly' : ''}`;
  const nl = (path: string): { netlink?: NetlinkExchange } => (netlink ? { netlink: netlinkAt(path) } : {});
  /** The executor of the mode (and, direct, the sysctls to go with it). */
  const at = (path: string): { executor: CommandExecutor; sysctls?: ReturnType<typeof directAt>['sysctls'] } => (direct ? directAt(path) : { executor: netnsExecutor(path) });
  const opts = (path: string, executor?: CommandExecutor) => {
    const base = at(path);
    return { ...base, executor: executor ?? base.executor, backend, ...nl(path) };
  };
  describe(`NetnsApplier on iptables-${backend}${via}`, () => {
    const ns = { name: '', path: '' };
    const exec = (...args: string[]): string => sh('ip', ['netns', 'exec', ns.name, ...args]);
    const save = (family: 'ipv4' | 'ipv6'): string =>
      exec(iptablesCommand(backend, family, 'save'))
        .split('\n')
        .filter((l) => !l.startsWith('#'))
        .join('\n');
    const migrate = (): string => exec('cat', '/proc/sys/net/ipv4/tcp_migrate_req').trim();

    beforeAll(() => {
      ns.name = uniqueName(backend === 'legacy' ? 'A' : 'B');
      names.push(ns.name);
      ns.path = addNetns(ns.name);
    });

    it('installs rules of both families, routing and the sysctl in one round trip, the same rules RuleApplier writes', async () => {
      const calls = recording(at(ns.path).executor);
      const result = await new NetnsApplier(opts(ns.path, calls)).apply(podSpec);
      expect(result).toMatchObject({ changed: true, ipv6: true, hadRules: false, repaired: [], sysctls: [MIGRATE], roundTrips: 1 });
      expect(result.diff.changes.length).toBeGreaterThan(10);
      expect(result.routing).toEqual([
        'ip -4 rule add fwmark 0x111/0xfff pref 32764 lookup 133',
        'ip -4 route replace local 0.0.0.0/0 dev lo table 133',
        'ip -6 rule add fwmark 0x111/0xfff pref 32764 lookup 133',
        'ip -6 route replace local ::/0 dev lo table 133',
      ]);
      // One shell (one nsenter) for all of it; direct: the restores of the read-and-install, nothing else.
      expect(calls.calls.map((c) => (direct ? c.cmd : `${c.cmd} ${c.args[0]}`))).toEqual(
        direct ? (['save', 'save', 'restore', 'restore'] as const).map((op, i) => iptablesCommand(backend, i % 2 ? 'ipv6' : 'ipv4', op)) : ['sh -c'],
      );
      expect(exec('ip', '-4', 'rule', 'show')).toMatch(/^32764:\s+from all fwmark 0x111\/0xfff lookup 133/m);
      expect(exec('ip', '-6', 'route', 'show', 'table', '133')).toMatch(/^local default dev lo/m);
      expect(migrate()).toBe('1');

      // RuleApplier in a second netns: the same rules, line for line.
      const other = uniqueName('C');
      names.push(other);
      const otherPath = addNetns(other);
      await new RuleApplier({ executor: netnsExecutor(otherPath), backend }).apply(inpodRules({ ipv6: true }));
      for (const family of ['ipv4', 'ipv6'] as const) {
        const theirs = sh('ip', ['netns', 'exec', other, iptablesCommand(backend, family, 'save')]);
        for (const table of ['mangle', 'nat', 'raw']) expect(ruleLines(save(family), table)).toEqual(ruleLines(theirs, table));
      }
    });

    it('applying again runs one read and nothing else', async () => {
      const before = [save('ipv4'), save('ipv6')];
      const calls = recording(at(ns.path).executor);
      const result = await new NetnsApplier(opts(ns.path, calls)).apply(podSpec);
      expect(result).toMatchObject({ changed: false, ipv6: true, hadRules: true, repaired: [], routing: [], sysctls: [], roundTrips: 1 });
      expect(calls.calls.map((c) => c.cmd)).toEqual(direct ? [iptablesCommand(backend, 'ipv4', 'save'), iptablesCommand(backend, 'ipv6', 'save')] : ['sh']);
      expect([save('ipv4'), save('ipv6')]).toEqual(before);
    });

    it('names drifted rules, routing and sysctl and puts them back', async () => {
      exec(`iptables-${backend}`, '-w', '-t', 'nat', '-D', 'ISTIO_OUTPUT', '-d', '169.254.7.127/32', '-p', 'tcp', '-m', 'tcp', '-j', 'ACCEPT');
      exec('ip', '-6', 'rule', 'del', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133');
      exec('sh', '-c', 'echo 0 > /proc/sys/net/ipv4/tcp_migrate_req');
      const result = await new NetnsApplier(opts(ns.path)).apply(podSpec);
      expect(result).toMatchObject({ changed: true, hadRules: true, sysctls: [MIGRATE], roundTrips: 2 });
      expect(result.repaired).toEqual([{ family: 'ipv4', table: 'nat', chain: 'ISTIO_OUTPUT', rule: '-d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT' }]);
      expect(result.routing).toEqual(['ip -6 rule add fwmark 0x111/0xfff pref 32764 lookup 133']);
      expect(ruleLines(save('ipv4'), 'nat')).toContain('-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT');
      expect(exec('ip', '-6', 'rule', 'show')).toMatch(/fwmark 0x111\/0xfff lookup 133/);
      expect(migrate()).toBe('1');
      expect((await new NetnsApplier(opts(ns.path)).apply(podSpec)).changed).toBe(false);
    });

    it('a failing restore rolls its family back and reports iptables stderr', async () => {
      const redirect = (): NetnsSpec => ({ ruleSet: inpodRules({ mode: 'redirect', dnsCapture: false }), routing: inpodRouting() });
      await new NetnsApplier(opts(ns.path)).apply(redirect);
      const before = save('ipv4');
      // A target the kernel cannot load, in the nat table (after mangle is committed).
      const broken = breaking(at(ns.path).executor);
      const error = await new NetnsApplier(opts(ns.path, broken))
        .apply(() => ({ ruleSet: inpodRules({ mode: 'tproxy' }), routing: inpodRouting() }))
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(error).toBeInstanceOf(IptablesError);
      expect(error).toMatchObject({ code: 'ERR_IPTABLES_RESTORE_FAILED' });
      expect((error as { stderr: string }).stderr).toMatch(/WEIRMISSING/);
      expect(save('ipv4')).toBe(before);
    });

    it('a failing restore on a new netns rolls back and leaves it as it was', async () => {
      const name = uniqueName('E');
      names.push(name);
      const path = addNetns(name);
      const before = sh('ip', ['netns', 'exec', name, iptablesCommand(backend, 'ipv4', 'save')]).replace(/^#.*\n/gm, '');
      const broken = breaking(at(path).executor);
      await expect(new NetnsApplier(opts(path, broken)).apply(podSpec)).rejects.toMatchObject({
        code: 'ERR_IPTABLES_RESTORE_FAILED',
        stderr: expect.stringMatching(/WEIRMISSING/),
      });
      // Tables iptables instantiated on the way may remain, empty: no rule, no Weir chain.
      const after = sh('ip', ['netns', 'exec', name, iptablesCommand(backend, 'ipv4', 'save')]);
      expect(after).not.toMatch(/ISTIO_|^-A /m);
      expect(before).not.toMatch(/^-A /m);
      expect(sh('ip', ['netns', 'exec', name, 'ip', '-4', 'rule', 'show'])).not.toMatch(/lookup 133/);
    });

    it('a new netns that already holds the policy routing gets the rest added (the kernel refuses a second ip rule)', async () => {
      const name = uniqueName('F');
      names.push(name);
      const path = addNetns(name);
      sh('ip', ['netns', 'exec', name, 'ip', '-4', 'rule', 'add', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133']);
      const result = await new NetnsApplier(opts(path)).apply(podSpec);
      // Over rtnetlink the rest of the routing went in with the install (the kernel takes each message
      // on its own), and the repair pass has only a read; by `ip`, the install stopped at the refused
      // rule and the rest came in the second pass.
      expect(result).toMatchObject({ changed: true, hadRules: false, repaired: [], roundTrips: netlink ? 2 : 3 });
      expect(result.routing).toEqual([
        'ip -4 route replace local 0.0.0.0/0 dev lo table 133',
        'ip -6 rule add fwmark 0x111/0xfff pref 32764 lookup 133',
        'ip -6 route replace local ::/0 dev lo table 133',
      ]);
      expect(sh('ip', ['netns', 'exec', name, 'ip', '-4', 'rule', 'show']).match(/lookup 133/g)).toHaveLength(1);
      expect(sh('ip', ['netns', 'exec', name, 'ip', '-6', 'rule', 'show'])).toMatch(/lookup 133/);
      expect((await new NetnsApplier(opts(path)).apply(podSpec)).changed).toBe(false);
    });

    it('follows the netns: with IPv6 off it reads and writes IPv4 only', async () => {
      const name = uniqueName('D');
      names.push(name);
      const path = addNetns(name);
      sh('ip', ['netns', 'exec', name, 'sh', '-c', 'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done']);
      const seen: boolean[] = [];
      const result = await new NetnsApplier(opts(path)).apply((facts) => {
        seen.push(facts.ipv6);
        return podSpec(facts);
      });
      expect(result).toMatchObject({ changed: true, ipv6: false });
      expect(result.routing.every((c) => c.startsWith('ip -4 '))).toBe(true);
      expect(sh('ip', ['netns', 'exec', name, iptablesCommand(backend, 'ipv6', 'save')])).not.toMatch(/ISTIO_/);
      expect(sh('ip', ['netns', 'exec', name, iptablesCommand(backend, 'ipv4', 'save')])).toMatch(/ISTIO_/);
    });

    it('remove takes out every Weir chain, jump, rule and route, and nothing else', async () => {
      exec(`iptables-${backend}`, '-w', '-t', 'filter', '-A', 'INPUT', '-p', 'tcp', '--dport', '9', '-j', 'ACCEPT');
      const applier = new NetnsApplier(opts(ns.path));
      const r = await applier.remove((facts) => ({ families: facts.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4'], routing: inpodRouting({ ipv6: facts.ipv6 }) }));
      expect(r).toEqual({ changed: true, ipv6: true });
      for (const family of ['ipv4', 'ipv6'] as const) expect(save(family)).not.toMatch(/ISTIO_/);
      expect(save('ipv4')).toMatch(/-A INPUT -p tcp -m tcp --dport 9 -j ACCEPT/);
      for (const f of ['-4', '-6']) {
        expect(exec('ip', f, 'rule', 'show')).not.toMatch(/fwmark 0x111/);
        expect(exec('ip', f, 'route', 'show', 'table', 'all')).not.toMatch(/table 133/);
      }
      expect(await applier.remove(() => ({ families: ['ipv4', 'ipv6'], routing: inpodRouting({ ipv6: true }) }))).toEqual({ changed: false, ipv6: true });
    });
  });
}

for (const { backend, netlink, direct } of MODES) {
  const via = `${netlink ? ', routing over rtnetlink' : ', routing by ip'}${direct ? ', commands exec\'d directly' : ''}`;
  const nl = (path: string): { netlink?: NetlinkExchange } => (netlink ? { netlink: netlinkAt(path) } : {});
  /** The executor of the mode (and, direct, the sysctls to go with it). */
  const at = (path: string): { executor: CommandExecutor; sysctls?: ReturnType<typeof directAt>['sysctls'] } => (direct ? directAt(path) : { executor: netnsExecutor(path) });
  const opts = (path: string, executor?: CommandExecutor) => {
    const base = at(path);
    return { ...base, executor: executor ?? base.executor, backend, ...nl(path) };
  };
  describe(`NetnsApplier likelyNew (install without reading) on iptables-${backend}${via}`, () => {
    const fresh = (tag: string): { name: string; path: string } => {
      const name = uniqueName(tag);
      names.push(name);
      return { name, path: addNetns(name) };
    };
    const save = (name: string, family: 'ipv4' | 'ipv6' = 'ipv4'): string => sh('ip', ['netns', 'exec', name, iptablesCommand(backend, family, 'save')]);
    const rulesOf = (text: string): string[] => ['mangle', 'nat', 'raw'].flatMap((t) => ruleLines(text, t));

    it('a new netns: one round trip, no iptables-save, the same rules as the read path', async () => {
      const a = fresh('G');
      const b = fresh('H');
      const calls = recording(at(a.path).executor);
      const trips: NetnsRoundTrip[] = [];
      const result = await new NetnsApplier({ ...opts(a.path, calls), onRoundTrip: (t) => trips.push(t) }).apply(podSpec, { likelyNew: true });
      expect(result).toMatchObject({ changed: true, ipv6: true, hadRules: false, repaired: [], roundTrips: 1, sysctls: [MIGRATE] });
      expect(calls.calls.map((c) => c.cmd)).toEqual(direct ? [iptablesCommand(backend, 'ipv4', 'restore'), iptablesCommand(backend, 'ipv6', 'restore')] : ['sh']);
      // What ran, as the agent's timings line names it: one script (no `ip` in it over rtnetlink), then the routing.
      expect(trips.map((t) => [t.kind, t.steps, t.failed])).toEqual([
        [
          'batch',
          netlink
            ? ['fresh1-restore-ipv4', 'fresh1-restore-ipv6', `fresh1-sysctl:${MIGRATE}`]
            : ['fresh1-restore-ipv4', 'fresh1-restore-ipv6', 'fresh1-ip-ipv4', 'fresh1-ip-ipv6', `fresh1-sysctl:${MIGRATE}`],
          false,
        ],
        ...(netlink ? [['netlink', ['write routing'], false]] : []),
      ]);
      expect(direct ? calls.calls[0]?.input : calls.calls[0]?.args[1]).toMatch(/-N ISTIO_/);
      await new NetnsApplier(opts(b.path)).apply(podSpec);
      for (const family of ['ipv4', 'ipv6'] as const) expect(rulesOf(save(a.name, family))).toEqual(rulesOf(save(b.name, family)));
      expect(sh('ip', ['netns', 'exec', a.name, 'ip', '-6', 'rule', 'show'])).toMatch(/lookup 133/);
      // Told "new" again, although it is in sync: -N refuses, nothing changes.
      const again = await new NetnsApplier(opts(a.path)).apply(podSpec, { likelyNew: true });
      expect(again).toMatchObject({ changed: false, hadRules: true, roundTrips: 2 });
      expect(rulesOf(save(a.name))).toEqual(rulesOf(save(b.name)));
    });

    it('a netns holding part of the rules: what the install committed is taken out, then the diff repairs the rest', async () => {
      const a = fresh('I');
      const iptables = (...args: string[]): string => sh('ip', ['netns', 'exec', a.name, `iptables-${backend}`, '-w', ...args]);
      iptables('-t', 'filter', '-A', 'INPUT', '-p', 'tcp', '--dport', '7', '-j', 'ACCEPT');
      // Only the raw table's chain: the tables before it in the restore commit, then raw's -N fails.
      iptables('-t', 'raw', '-N', 'ISTIO_OUTPUT');
      const result = await new NetnsApplier(opts(a.path)).apply(podSpec, { likelyNew: true });
      expect(result).toMatchObject({ changed: true, hadRules: true, roundTrips: 4 });
      expect(result.repaired.length).toBeGreaterThan(0);
      expect(result.repaired.some((r) => r.table === 'raw' && r.chain === 'ISTIO_OUTPUT')).toBe(true);
      // mangle and nat committed before raw's -N failed: taken out again, so the diff (and the report) sees them missing as they were.
      expect(new Set(result.repaired.map((r) => r.table))).toEqual(new Set(['mangle', 'nat', 'raw']));
      const b = fresh('J');
      await new NetnsApplier(opts(b.path)).apply(podSpec);
      expect(rulesOf(save(a.name))).toEqual(rulesOf(save(b.name)));
      expect(save(a.name)).toMatch(/-A INPUT -p tcp -m tcp --dport 7 -j ACCEPT/);
    });

    it('a restore that fails on a new netns leaves no Weir rule behind', async () => {
      const a = fresh('K');
      const broken = breaking(at(a.path).executor);
      await expect(new NetnsApplier(opts(a.path, broken)).apply(podSpec, { likelyNew: true })).rejects.toMatchObject({
        code: 'ERR_IPTABLES_RESTORE_FAILED',
        stderr: expect.stringMatching(/WEIRMISSING/),
      });
      expect(save(a.name)).not.toMatch(/ISTIO_|^-A /m);
    });
  });
}

describe('NetnsApplier fingerprint (iptables-nft, routing over rtnetlink): a drift check that skips reading unchanged rules', () => {
  const name = uniqueName('L');
  let path = '';
  const ipIn = (...args: string[]): string => sh('ip', ['netns', 'exec', name, ...args]);
  const applier = (trips: NetnsRoundTrip[] = [], calls = recording(netnsExecutor(path))): NetnsApplier =>
    new NetnsApplier({ executor: calls, backend: 'nft', netlink: netlinkAt(path), onRoundTrip: (t) => trips.push(t) });
  beforeAll(() => {
    names.push(name);
    path = addNetns(name);
  });

  it('is given once a read found the rules in sync, and then spares the iptables-save of both families', async () => {
    expect((await applier().apply(podSpec)).fingerprint).toBeUndefined(); // installed: not read in sync
    const first = await applier().apply(podSpec);
    expect(first).toMatchObject({ changed: false, fingerprint: expect.stringMatching(/^\d+\/1$/) });
    const trips: NetnsRoundTrip[] = [];
    const calls = recording(netnsExecutor(path));
    const again = await applier(trips, calls).apply(podSpec, { fingerprint: first.fingerprint! });
    expect(again).toMatchObject({ changed: false, hadRules: true, fingerprint: first.fingerprint, roundTrips: 1 });
    expect(calls.calls).toHaveLength(1);
    expect(calls.calls[0]?.args[1]).not.toMatch(/iptables-nft-save/);
    expect(trips.map((t) => `${t.kind}:${t.steps.join(',')}`)).toEqual(['netlink:read nft generation', 'batch:', 'netlink:read routing', 'netlink:read routing']);
  });

  it('a rule changed by hand bumps the nftables generation: the rules are read and repaired', async () => {
    const { fingerprint } = await applier().apply(podSpec);
    ipIn('iptables-nft', '-w', '-t', 'nat', '-D', 'ISTIO_OUTPUT', '-d', '169.254.7.127/32', '-p', 'tcp', '-m', 'tcp', '-j', 'ACCEPT');
    const r = await applier().apply(podSpec, { fingerprint: fingerprint! });
    expect(r).toMatchObject({ changed: true, hadRules: true, roundTrips: 2 });
    expect(r.repaired).toEqual([{ family: 'ipv4', table: 'nat', chain: 'ISTIO_OUTPUT', rule: '-d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT' }]);
    expect(r.fingerprint).toBeUndefined();
    expect(ipIn('iptables-nft-save', '-t', 'nat')).toMatch(/-A ISTIO_OUTPUT -d 169.254.7.127\/32 -p tcp -m tcp -j ACCEPT/);
  });

  it('routing and the sysctl are still checked and put back, and the fingerprint stays', async () => {
    const { fingerprint } = await applier().apply(podSpec);
    ipIn('ip', '-6', 'rule', 'del', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133');
    ipIn('sh', '-c', 'echo 0 > /proc/sys/net/ipv4/tcp_migrate_req');
    const r = await applier().apply(podSpec, { fingerprint: fingerprint! });
    expect(r).toMatchObject({ changed: true, routing: ['ip -6 rule add fwmark 0x111/0xfff pref 32764 lookup 133'], sysctls: [MIGRATE], fingerprint });
    expect(ipIn('ip', '-6', 'rule', 'show')).toMatch(/fwmark 0x111\/0xfff lookup 133/);
    expect(ipIn('cat', '/proc/sys/net/ipv4/tcp_migrate_req').trim()).toBe('1');
  });

  it('IPv6 turned off since: everything is read again (the wanted rules differ)', async () => {
    const { fingerprint } = await applier().apply(podSpec);
    ipIn('sh', '-c', 'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done');
    const calls = recording(netnsExecutor(path));
    const r = await applier([], calls).apply(podSpec, { fingerprint: fingerprint! });
    expect(r.ipv6).toBe(false);
    expect(calls.calls.some((c) => /iptables-nft-save/.test(c.args[1] ?? ''))).toBe(true);
    expect(r.fingerprint).toMatch(/\/0$/);
  });

  it('legacy iptables gives none (no generation to compare)', async () => {
    const other = uniqueName('M');
    names.push(other);
    const otherPath = addNetns(other);
    const legacy = new NetnsApplier({ executor: netnsExecutor(otherPath), backend: 'legacy', netlink: netlinkAt(otherPath) });
    await legacy.apply(podSpec);
    const r = await legacy.apply(podSpec);
    expect(r.changed).toBe(false);
    expect(r.fingerprint).toBeUndefined();
  });
});

describe('NetnsApplier errors', () => {
  it('a netns that cannot be entered is a clear error, not an empty read', async () => {
    const applier = new NetnsApplier({ executor: netnsExecutor('/var/run/netns/weir-no-such-netns'), backend: 'nft' });
    await expect(applier.apply(podSpec)).rejects.toMatchObject({ code: 'ERR_IPTABLES_COMMAND_FAILED', message: expect.stringMatching(/weir-no-such-netns/) });
  });

  it('the same without a shell: the direct read names the netns', async () => {
    const applier = new NetnsApplier({ ...directAt('/var/run/netns/weir-no-such-netns'), backend: 'nft' });
    await expect(applier.apply(podSpec)).rejects.toMatchObject({ code: 'ERR_IPTABLES_COMMAND_FAILED', message: expect.stringMatching(/weir-no-such-netns/) });
  });

  it('refuses the native nftables backend', () => {
    expect(() => new NetnsApplier({ executor: netnsExecutor('/x'), backend: 'nftables' as never })).toThrow(/RuleApplier/);
  });
});
