/** The sandbox's default cluster: what `weirctl sandbox up` builds (issue 9). */

/** The label istio-cni reads to enroll a namespace or pod (`none` on a pod opts it out). */
export const DATAPLANE_MODE_LABEL = 'istio.io/dataplane-mode';

export interface NamespaceSpec {
  name: string;
  labels: Record<string, string>;
}

export type PodApp = { kind: 'sleep' } | { kind: 'http-echo'; port: number };

export interface PodSpec {
  name: string;
  namespace: string;
  node: string;
  labels: Record<string, string>;
  app: PodApp;
}

export interface SandboxSpec {
  nodes: string[];
  namespaces: NamespaceSpec[];
  pods: PodSpec[];
}

/**
 * node-1..N; namespace `demo` enrolled (ambient) with `sleep` on node-1 and `httpbin` (HTTP echo on 8000)
 * on node-2 (node-1 when there is one node); namespace `legacy` (not enrolled) with `legacy-client` on node-1.
 */
export function defaultSpec(nodeCount: number): SandboxSpec {
  const nodes = Array.from({ length: nodeCount }, (_, i) => `node-${i + 1}`);
  const first = nodes[0] ?? 'node-1';
  const second = nodes[1] ?? first;
  return {
    nodes,
    namespaces: [
      { name: 'demo', labels: { [DATAPLANE_MODE_LABEL]: 'ambient' } },
      { name: 'legacy', labels: {} },
    ],
    pods: [
      { name: 'sleep', namespace: 'demo', node: first, labels: { app: 'sleep' }, app: { kind: 'sleep' } },
      { name: 'httpbin', namespace: 'demo', node: second, labels: { app: 'httpbin' }, app: { kind: 'http-echo', port: 8000 } },
      { name: 'legacy-client', namespace: 'legacy', node: first, labels: { app: 'legacy-client' }, app: { kind: 'sleep' } },
    ],
  };
}

/** istio-cni's default selection: pod label `ambient` enrolls, `none` opts out, else the namespace label decides. */
export function isEnrolled(pod: { labels: Record<string, string> }, namespace: NamespaceSpec | undefined): boolean {
  const podMode = pod.labels[DATAPLANE_MODE_LABEL];
  if (podMode === 'none') return false;
  if (podMode === 'ambient') return true;
  return namespace?.labels[DATAPLANE_MODE_LABEL] === 'ambient';
}
