export type CniAgentErrorCode =
  | 'ERR_AGENT_POD_NOT_FOUND'
  | 'ERR_AGENT_NAMESPACE_NOT_FOUND'
  | 'ERR_AGENT_KUBE_API'
  | 'ERR_AGENT_KUBECONFIG'
  | 'ERR_AGENT_MALFORMED_POD'
  | 'ERR_AGENT_NETNS_NOT_FOUND'
  | 'ERR_AGENT_RULES'
  | 'ERR_AGENT_ZTUNNEL'
  | 'ERR_AGENT_NOT_CAPTURED'
  | 'ERR_AGENT_PODS_FILE'
  | 'ERR_AGENT_STOPPED'
  | 'ERR_AGENT_HOST'
  | 'ERR_AGENT_CAPTURE_BYPASS';

/** The one error class of @weir/cni-agent; `code` is stable, callers branch on it. */
export class CniAgentError extends Error {
  constructor(
    readonly code: CniAgentErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CniAgentError';
  }
}

/** A short metric/event reason for a failure (bounded cardinality). */
export function failureReason(err: unknown): string {
  if (err instanceof CniAgentError) {
    switch (err.code) {
      case 'ERR_AGENT_NETNS_NOT_FOUND':
        return 'netns_not_found';
      case 'ERR_AGENT_RULES':
        return 'rules_failed';
      case 'ERR_AGENT_ZTUNNEL':
        return 'ztunnel_failed';
      case 'ERR_AGENT_POD_NOT_FOUND':
        return 'pod_not_found';
      case 'ERR_AGENT_NAMESPACE_NOT_FOUND':
        return 'namespace_not_found';
      case 'ERR_AGENT_KUBE_API':
        return 'kube_api_failed';
      case 'ERR_AGENT_MALFORMED_POD':
        return 'malformed_pod';
      case 'ERR_AGENT_NOT_CAPTURED':
        return 'not_captured';
      case 'ERR_AGENT_HOST':
        return 'host_rules_failed';
      default:
        return 'other';
    }
  }
  return 'other';
}
