import { describe, expect, it } from 'vitest';
import { parseFieldSelector, parseLabelSelector, SelectorError } from './selectors.js';
import type { KubeObject } from './types.js';

const pod = (labels: Record<string, string>, spec: Record<string, unknown> = {}): KubeObject => ({
  metadata: { name: 'p', namespace: 'ns', labels },
  spec,
  status: { phase: 'Running' },
});

describe('label selectors', () => {
  it('supports =, ==, !=, in, notin, exists and !exists', () => {
    const p = pod({ app: 'web', tier: 'front' });
    const m = (s: string) => parseLabelSelector(s)(p);
    expect(m('app=web')).toBe(true);
    expect(m('app==web,tier=front')).toBe(true);
    expect(m('app!=web')).toBe(false);
    expect(m('missing!=x')).toBe(true);
    expect(m('tier in (front, back)')).toBe(true);
    expect(m('tier notin (front)')).toBe(false);
    expect(m('app,!missing')).toBe(true);
    expect(m('!app')).toBe(false);
    expect(m('istio.io/dataplane-mode=ambient')).toBe(false);
  });

  it('rejects malformed selectors', () => {
    expect(() => parseLabelSelector('app=we b')).toThrow(SelectorError);
    expect(() => parseLabelSelector('=x')).toThrow(SelectorError);
  });
});

describe('field selectors', () => {
  it('matches the pod field labels the apiserver supports, hostNetwork defaulting to false', () => {
    const p = pod({}, { nodeName: 'n1' });
    expect(parseFieldSelector('pods', 'spec.nodeName=n1,metadata.namespace==ns')(p)).toBe(true);
    expect(parseFieldSelector('pods', 'status.phase!=Running')(p)).toBe(false);
    expect(parseFieldSelector('pods', 'spec.hostNetwork=false')(p)).toBe(true);
  });

  it('rejects field labels the apiserver does not know', () => {
    expect(() => parseFieldSelector('pods', 'spec.containers=x')).toThrow(/not a known field selector/);
    expect(() => parseFieldSelector('namespaces', 'spec.nodeName=x')).toThrow(SelectorError);
  });
});
