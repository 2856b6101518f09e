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
  /**
   * Every container's privilege and capability settings (containers, init and ephemeral), as the
   * capture-bypass check needs them. Undefined when the source does not say.
   */
  containers?: ContainerSecurity[];
}

/** What a container's securityContext says about its privileges, as written in the pod spec. */
export interface ContainerSecurity {
  name: string;
  kind: 'container' | 'initContainer' | 'ephemeralContainer';
  privileged: boolean;
  /** `capabilities.add` / `.drop` as written (any case, with or without `CAP_`). */
  add: string[];
  drop: string[];
}

export interface NamespaceInfo {
  name: string;
  labels: Record<string, string>;
}

export const REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection';

const stringMap = z.record(z.string(), z.string()).nullish();

const capabilityList = z.array(z.string().min(1)).nullish();

/** The v1 container fields the capture-bypass check reads; everything else is ignored. */
export const containerSecuritySchema = z.object({
  name: z.string().min(1),
  securityContext: z
    .object({
      privileged: z.boolean().nullish(),
      capabilities: z.object({ add: capabilityList, drop: capabilityList }).nullish(),
    })
    .nullish(),
});

type ContainerSpec = z.output<typeof containerSecuritySchema>;

/** The containers of a pod spec, in spec order: init, regular, then ephemeral. */
export function containerSecurity(spec: {
  containers?: ContainerSpec[] | null | undefined;
  initContainers?: ContainerSpec[] | null | undefined;
  ephemeralContainers?: ContainerSpec[] | null | undefined;
}): ContainerSecurity[] {
  const of = (list: ContainerSpec[] | null | undefined, kind: ContainerSecurity['kind']): ContainerSecurity[] =>
    (list ?? []).map((c) => ({
      name: c.name,
      kind,
      privileged: c.securityContext?.privileged ?? false,
      add: c.securityContext?.capabilities?.add ?? [],
      drop: c.securityContext?.capabilities?.drop ?? [],
    }));
  return [...of(spec.initContainers, 'initContainer'), ...of(spec.containers, 'container'), ...of(spec.ephemeralContainers, 'ephemeralContainer')];
}

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
      containers: z.array(containerSecuritySchema).nullish(),
      initContainers: z.array(containerSecuritySchema).nullish(),
      ephemeralContainers: z.array(containerSecuritySchema).nullish(),
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
    containers: containerSecurity(spec ?? {}),
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
