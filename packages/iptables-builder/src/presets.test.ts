import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import { desiredFromFamily, diffTables } from './diff.js';
import type { Family, RuleSet } from './model.js';
import { parseIptablesSave } from './parse-iptables.js';
import { hostProbeRules, inpodRules } from './presets.js';
import { familyRules, renderIptablesRestore } from './render-iptables.js';

const data = (name: string): string => readFileSync(new URL(`../testdata/${name}`, import.meta.url), 'utf8');

/** The `-A`/`-I` lines per table and chain, in order, from any save/restore text. */
function rulesByChain(text: string, family: Family): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const t of parseIptablesSave(text, family)) {
    for (const r of t.rules) (out[`${t.name}/${r.chain}`] ??= []).push(r.spec);
  }
  return out;
}

function expectEquivalent(ruleSet: RuleSet, family: Family, golden: string): void {
  const desired = desiredFromFamily(familyRules(ruleSet, family));
  const diff = diffTables(family, desired, parseIptablesSave(golden, family));
  expect(diff.changes).toEqual([]);
  expect(rulesByChain(renderIptablesRestore(ruleSet, family), family)).toEqual(rulesByChain(golden, family));
}

describe('inpodRules', () => {
  it('tproxy without DNS capture is exactly the seed, line for line', () => {
    const seed = data('seed-tproxy.save');
    const text = renderIptablesRestore(inpodRules({ dnsCapture: false }), 'ipv4');
    const ruleLines = (s: string): string[] => s.split('\n').filter((l) => /^(\*|-A|COMMIT)/.test(l));
    expect(ruleLines(text)).toEqual(ruleLines(seed));
    expectEquivalent(inpodRules({ dnsCapture: false }), 'ipv4', seed);
  });

  it('redirect mode with DNS matches iptables-default.golden', () => {
    expectEquivalent(inpodRules({ mode: 'redirect' }), 'ipv4', data('iptables-default.golden'));
  });

  it('redirect mode without inbound capture or DNS matches iptables-ingress.golden', () => {
    expectEquivalent(
      inpodRules({ mode: 'redirect', inboundCapture: false, dnsCapture: false }),
      'ipv4',
      data('iptables-ingress.golden'),
    );
  });

  it('tproxy with DNS capture adds the DNS rules and the raw table to the seed', () => {
    const rules = rulesByChain(renderIptablesRestore(inpodRules(), 'ipv4'), 'ipv4');
    const seed = rulesByChain(data('seed-tproxy.save'), 'ipv4');
    expect(rules['mangle/ISTIO_PRERT']).toEqual(seed['mangle/ISTIO_PRERT']);
    expect(rules['nat/ISTIO_OUTPUT']).toEqual([
      '-d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
      '! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053',
      '! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053',
      ...(seed['nat/ISTIO_OUTPUT'] ?? []).slice(1),
    ]);
    expect(rules['raw/ISTIO_OUTPUT']).toEqual(['-p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1']);
  });

  it('IPv6 variants use ::1/128 and the v6 probe address', () => {
    const text = renderIptablesRestore(inpodRules({ ipv6: true, ipv4: false, dnsCapture: false }), 'ipv6');
    expect(text).toContain('-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT');
    expect(text).toContain('-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
    expect(text).toContain('--on-ip :: --tproxy-mark 0x111/0xfff');
    expect(text).not.toContain('127.0.0.1');
  });
});

describe('hostProbeRules', () => {
  it('matches iptables-hostprobe_ipv6.golden for both families, with its ipsets', () => {
    const golden = data('iptables-hostprobe_ipv6.golden');
    const [, v4 = '', v6 = ''] = golden.split(/(?=\* nat)/);
    const { ruleSet, ipsets } = hostProbeRules({ ipv6: true });
    expectEquivalent(ruleSet, 'ipv4', v4);
    expectEquivalent(ruleSet, 'ipv6', v6);
    expect(ipsets.map((s) => `${s.name} ${s.type} ${s.family}`)).toEqual([
      'istio-inpod-probes-v4 hash:ip inet',
      'istio-inpod-probes-v6 hash:ip inet6',
    ]);
    expect(renderIptablesRestore(ruleSet, 'ipv4')).toContain('-I POSTROUTING 1 -j ISTIO_POSTRT');
  });
});
