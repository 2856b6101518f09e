import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import { IptablesError } from './errors.js';
import { parseIptablesSave, tokenize } from './parse-iptables.js';

const data = (name: string): string => readFileSync(new URL(`../testdata/${name}`, import.meta.url), 'utf8');

describe('parseIptablesSave', () => {
  it('models every rule of the seed and re-renders each exactly as iptables-save printed it', () => {
    const tables = parseIptablesSave(data('seed-tproxy.save'), 'ipv4');
    expect(tables.map((t) => t.name)).toEqual(['mangle', 'nat']);
    expect(tables[0]?.chains.map((c) => `${c.name} ${c.policy}`)).toEqual([
      'PREROUTING ACCEPT',
      'INPUT ACCEPT',
      'FORWARD ACCEPT',
      'OUTPUT ACCEPT',
      'POSTROUTING ACCEPT',
      'ISTIO_OUTPUT -',
      'ISTIO_PRERT -',
    ]);
    for (const r of tables.flatMap((t) => t.rules)) {
      expect(r.rule, r.text).toBeDefined();
      expect(r.spec).toBe(r.text);
    }
  });

  it('reads restore input: "* table", -N, -I, implicit --dport and --to-port', () => {
    const [mangle, nat, raw] = parseIptablesSave(data('iptables-default.golden'), 'ipv4');
    expect(mangle?.chains.map((c) => c.name)).toEqual(['ISTIO_PRERT', 'ISTIO_OUTPUT']);
    expect(nat?.rules.map((r) => r.spec)).toContain(
      '! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006',
    );
    expect(nat?.rules.map((r) => r.spec)).toContain('-s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT');
    expect(nat?.rules.map((r) => r.spec)).toContain(
      '! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053',
    );
    expect(raw?.rules).toHaveLength(4);
    const v6Block = data('iptables-hostprobe_ipv6.golden').split(/(?=\* nat)/)[2] ?? '';
    const [probe] = parseIptablesSave(v6Block, 'ipv6');
    expect(probe?.rules[0]).toMatchObject({ chain: 'POSTROUTING', spec: '-j ISTIO_POSTRT', position: 'first' });
    expect(probe?.rules[1]?.spec).toBe(
      '-p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v6 dst -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
    );
  });

  it('never takes an inverted --socket-exists for the owner match (nor leaks the ! onto the next match)', () => {
    const [nat] = parseIptablesSave(
      [
        '*nat',
        ':POSTROUTING ACCEPT [0:0]',
        '-A POSTROUTING -p tcp -m owner ! --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127',
        '-A POSTROUTING -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127',
        'COMMIT',
      ].join('\n'),
      'ipv4',
    );
    const [inverted, plain] = nat?.rules ?? [];
    expect(inverted?.rule).toBeUndefined();
    expect(plain?.rule?.matches).toEqual([
      { kind: 'protocol', protocol: 'tcp' },
      { kind: 'owner', socketExists: true },
      { kind: 'set', name: 'istio-inpod-probes-v4', flags: ['dst'] },
    ]);
  });

  it('keeps rules it does not model as text, and quoted comments intact', () => {
    const [filter] = parseIptablesSave(
      [
        '*filter',
        ':INPUT ACCEPT [0:0]',
        '-A INPUT -m addrtype --dst-type LOCAL -j KUBE-SERVICES',
        '-A INPUT -p tcp -m comment --comment "kube: a \\"quoted\\" thing" -j ACCEPT',
        '-A INPUT -j LOG --log-prefix "x y"',
        '-A INPUT -j MARK --set-mark 0x10',
        '-A INPUT -m comment --comment pod-uid_1 -j ACCEPT',
        'COMMIT',
      ].join('\n'),
      'ipv4',
    );
    const [addrtype, comment, log, mark, bare] = filter?.rules ?? [];
    expect(bare?.spec).toBe('-m comment --comment pod-uid_1 -j ACCEPT');
    expect(comment?.spec).toBe('-p tcp -m comment --comment "kube: a \\"quoted\\" thing" -j ACCEPT');
    expect(addrtype).toMatchObject({ spec: '-m addrtype --dst-type LOCAL -j KUBE-SERVICES' });
    expect(addrtype?.rule).toBeUndefined();
    expect(comment?.rule?.matches[1]).toEqual({ kind: 'comment', text: 'kube: a "quoted" thing' });
    expect(log?.spec).toBe('-j LOG --log-prefix "x y"');
    expect(mark?.spec).toBe('-j MARK --set-xmark 0x10/0xffffffff');
  });

  it('normalises --set-mark on CONNMARK the way the kernel stores it', () => {
    const [mangle] = parseIptablesSave('*mangle\n-A X -j CONNMARK --set-mark 0x111/0xf00\nCOMMIT\n', 'ipv4');
    expect(mangle?.rules[0]?.spec).toBe('-j CONNMARK --set-xmark 0x111/0xf11');
  });

  it('fails with ERR_IPTABLES_PARSE on statements it cannot place', () => {
    expect(() => parseIptablesSave('-A OUTPUT -j ACCEPT\n', 'ipv4')).toThrow(IptablesError);
    expect(() => parseIptablesSave('*nat\n-Z OUTPUT\nCOMMIT\n', 'ipv4')).toThrow(/line 2: unsupported statement/);
    expect(() => tokenize('-m comment --comment "open')).toThrow(/unbalanced quote/);
  });
});
