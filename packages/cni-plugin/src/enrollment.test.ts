import { describe, expect, it } from 'vitest';
import { isAmbientEnrolled, labelSelectorMatches } from './enrollment.js';

const ambientNs = { labels: { 'istio.io/dataplane-mode': 'ambient' } };
const plainNs = { labels: {} };

describe('isAmbientEnrolled', () => {
  it('enrolls by pod label or namespace label', () => {
    expect(isAmbientEnrolled({ labels: { 'istio.io/dataplane-mode': 'ambient' } }, plainNs)).toBe(true);
    expect(isAmbientEnrolled({ labels: {} }, ambientNs)).toBe(true);
    expect(isAmbientEnrolled({ labels: {} }, plainNs)).toBe(false);
    expect(isAmbientEnrolled({ labels: {} }, undefined)).toBe(false);
  });

  it('lets a pod opt out with none, and never enrolls sidecar or host-network pods', () => {
    expect(isAmbientEnrolled({ labels: { 'istio.io/dataplane-mode': 'none' } }, ambientNs)).toBe(false);
    expect(isAmbientEnrolled({ labels: {}, annotations: { 'sidecar.istio.io/status': '{}' } }, ambientNs)).toBe(false);
    expect(isAmbientEnrolled({ labels: { 'istio.io/dataplane-mode': 'ambient' }, hostNetwork: true }, ambientNs)).toBe(false);
  });

  it('accepts Kubernetes v1 objects and honours excluded namespaces', () => {
    const pod = { metadata: { namespace: 'kube-system', labels: null }, spec: { hostNetwork: false } };
    const ns = { metadata: { labels: { 'istio.io/dataplane-mode': 'ambient' } } };
    expect(isAmbientEnrolled(pod, ns)).toBe(true);
    expect(isAmbientEnrolled(pod, ns, { excludeNamespaces: ['kube-system'] })).toBe(false);
  });

  it('uses custom enablement selectors: both selectors of one entry must match', () => {
    const selectors = [{ podSelector: { matchLabels: { app: 'web' } }, namespaceSelector: { matchExpressions: [{ key: 'mesh', operator: 'Exists' as const }] } }];
    expect(isAmbientEnrolled({ labels: { app: 'web' } }, { labels: { mesh: '' } }, { enablementSelectors: selectors })).toBe(true);
    expect(isAmbientEnrolled({ labels: { app: 'web' } }, { labels: {} }, { enablementSelectors: selectors })).toBe(false);
    expect(isAmbientEnrolled({ labels: { app: 'db' } }, { labels: { mesh: 'x' } }, { enablementSelectors: selectors })).toBe(false);
  });
});

describe('labelSelectorMatches', () => {
  it('implements In, NotIn, Exists, DoesNotExist and an empty selector', () => {
    const l = { a: '1', b: '2' };
    expect(labelSelectorMatches({}, l)).toBe(true);
    expect(labelSelectorMatches({ matchExpressions: [{ key: 'a', operator: 'In', values: ['1', '3'] }] }, l)).toBe(true);
    expect(labelSelectorMatches({ matchExpressions: [{ key: 'a', operator: 'NotIn', values: ['1'] }] }, l)).toBe(false);
    expect(labelSelectorMatches({ matchExpressions: [{ key: 'z', operator: 'NotIn', values: ['1'] }] }, l)).toBe(true);
    expect(labelSelectorMatches({ matchExpressions: [{ key: 'z', operator: 'DoesNotExist' }] }, l)).toBe(true);
    expect(labelSelectorMatches({ matchLabels: { a: '1', b: '3' } }, l)).toBe(false);
  });
});
