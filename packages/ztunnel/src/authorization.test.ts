import { describe, expect, it } from 'vitest';
import { evaluatePolicies, parseSpiffeIdentity, type ConnectionAttributes } from './authorization.js';
import { parseLocalConfig } from './local-config.js';

const policies = (yaml: string) => parseLocalConfig(`policies:\n${yaml}`).policies;
const idA = { trustDomain: 'cluster.local', namespace: 'ns1', serviceAccount: 'sa-a' };
const conn = (over: Partial<ConnectionAttributes> = {}): ConnectionAttributes => ({
  sourceIp: '10.0.0.1',
  sourceIdentity: idA,
  destinationIp: '10.0.0.2',
  destinationPort: 8080,
  ...over,
});

describe('evaluatePolicies', () => {
  it('allows when there are no policies or no ALLOW policies', () => {
    expect(evaluatePolicies([], conn())).toEqual({ allowed: true, reason: 'no-allow-policies' });
    const p = policies('- {name: d, namespace: ns1, action: Deny, rules: [[[{namespaces: [other]}]]]}');
    expect(evaluatePolicies(p, conn()).allowed).toBe(true);
  });

  it('denies on a matching DENY before any ALLOW', () => {
    const p = policies(`
- {name: a, namespace: ns1, action: Allow, rules: [[[{namespaces: [ns1]}]]]}
- {name: d, namespace: ns1, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}`);
    expect(evaluatePolicies(p, conn())).toEqual({ allowed: false, reason: 'deny-matched', policy: 'ns1/d' });
    expect(evaluatePolicies(p, conn({ destinationPort: 9090 }))).toMatchObject({ allowed: true, policy: 'ns1/a' });
  });

  it('denies when ALLOW policies exist and none match', () => {
    const p = policies('- {name: a, namespace: ns1, rules: [[[{serviceAccounts: [sa-x]}]]]}');
    expect(evaluatePolicies(p, conn())).toEqual({ allowed: false, reason: 'no-allow-matched' });
  });

  it('an empty rule list never matches; an empty match matches everything', () => {
    expect(evaluatePolicies(policies('- {name: a, namespace: ns1}'), conn()).allowed).toBe(false);
    expect(evaluatePolicies(policies('- {name: a, namespace: ns1, rules: [[[{}]]]}'), conn()).allowed).toBe(true);
  });

  it('rules OR, clauses AND, matches OR', () => {
    const p = policies(`
- name: a
  namespace: ns1
  rules:
  - - [{namespaces: [nope]}, {namespaces: [ns1]}]
    - [{destinationPorts: [8080]}]`);
    expect(evaluatePolicies(p, conn()).allowed).toBe(true);
    expect(evaluatePolicies(p, conn({ destinationPort: 1 })).allowed).toBe(false);
  });

  it('matches principals without spiffe://, prefixes, suffixes, presence and negations', () => {
    const allow = (m: string) => policies(`- {name: a, namespace: ns1, rules: [[[${m}]]]}`);
    expect(evaluatePolicies(allow('{principals: ["cluster.local/ns/ns1/sa/sa-a"]}'), conn()).allowed).toBe(true);
    expect(evaluatePolicies(allow('{principals: ["spiffe://cluster.local/ns/ns1/sa/sa-a"]}'), conn()).allowed).toBe(true);
    expect(evaluatePolicies(allow('{principals: [{suffix: "/sa/sa-a"}]}'), conn()).allowed).toBe(true);
    expect(evaluatePolicies(allow('{namespaces: [{prefix: "ns"}]}'), conn()).allowed).toBe(true);
    expect(evaluatePolicies(allow('{principals: [{presence: []}]}'), conn({ sourceIdentity: undefined })).allowed).toBe(false);
    expect(evaluatePolicies(allow('{notNamespaces: [ns1]}'), conn()).allowed).toBe(false);
    expect(evaluatePolicies(allow('{serviceAccounts: [{namespace: ns1, serviceAccount: sa-a}]}'), conn()).allowed).toBe(true);
    expect(evaluatePolicies(allow('{serviceAccounts: [{namespace: ns2, serviceAccount: sa-a}]}'), conn()).allowed).toBe(false);
    expect(evaluatePolicies(allow('{notDestinationPorts: [8080]}'), conn()).allowed).toBe(false);
  });

  it('plaintext (no identity): identity matches fail, negated ones pass', () => {
    const deny = policies('- {name: d, namespace: ns1, action: Deny, rules: [[[{notPrincipals: [{presence: []}]}]]]}');
    expect(evaluatePolicies(deny, conn({ sourceIdentity: undefined })).allowed).toBe(false);
    expect(evaluatePolicies(deny, conn()).allowed).toBe(true);
  });

  it('matches source and destination CIDRs, v4-mapped included', () => {
    const p = policies('- {name: a, namespace: ns1, rules: [[[{sourceIps: [10.0.0.0/24], notDestinationIps: ["10.0.0.9"]}]]]}');
    expect(evaluatePolicies(p, conn({ sourceIp: '::ffff:10.0.0.7' })).allowed).toBe(true);
    expect(evaluatePolicies(p, conn({ sourceIp: '10.0.1.7' })).allowed).toBe(false);
    expect(evaluatePolicies(p, conn({ destinationIp: '10.0.0.9' })).allowed).toBe(false);
  });

  it('dry-run policies only report', () => {
    const p = policies('- {name: d, namespace: ns1, action: Deny, dryRun: true, rules: [[[{}]]]}');
    const seen: string[] = [];
    expect(evaluatePolicies(p, conn(), { onDryRun: (pol, m) => seen.push(`${pol.name}:${m}`) }).allowed).toBe(true);
    expect(seen).toEqual(['d:true']);
  });
});

describe('parseSpiffeIdentity', () => {
  it('parses only the exact spiffe://td/ns/x/sa/y form', () => {
    expect(parseSpiffeIdentity('spiffe://cluster.local/ns/a/sa/b')).toEqual({ trustDomain: 'cluster.local', namespace: 'a', serviceAccount: 'b' });
    expect(parseSpiffeIdentity('spiffe://cluster.local/ns/a/sa/b/c')).toBeUndefined();
    expect(parseSpiffeIdentity('https://x')).toBeUndefined();
  });
});
