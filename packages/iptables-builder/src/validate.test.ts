import { describe, expect, it } from 'vitest';

import { InvalidRuleError, IptablesError } from './errors.js';
import type { Rule, RuleSet } from './model.js';
import { buildRule, defineRuleSet } from './validate.js';

const tcp = { kind: 'protocol', protocol: 'tcp' } as const;

function invalid(fn: () => unknown): InvalidRuleError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(IptablesError);
    expect(e).toMatchObject({ code: 'ERR_IPTABLES_INVALID_RULE' });
    return e as InvalidRuleError;
  }
  throw new Error('expected an InvalidRuleError');
}

describe('rule validation', () => {
  it('rejects port 70000 naming the field', () => {
    const e = invalid(() =>
      buildRule('ipv4', 'nat', 'OUTPUT', { matches: [tcp, { kind: 'tcp', dport: { port: 70000 } }], target: { kind: 'ACCEPT' } }),
    );
    expect(e.field).toBe('ipv4.nat.OUTPUT.matches[1].dport.port');
    expect(e.value).toBe(70000);
    expect(e.message).toMatch(/invalid rule field ipv4\.nat\.OUTPUT\.matches\[1\]\.dport\.port: .* \(got 70000\)/);
  });

  it('rejects a v6 CIDR in a v4 rule and the reverse', () => {
    const e = invalid(() => buildRule('ipv4', 'filter', 'INPUT', { matches: [{ kind: 'source', cidr: 'fd00::/8' }], target: { kind: 'DROP' } }));
    expect(e.field).toBe('ipv4.filter.INPUT.matches[0].cidr');
    expect(e.message).toContain('an IPv6 CIDR in an IPv4 rule');
    expect(
      invalid(() => buildRule('ipv6', 'nat', 'POSTROUTING', { matches: [tcp], target: { kind: 'SNAT', toSource: '10.0.0.1' } })).field,
    ).toBe('ipv6.nat.POSTROUTING.target.toSource');
    expect(invalid(() => buildRule('ipv4', 'filter', 'INPUT', { matches: [{ kind: 'source', cidr: '10.0.0.0/33' }], target: { kind: 'DROP' } })).field).toBe(
      'ipv4.filter.INPUT.matches[0].cidr',
    );
  });

  it('rejects targets in tables that cannot hold them', () => {
    const redirect: Rule = { matches: [tcp], target: { kind: 'REDIRECT', toPorts: 15001 } };
    expect(invalid(() => buildRule('ipv4', 'mangle', 'OUTPUT', redirect)).message).toContain('REDIRECT is not valid in table mangle');
    expect(invalid(() => buildRule('ipv4', 'nat', 'PREROUTING', { matches: [tcp], target: { kind: 'TPROXY', onPort: 15006 } })).field).toBe(
      'ipv4.nat.PREROUTING.target.kind',
    );
    expect(invalid(() => buildRule('ipv4', 'nat', 'OUTPUT', { matches: [], target: { kind: 'DROP' } })).field).toBe('ipv4.nat.OUTPUT.target.kind');
    expect(invalid(() => buildRule('ipv4', 'mangle', 'OUTPUT', { matches: [], target: { kind: 'CT', zone: 1 } })).field).toBe(
      'ipv4.mangle.OUTPUT.target.kind',
    );
    expect(invalid(() => buildRule('ipv4', 'bogus' as never, 'OUTPUT', redirect)).field).toBe('table');
  });

  it('rejects port targets and port matches without their protocol', () => {
    expect(invalid(() => buildRule('ipv4', 'nat', 'OUTPUT', { matches: [], target: { kind: 'REDIRECT', toPorts: 15001 } })).message).toContain(
      'needs a -p tcp or -p udp match',
    );
    expect(
      invalid(() => buildRule('ipv4', 'nat', 'OUTPUT', { matches: [{ kind: 'udp', dport: { port: 53 } }], target: { kind: 'ACCEPT' } })).field,
    ).toBe('ipv4.nat.OUTPUT.matches[0].kind');
    expect(invalid(() => buildRule('ipv4', 'nat', 'OUTPUT', { matches: [tcp], target: { kind: 'REDIRECT', toPorts: 0 } })).field).toBe(
      'ipv4.nat.OUTPUT.target.toPorts',
    );
  });

  it('rejects bad marks, states, names and duplicate single matches', () => {
    expect(invalid(() => buildRule('ipv4', 'mangle', 'X', { matches: [{ kind: 'mark', value: 2 ** 32 }], target: { kind: 'ACCEPT' } })).field).toBe(
      'ipv4.mangle.X.matches[0].value',
    );
    expect(
      invalid(() => buildRule('ipv4', 'mangle', 'X', { matches: [{ kind: 'conntrack', ctstate: ['BOGUS' as never] }], target: { kind: 'ACCEPT' } })).field,
    ).toBe('ipv4.mangle.X.matches[0].ctstate[0]');
    expect(invalid(() => buildRule('ipv4', 'mangle', 'X', { matches: [{ kind: 'inInterface', name: 'a-very-long-interface' }], target: { kind: 'ACCEPT' } })).field).toBe(
      'ipv4.mangle.X.matches[0].name',
    );
    expect(invalid(() => buildRule('ipv4', 'mangle', 'X', { matches: [tcp, tcp], target: { kind: 'ACCEPT' } })).field).toBe('ipv4.mangle.X.matches[1].kind');
    expect(invalid(() => buildRule('ipv4', 'mangle', 'X', { matches: [{ kind: 'comment', text: 'a"b' }], target: { kind: 'ACCEPT' } })).field).toBe(
      'ipv4.mangle.X.matches[0].text',
    );
  });

  it('checks jumps, hook positions and names across a rule set', () => {
    const set = (chains: RuleSet['families'][number]['tables'][number]['chains']): RuleSet => ({
      families: [{ family: 'ipv4', tables: [{ name: 'nat', chains }] }],
    });
    expect(invalid(() => defineRuleSet(set([{ name: 'OUTPUT', rules: [{ matches: [], target: { kind: 'jump', chain: 'ISTIO_NOPE' } }] }]))).field).toBe(
      'ipv4.nat.OUTPUT[0].target.chain',
    );
    expect(
      invalid(() => defineRuleSet(set([{ name: 'ISTIO_X', rules: [{ matches: [], target: { kind: 'ACCEPT' }, position: 'first' }] }]))).field,
    ).toBe('ipv4.nat.ISTIO_X[0].position');
    expect(invalid(() => defineRuleSet(set([{ name: 'BAD NAME', rules: [] }]))).field).toBe('ipv4.nat.BAD NAME.name');
    expect(invalid(() => defineRuleSet(set([{ name: 'A', rules: [{ matches: [], target: { kind: 'jump', chain: 'OUTPUT' } }] }]))).message).toContain(
      'cannot jump to a builtin chain',
    );
    expect(
      invalid(() => defineRuleSet({ families: [{ family: 'ipv4', tables: [] }, { family: 'ipv4', tables: [] }] })).field,
    ).toBe('families[1].family');
  });

  it('canonicalises addresses and freezes the result', () => {
    const rule = buildRule('ipv6', 'nat', 'POSTROUTING', {
      matches: [{ kind: 'destination', cidr: 'FD16:9254:7127:1337:0:0:0:1' }, tcp],
      target: { kind: 'SNAT', toSource: 'fd16:0:0:0:0:0:0:1' },
    });
    expect(rule.matches[0]).toEqual({ kind: 'destination', cidr: 'fd16:9254:7127:1337::1/128' });
    expect(rule.target).toEqual({ kind: 'SNAT', toSource: 'fd16::1' });
    expect(Object.isFrozen(rule.matches)).toBe(true);
  });
});
