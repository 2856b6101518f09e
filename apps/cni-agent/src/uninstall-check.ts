import { AppsV1Api, type KubeConfig } from '@kubernetes/client-node';

export interface UninstallCheckOptions {
  /** `--uninstall-on-exit`: off, the plugin always stays (remove it with `weir-cni-agent uninstall`). */
  enabled: boolean;
  kubeConfig: KubeConfig | undefined;
  /** The agent's own DaemonSet. */
  daemonSet: { name: string; namespace: string } | undefined;
  /** Deadline for the API read; default 5000 ms (the pod's grace period is short). */
  timeoutMs?: number;
}

export interface UninstallDecision {
  uninstall: boolean;
  reason: string;
}

/** Whether a 404 is the apiserver saying that this DaemonSet does not exist (not a missing route or API group). */
function isDaemonSetNotFound(err: unknown, name: string): boolean {
  const e = err as { code?: unknown; body?: unknown };
  if (e.code !== 404) return false;
  let status: unknown = e.body;
  if (typeof status === 'string') {
    try {
      status = JSON.parse(status);
    } catch {
      return false;
    }
  }
  const s = status as { reason?: unknown; details?: { name?: unknown; kind?: unknown } } | undefined;
  return s?.reason === 'NotFound' && s.details?.name === name && s.details.kind === 'daemonsets';
}

/**
 * On shutdown, whether to take the plugin out of the node's CNI chain: only for a real uninstall,
 * i.e. the agent's DaemonSet is gone or being deleted (istio-cni asks the same question). During an
 * upgrade or a restart the DaemonSet is still there, and the plugin must stay so that new pods wait
 * for the next agent instead of starting uncaptured.
 *
 * `helm uninstall` deletes the DaemonSet and, right after it, the agent's ServiceAccount and RBAC,
 * before the garbage collector has even deleted the pods: by SIGTERM the read usually answers 401 (the
 * ServiceAccount is gone) or 403 (its Role is), not 404. Those are taken as the uninstall they are
 * (an upgrade or a restart keeps both), as istio-cni takes any failed read. Anything else that leaves
 * the question open (5xx, a timeout, no connection, a 404 that does not name the DaemonSet) keeps the
 * plugin: a stalled pod start is recoverable, an uncaptured one is not.
 */
export async function decideUninstallOnExit(opts: UninstallCheckOptions): Promise<UninstallDecision> {
  if (!opts.enabled) return { uninstall: false, reason: 'uninstall-on-exit is off' };
  const ds = opts.daemonSet;
  if (!opts.kubeConfig || !ds) {
    return { uninstall: false, reason: 'no DaemonSet name or Kubernetes API to tell an uninstall from an upgrade' };
  }
  const timeoutMs = opts.timeoutMs ?? 5000;
  let timer: NodeJS.Timeout | undefined;
  try {
    const read = opts.kubeConfig.makeApiClient(AppsV1Api).readNamespacedDaemonSet({ name: ds.name, namespace: ds.namespace });
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    const found = await Promise.race([read, deadline]);
    if (found.metadata?.deletionTimestamp != null) {
      return { uninstall: true, reason: `DaemonSet ${ds.namespace}/${ds.name} is being deleted` };
    }
    return { uninstall: false, reason: `DaemonSet ${ds.namespace}/${ds.name} still exists (upgrade or restart)` };
  } catch (err) {
    if (isDaemonSetNotFound(err, ds.name)) return { uninstall: true, reason: `DaemonSet ${ds.namespace}/${ds.name} is gone` };
    const e = err as { code?: unknown; message?: unknown };
    if (e.code === 401 || e.code === 403) {
      const gone = e.code === 401 ? 'ServiceAccount' : 'RBAC';
      return { uninstall: true, reason: `DaemonSet ${ds.namespace}/${ds.name} cannot be read (HTTP ${e.code}): the agent's ${gone} is gone, so its release is being removed` };
    }
    const what = typeof e.code === 'number' ? `HTTP ${e.code}` : String(e.message ?? err);
    return { uninstall: false, reason: `cannot read DaemonSet ${ds.namespace}/${ds.name} (${what}), so it may be an upgrade` };
  } finally {
    clearTimeout(timer);
  }
}
