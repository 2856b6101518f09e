// The pod-netns sysctl reader NetnsApplier uses to tell whether IPv6 is on (an interface's
// disable_ipv6 is 0): answered by `lo` alone when that is 0, by every interface's value otherwise;
// `all` and `default` never count (`all` at 0 with IPv6 off on every interface is IPv6 off).
import { execFileSync } from 'node:child_process';
import { openNetns, spawnInNetns, type Netns } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { podHasIpv6 } from '../src/capture-rules.js';
import { IptablesPodRules, netnsSysctls } from '../src/iptables-rules.js';
import type { PodInfo } from '../src/pod.js';
import { nsRun, requireRoot, uniq } from './support.js';

const ANY = 'net.ipv6.conf.*.disable_ipv6';
const ipv6On = (m: ReadonlyMap<string, string>): boolean => [...m].some(([k, v]) => /^net\.ipv6\.conf\..+\.disable_ipv6$/.test(k) && v === '0');

describe('netnsSysctls (root, real netns)', () => {
  const name = uniq('agentfix-sy');
  const path = `/var/run/netns/${name}`;
  let netns: Netns;

  beforeAll(async () => {
    await requireRoot();
    execFileSync('ip', ['netns', 'add', name]);
    // A pod's eth0 (its host end goes with the netns).
    execFileSync('ip', ['link', 'add', uniq('afx'), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name]);
    netns = openNetns(path);
    // A fresh netns inherits its IPv6 defaults from the host's `default`, or from init_net with
    // net.core.devconf_inherit_init_net=1: the tests below start from IPv6 on, which they need.
    const all = await nsRun(path, 'sysctl', ['-n', 'net.ipv6.conf.all.disable_ipv6']).catch((err: unknown) => {
      throw new Error(`this test needs IPv6 in the kernel (net.ipv6.conf.all.disable_ipv6 unreadable in a new netns): ${String(err)}`);
    });
    if (all.trim() !== '0') await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=0']);
  });
  afterAll(() => {
    netns?.close();
    // beforeAll may have failed before the netns existed: its error is the one to see.
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    } catch {
      // nothing to delete
    }
  });

  it('with net.ipv6.conf.lo.disable_ipv6 = 0 reads that one key for the IPv6 glob, and the other keys as asked', async () => {
    const got = await netnsSysctls(netns).read([ANY, 'net.ipv4.tcp_migrate_req', 'net.ipv4.ip_forward']);
    expect([...got.keys()].sort()).toEqual(['net.ipv4.ip_forward', 'net.ipv4.tcp_migrate_req', 'net.ipv6.conf.lo.disable_ipv6']);
    expect(got.get('net.ipv6.conf.lo.disable_ipv6')).toBe('0');
    expect(ipv6On(got)).toBe(true);
    // Without the glob, exactly what was asked.
    expect([...(await netnsSysctls(netns).read(['net.ipv4.ip_forward'])).keys()]).toEqual(['net.ipv4.ip_forward']);
  });

  it('with `all` = 1 reads every interface: IPv6 on when one of them has it on, off when none has', async () => {
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
    // Setting `all` sets every interface; turn lo back on alone.
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=0']);
    const on = await netnsSysctls(netns).read([ANY, 'net.ipv4.tcp_migrate_req']);
    expect(on.get('net.ipv6.conf.lo.disable_ipv6')).toBe('0');
    expect(ipv6On(on)).toBe(true);
    // eth0 alone on: on (the capture then fails naming lo, see the last test).
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=1', 'net.ipv6.conf.eth0.disable_ipv6=0']);
    const eth0 = await netnsSysctls(netns).read([ANY]);
    expect(eth0.get('net.ipv6.conf.eth0.disable_ipv6')).toBe('0');
    expect(ipv6On(eth0)).toBe(true);
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.eth0.disable_ipv6=1']);
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=1']);
    const off = await netnsSysctls(netns).read([ANY, 'net.ipv4.tcp_migrate_req']);
    expect(ipv6On(off)).toBe(false);
    expect(off.has('net.ipv4.tcp_migrate_req')).toBe(true);
  });

  it('with `all` = 0 but IPv6 off on every interface: IPv6 off, and the capture goes in IPv4 only (no IPv6 half failing on lo)', async () => {
    // Writing `all` sets every interface: each is turned off after it.
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=0']);
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=1', 'net.ipv6.conf.eth0.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
    expect((await nsRun(path, 'sysctl', ['-n', 'net.ipv6.conf.all.disable_ipv6'])).trim()).toBe('0');
    const got = await netnsSysctls(netns).read([ANY, 'net.ipv4.tcp_migrate_req']);
    expect(got.has('net.ipv6.conf.all.disable_ipv6')).toBe(false);
    expect(got.get('net.ipv6.conf.eth0.disable_ipv6')).toBe('1');
    expect(ipv6On(got)).toBe(false);
    expect(got.has('net.ipv4.tcp_migrate_req')).toBe(true);
    expect(await podHasIpv6(inNetns(netns))).toBe(false);

    const rules = new IptablesPodRules({ hostExecutor: inNetns(netns), dnsCapture: false });
    try {
      for (const likelyNew of [true, false]) await rules.apply(pod, netns, { likelyNew });
    } finally {
      rules.close();
    }
    expect(await nsRun(path, 'iptables-save', [])).toContain('ISTIO_PRERT');
    expect(await nsRun(path, 'ip6tables-save', [])).not.toContain('ISTIO');
    expect(await nsRun(path, 'ip', ['-6', 'rule', 'show'])).not.toContain('fwmark');
  });

  it('with IPv6 on on eth0 only: podHasIpv6 says on, and the capture fails closed naming lo and eth0', async () => {
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.eth0.disable_ipv6=0']);
    expect(await podHasIpv6(inNetns(netns))).toBe(true);
    const rules = new IptablesPodRules({ hostExecutor: inNetns(netns), dnsCapture: false });
    try {
      await expect(rules.apply(pod, netns, { likelyNew: false })).rejects.toThrow(/IPv6 is disabled on lo but enabled on eth0 in the netns.*net\.ipv6\.conf\.lo\.disable_ipv6=0/);
    } finally {
      rules.close();
    }
  });
});

const pod = { uid: 'agentfix-uid', name: 'p', namespace: 'apps', ips: ['10.99.0.2'], labels: {}, annotations: {} } as unknown as PodInfo;

/** Commands spawned in the netns (what podHasIpv6 runs `sh` through). */
function inNetns(netns: Netns): { run(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string; code: number }> } {
  return {
    run: async (cmd, args) => {
      const r = await spawnInNetns(netns, cmd, args);
      return { stdout: r.stdout.toString(), stderr: r.stderr.toString(), code: r.code ?? 128 };
    },
  };
}
