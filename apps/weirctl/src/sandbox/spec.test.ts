import { describe, expect, it } from 'vitest';
import { DATAPLANE_MODE_LABEL, defaultSpec, isEnrolled } from './spec.js';

describe('the default sandbox', () => {
  it('puts sleep and legacy-client on node-1 and httpbin on node-2', () => {
    const spec = defaultSpec(2);
    expect(spec.nodes).toEqual(['node-1', 'node-2']);
    expect(spec.pods.map((p) => `${p.namespace}/${p.name}@${p.node}`)).toEqual(['demo/sleep@node-1', 'demo/httpbin@node-2', 'legacy/legacy-client@node-1']);
    expect(spec.pods.find((p) => p.name === 'httpbin')?.app).toEqual({ kind: 'http-echo', port: 8000 });
    expect(spec.namespaces).toEqual([
      { name: 'demo', labels: { [DATAPLANE_MODE_LABEL]: 'ambient' } },
      { name: 'legacy', labels: {} },
    ]);
  });

  it('keeps every pod on node-1 when there is one node, and adds empty nodes beyond two', () => {
    expect(new Set(defaultSpec(1).pods.map((p) => p.node))).toEqual(new Set(['node-1']));
    expect(defaultSpec(3).nodes).toEqual(['node-1', 'node-2', 'node-3']);
  });

  it('enrolls by the pod label first (none opts out), then by the namespace label', () => {
    const ambient = { name: 'demo', labels: { [DATAPLANE_MODE_LABEL]: 'ambient' } };
    const plain = { name: 'legacy', labels: {} };
    expect(isEnrolled({ labels: {} }, ambient)).toBe(true);
    expect(isEnrolled({ labels: { [DATAPLANE_MODE_LABEL]: 'none' } }, ambient)).toBe(false);
    expect(isEnrolled({ labels: {} }, plain)).toBe(false);
    expect(isEnrolled({ labels: { [DATAPLANE_MODE_LABEL]: 'ambient' } }, plain)).toBe(true);
    expect(isEnrolled({ labels: {} }, undefined)).toBe(false);
  });
});
