// The pod-netns sysctl reader NetnsApplier uses to tell whether IPv6 is on (any disable_ipv6 is 0):
// answered by `all` alone when that is 0, by every interface's value otherwise, so the answer is the
// shell glob's in every case.
import { execFileSync } from 'node:child_process';
import { openNetns, type Netns } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { netnsSysctls } from '../src/iptables-rules.js';
import { nsRun, requireRoot, uniq } from './support.js';

const ANY = 'net.ipv6.conf.*.disable_ipv6';
const ipv6On = (m: ReadonlyMap<string, string>): boolean => [...m].some(([k, v]) => /^net\.ipv6\.conf\..+\.disable_ipv6$/.test(k) && v === '0');

describe('netnsSysctls (root, real netns)', () => {
  const name = uniq('wsy');
  const path = `/var/run/netns/${name}`;
  let netns: Netns;

  beforeAll(async () => {
    await requireRoot();
    execFileSync('ip', ['netns', 'add', name]);
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

  it('with net.ipv6.conf.all.disable_ipv6 = 0 reads that one key for the IPv6 glob, and the other keys as asked', async () => {
    const got = await netnsSysctls(netns).read([ANY, 'net.ipv4.tcp_migrate_req', 'net.ipv4.ip_forward']);
    expect([...got.keys()].sort()).toEqual(['net.ipv4.ip_forward', 'net.ipv4.tcp_migrate_req', 'net.ipv6.conf.all.disable_ipv6']);
    expect(got.get('net.ipv6.conf.all.disable_ipv6')).toBe('0');
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
    expect(on.get('net.ipv6.conf.all.disable_ipv6')).toBe('1');
    expect(ipv6On(on)).toBe(true);
    await nsRun(path, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=1']);
    const off = await netnsSysctls(netns).read([ANY, 'net.ipv4.tcp_migrate_req']);
    expect(ipv6On(off)).toBe(false);
    expect(off.has('net.ipv4.tcp_migrate_req')).toBe(true);
  });
});
