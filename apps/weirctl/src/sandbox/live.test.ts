import { describe, expect, it } from 'vitest';
import { parseLabelChange, parseLabelTarget, readPolicies } from './live.js';

describe('label arguments', () => {
  it('reads namespace and pod targets as kubectl-like refs', () => {
    expect(parseLabelTarget('ns/demo', undefined)).toEqual({ kind: 'namespace', name: 'demo' });
    expect(parseLabelTarget('namespace/demo', undefined)).toEqual({ kind: 'namespace', name: 'demo' });
    expect(parseLabelTarget('pod/demo/sleep', undefined)).toEqual({ kind: 'pod', namespace: 'demo', name: 'sleep' });
    expect(parseLabelTarget('pod/sleep', 'demo')).toEqual({ kind: 'pod', namespace: 'demo', name: 'sleep' });
    expect(parseLabelTarget('pod/sleep', undefined)).toEqual({ kind: 'pod', namespace: undefined, name: 'sleep' });
    expect(() => parseLabelTarget('pod/demo/sleep', 'other')).toThrow('pod/demo/sleep names namespace demo but -n says other');
    expect(() => parseLabelTarget('ns/demo', 'x')).toThrow('-n applies to pods');
    expect(() => parseLabelTarget('sleep', undefined)).toThrow("cannot label 'sleep'");
  });

  it('reads KEY=VALUE and KEY- and refuses invalid keys and values', () => {
    expect(parseLabelChange('istio.io/dataplane-mode=ambient')).toEqual({ key: 'istio.io/dataplane-mode', value: 'ambient' });
    expect(parseLabelChange('istio.io/dataplane-mode-')).toEqual({ key: 'istio.io/dataplane-mode', value: undefined });
    expect(parseLabelChange('app=')).toEqual({ key: 'app', value: '' });
    expect(() => parseLabelChange('app')).toThrow("'app' is neither KEY=VALUE nor KEY-");
    expect(() => parseLabelChange('Bad.Domain/x=1')).toThrow("label key 'Bad.Domain/x'");
    expect(() => parseLabelChange('app=a b')).toThrow("label value 'a b' (key app)");
  });
});

describe('readPolicies', () => {
  const deny = 'name: deny\nnamespace: demo\naction: Deny\nrules: [[[{destinationPorts: [8000]}]]]\n';

  it('takes one policy, a list, or a local-config file, and keeps the input as given', () => {
    const one = readPolicies(deny, 'f.yaml');
    expect(one).toHaveLength(1);
    expect(one[0]?.raw).toEqual({ name: 'deny', namespace: 'demo', action: 'Deny', rules: [[[{ destinationPorts: [8000] }]]] });
    expect(one[0]?.parsed).toMatchObject({ name: 'deny', namespace: 'demo', action: 'Deny', scope: 'Namespace', dryRun: false });
    expect(readPolicies(`- ${deny.replace(/\n(?=.)/g, '\n  ')}- name: allow\n`, 'f.yaml').map((p) => p.parsed.name)).toEqual(['deny', 'allow']);
    expect(readPolicies(`policies:\n  - name: a\n  - name: b\n    namespace: demo\n`, 'f.yaml').map((p) => `${p.parsed.namespace}/${p.parsed.name}`)).toEqual(['/a', 'demo/b']);
  });

  it('names the file and the field at fault, with ztunnel’s own schema', () => {
    expect(() => readPolicies('name: x\nactoin: Deny\n', 'p.yaml')).toThrow(/^p\.yaml: policies\[0\]\.actoin: /);
    expect(() => readPolicies('name: x\nrules: [[[{sourceIps: [nope]}]]]\n', 'p.yaml')).toThrow('p.yaml: policies[0].rules[0][0][0].sourceIps[0]: not an IP address or CIDR');
    expect(() => readPolicies('workloads: []\npolicies: [{name: x}]\n', 'p.yaml')).toThrow('p.yaml: holds workloads; policy apply takes policies only');
    expect(() => readPolicies('policies: []\n', 'p.yaml')).toThrow('p.yaml: no policies in it');
    expect(() => readPolicies('- name: x\n- name: x\n', 'p.yaml')).toThrow('p.yaml: policy x appears twice');
    expect(() => readPolicies('a: [', 'p.yaml')).toThrow(/^p\.yaml: invalid YAML/);
    expect(() => readPolicies('42', 'p.yaml')).toThrow('expected a policy');
  });
});
