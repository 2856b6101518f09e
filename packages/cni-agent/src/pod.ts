import { z } from 'zod';
import { CniAgentError } from './errors.js';

/** What the agent needs to know about a pod, whichever source it came from. */
export interface PodInfo {
  uid: string;
  name: string;
  namespace: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  hostNetwork: boolean;
  serviceAccount: string;
  nodeName: string | undefined;
  /** Pod IPs as the source reports them (may be empty before the sandbox has an address). */
  ips: string[];
  phase: string | undefined;
  /** True once the API server set a deletionTimestamp. */
  terminating: boolean;
  /** Network namespace path when the source knows it (static file source). */
  netnsPath: string | undefined;
}

export interface NamespaceInfo {
  name: string;
  labels: Record<string, string>;
}

export const REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection';

const stringMap = z.record(z.string(), z.string()).nullish();

const v1PodSchema = z.object({
  metadata: z.object({
    uid: z.string().min(1),
    name: z.string().min(1),
    namespace: z.string().min(1),
    labels: stringMap,
    annotations: stringMap,
    deletionTimestamp: z.unknown().optional(),
  }),
  spec: z
    .object({
      hostNetwork: z.boolean().nullish(),
      serviceAccountName: z.string().nullish(),
      nodeName: z.string().nullish(),
    })
    .nullish(),
  status: z
    .object({
      phase: z.string().nullish(),
      podIP: z.string().nullish(),
      podIPs: z.array(z.object({ ip: z.string() })).nullish(),
    })
    .nullish(),
});

function issues(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || '<root>'}: ${i.message}`).join('; ');
}

/** Converts a Kubernetes v1 Pod object; throws ERR_AGENT_MALFORMED_POD naming the bad fields. */
export function podFromV1(obj: unknown): PodInfo {
  const parsed = v1PodSchema.safeParse(obj);
  if (!parsed.success) {
    const meta = (obj as { metadata?: { namespace?: unknown; name?: unknown } } | null)?.metadata;
    throw new CniAgentError(
      'ERR_AGENT_MALFORMED_POD',
      `malformed pod ${String(meta?.namespace)}/${String(meta?.name)}: ${issues(parsed.error)}`,
    );
  }
  const { metadata, spec, status } = parsed.data;
  const ips = status?.podIPs?.length ? status.podIPs.map((p) => p.ip) : status?.podIP ? [status.podIP] : [];
  return {
    uid: metadata.uid,
    name: metadata.name,
    namespace: metadata.namespace,
    labels: metadata.labels ?? {},
    annotations: metadata.annotations ?? {},
    hostNetwork: spec?.hostNetwork ?? false,
    serviceAccount: spec?.serviceAccountName ?? 'default',
    nodeName: spec?.nodeName ?? undefined,
    ips,
    phase: status?.phase ?? undefined,
    terminating: metadata.deletionTimestamp !== undefined && metadata.deletionTimestamp !== null,
    netnsPath: undefined,
  };
}

const v1NamespaceSchema = z.object({
  metadata: z.object({ name: z.string().min(1), labels: stringMap }),
});

export function namespaceFromV1(obj: unknown): NamespaceInfo {
  const parsed = v1NamespaceSchema.safeParse(obj);
  if (!parsed.success) {
    throw new CniAgentError('ERR_AGENT_MALFORMED_POD', `malformed namespace: ${issues(parsed.error)}`);
  }
  return { name: parsed.data.metadata.name, labels: parsed.data.metadata.labels ?? {} };
}

export function podKey(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}
