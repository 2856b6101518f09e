/** The ambient enrollment rule, shared by the CNI plugin and the node agent (one rule, one place). */

export const DATAPLANE_MODE_LABEL = 'istio.io/dataplane-mode';
export const SIDECAR_STATUS_ANNOTATION = 'sidecar.istio.io/status';

export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values?: string[];
}

/** A Kubernetes `metav1.LabelSelector`; an empty one matches everything. */
export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

/** One `enablement_selectors` entry: the pod is enrolled if both selectors match. */
export interface EnablementSelector {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
}

/**
 * istio-cni's default: pod label `istio.io/dataplane-mode=ambient`, or namespace label `=ambient`
 * unless the pod's label says `none`.
 */
export const DEFAULT_ENABLEMENT_SELECTORS: EnablementSelector[] = [
  { podSelector: { matchLabels: { [DATAPLANE_MODE_LABEL]: 'ambient' } } },
  {
    podSelector: { matchExpressions: [{ key: DATAPLANE_MODE_LABEL, operator: 'NotIn', values: ['none'] }] },
    namespaceSelector: { matchLabels: { [DATAPLANE_MODE_LABEL]: 'ambient' } },
  },
];

type Labels = Record<string, string> | null | undefined;

/**
 * A pod as the rule needs it: either flat (`{namespace, labels, annotations, hostNetwork}`, the node
 * agent's PodInfo) or a Kubernetes v1 Pod object (`{metadata, spec}`).
 */
export type EnrollmentPod =
  | { namespace?: string; labels?: Labels; annotations?: Labels; hostNetwork?: boolean | null }
  | {
      metadata?: { namespace?: string; labels?: Labels; annotations?: Labels } | null;
      spec?: { hostNetwork?: boolean | null } | null;
    };

/** A namespace: flat `{labels}` or a v1 Namespace `{metadata: {labels}}`; undefined means no labels. */
export type EnrollmentNamespace = { labels?: Labels } | { metadata?: { labels?: Labels } | null } | undefined;

export interface EnrollmentOptions {
  /** Default: DEFAULT_ENABLEMENT_SELECTORS. */
  enablementSelectors?: readonly EnablementSelector[];
  /** Pods in these namespaces are never enrolled. */
  excludeNamespaces?: readonly string[];
}

export function labelSelectorMatches(selector: LabelSelector | undefined, labels: Record<string, string>): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) {
    if (labels[k] !== v) return false;
  }
  for (const r of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, r.key);
    const value = labels[r.key] ?? '';
    const values = r.values ?? [];
    switch (r.operator) {
      case 'In':
        if (!has || !values.includes(value)) return false;
        break;
      case 'NotIn':
        if (has && values.includes(value)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
    }
  }
  return true;
}

function podView(pod: EnrollmentPod): { namespace: string | undefined; labels: Record<string, string>; annotations: Record<string, string>; hostNetwork: boolean } {
  if ('metadata' in pod || 'spec' in pod) {
    const p = pod as Extract<EnrollmentPod, { metadata?: unknown }>;
    return {
      namespace: p.metadata?.namespace,
      labels: p.metadata?.labels ?? {},
      annotations: p.metadata?.annotations ?? {},
      hostNetwork: p.spec?.hostNetwork ?? false,
    };
  }
  const p = pod as Extract<EnrollmentPod, { labels?: Labels }>;
  return { namespace: p.namespace, labels: p.labels ?? {}, annotations: p.annotations ?? {}, hostNetwork: p.hostNetwork ?? false };
}

function namespaceLabels(ns: EnrollmentNamespace): Record<string, string> {
  if (!ns) return {};
  if ('metadata' in ns) return ns.metadata?.labels ?? {};
  return (ns as { labels?: Labels }).labels ?? {};
}

/**
 * Whether a pod belongs in the ambient mesh. Never: excluded namespaces, host-network pods (their
 * netns is the node's), pods with a sidecar (`sidecar.istio.io/status`). Otherwise: any enablement
 * selector whose pod and namespace selectors both match.
 */
export function isAmbientEnrolled(pod: EnrollmentPod, namespace: EnrollmentNamespace, opts: EnrollmentOptions = {}): boolean {
  const p = podView(pod);
  if (p.namespace !== undefined && (opts.excludeNamespaces ?? []).includes(p.namespace)) return false;
  if (p.hostNetwork) return false;
  if (Object.hasOwn(p.annotations, SIDECAR_STATUS_ANNOTATION)) return false;
  const nsLabels = namespaceLabels(namespace);
  return (opts.enablementSelectors ?? DEFAULT_ENABLEMENT_SELECTORS).some(
    (s) => labelSelectorMatches(s.podSelector, p.labels) && labelSelectorMatches(s.namespaceSelector, nsLabels),
  );
}
