/**
 * netnsHasTproxyRules against rules loaded by the real tools in a fresh netns: iptables-nft's TPROXY
 * target, native nft's tproxy statement, and REDIRECT/other rules that are not TPROXY.
 */
import { openNetns } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { netnsHasTproxyRules } from '../src/tproxy-rules.js';
import { execFileP, requireRoot, uniqueName } from './support.js';

describe('netnsHasTproxyRules', () => {
  const made: string[] = [];

  async function netnsWith(rules: (name: string) => Promise<unknown>): Promise<boolean> {
    const name = uniqueName('t');
    await execFileP('ip', ['netns', 'add', name]);
    made.push(name);
    await rules(name);
    const ns = openNetns(`/var/run/netns/${name}`);
    try {
      return netnsHasTproxyRules(ns);
    } finally {
      ns.close();
    }
  }
  const inNetns = (name: string, cmd: string, args: string[], input?: string): Promise<unknown> => {
    const p = execFileP('ip', ['netns', 'exec', name, cmd, ...args]);
    if (input !== undefined) {
      p.child.stdin!.end(input);
    }
    return p;
  };

  beforeAll(() => requireRoot());
  afterAll(async () => {
    for (const name of made) await execFileP('ip', ['netns', 'del', name]).catch(() => {});
  });

  it('finds the seed TPROXY rule loaded by iptables (nf_tables backend)', async () => {
    expect(
      await netnsWith((n) => inNetns(n, 'iptables-nft', ['-t', 'mangle', '-A', 'PREROUTING', '-p', 'tcp', '-j', 'TPROXY', '--on-port', '15006', '--tproxy-mark', '0x111/0xfff'])),
    ).toBe(true);
  });

  it('finds a native nftables tproxy statement', async () => {
    const ruleset = 'table inet t {\n chain p {\n  type filter hook prerouting priority mangle;\n  meta l4proto tcp tproxy ip to :15006 meta mark set 0x111\n }\n}\n';
    expect(await netnsWith((n) => inNetns(n, 'nft', ['-f', '-'], ruleset))).toBe(true);
  });

  it('answers false for REDIRECT capture, other targets, and no rules', async () => {
    expect(await netnsWith((n) => inNetns(n, 'iptables-nft', ['-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', '15006']))).toBe(false);
    expect(await netnsWith((n) => inNetns(n, 'iptables-nft', ['-t', 'mangle', '-A', 'PREROUTING', '-p', 'tcp', '-j', 'CONNMARK', '--set-xmark', '0x111/0xfff']))).toBe(false);
    expect(await netnsWith(async () => undefined)).toBe(false);
  });
});
