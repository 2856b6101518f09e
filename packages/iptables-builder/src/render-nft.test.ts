import { describe, expect, it } from 'vitest';

import { InvalidRuleError } from './errors.js';
import { hostProbeRules, inpodRules } from './presets.js';
import { nftChainName, planNft, renderNft } from './render-nft.js';

describe('renderNft', () => {
  it('renders the tproxy set as inet tables with Istio-named chains', () => {
    const text = renderNft(inpodRules({ dnsCapture: false }));
    const lines = text.trimEnd().split('\n');
    expect(lines.slice(0, 6)).toEqual([
      'add table inet istio-ambient-mangle',
      'flush table inet istio-ambient-mangle',
      'add chain inet istio-ambient-mangle prerouting { type filter hook prerouting priority -150 ; }',
      'add chain inet istio-ambient-mangle output { type route hook output priority -150 ; }',
      'add chain inet istio-ambient-mangle istio-output',
      'add chain inet istio-ambient-mangle istio-prerouting',
    ]);
    expect(lines).toContain(
      'add rule inet istio-ambient-mangle istio-prerouting tcp dport 15008 meta mark and 0xfff != 0x539 counter tproxy ip to :15008 meta mark set meta mark and 0xfffff000 or 0x111 accept',
    );
    expect(lines).toContain('add rule inet istio-ambient-mangle istio-prerouting meta l4proto tcp ct state related,established counter accept');
    expect(lines).toContain('add rule inet istio-ambient-mangle istio-prerouting meta mark and 0xfff == 0x539 counter ct mark set ct mark and 0xfffff000 or 0x111');
    expect(lines).toContain('add rule inet istio-ambient-mangle istio-output ct mark and 0xfff == 0x111 counter meta mark set ct mark');
    expect(text).not.toContain('comment');
  });

  it('qualifies family-neutral rules with nfproto when both families share the inet tables', () => {
    const text = renderNft(inpodRules({ ipv6: true, dnsCapture: false }));
    expect(text).toContain('add rule inet istio-ambient-nat istio-output meta nfproto ipv4 meta l4proto tcp meta mark and 0xfff == 0x111 counter accept');
    expect(text).toContain('add rule inet istio-ambient-nat istio-output meta nfproto ipv6 meta l4proto tcp meta mark and 0xfff == 0x111 counter accept');
    expect(text).toContain('tproxy ip6 to :15006');
    expect(text.match(/add rule inet istio-ambient-nat output jump istio-output/g)).toHaveLength(1);
  });

  it('tags rules for diffs with stable short hashes', () => {
    const a = planNft(inpodRules(), { tag: true });
    const b = planNft(inpodRules(), { tag: true });
    expect(a.flatMap((p) => p.rules.map((r) => r.tag))).toEqual(b.flatMap((p) => p.rules.map((r) => r.tag)));
    expect(renderNft(inpodRules(), { tag: true })).toMatch(/ comment "weir:[0-9a-f]{12}"\n/);
  });

  it('refuses matches it cannot express, naming them', () => {
    expect(() => renderNft(hostProbeRules().ruleSet)).toThrow(InvalidRuleError);
    expect(() => renderNft(hostProbeRules().ruleSet)).toThrow(/ipv4\.nat\.ISTIO_POSTRT\[0\]\.matches\[0\]\.kind/);
  });

  it('maps chain names the way Istio names them', () => {
    expect(['PREROUTING', 'ISTIO_PRERT', 'ISTIO_OUTPUT', 'ISTIO_POSTRT'].map(nftChainName)).toEqual([
      'prerouting',
      'istio-prerouting',
      'istio-output',
      'istio-postrouting',
    ]);
  });
});
