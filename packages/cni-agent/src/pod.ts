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

const v1PodMetadata = z.object({
  uid: z.string().min(1),
  name: z.string().min(1),
  namespace: z.string().min(1),
  labels: stringMap,
  annotations: stringMap,
  deletionTimestamp: z.unknown().optional(),
});
const v1PodSpecFields = {
  hostNetwork: z.boolean().nullish(),
  serviceAccountName: z.string().nullish(),
  nodeName: z.string().nullish(),
};
const v1PodStatus = z
  .object({
    phase: z.string().nullish(),
    podIP: z.string().nullish(),
    podIPs: z.array(z.object({ ip: z.string() })).nullish(),
  })
  .nullish();

// Containers are read by readContainers (zod would triple podFromV1's cost, and the pod source calls
// it for every pod on each lookup); this schema, with them, only explains a pod that fails.
const v1PodSchema = z.object({ metadata: v1PodMetadata, spec: z.object(v1PodSpecFields).nullish(), status: v1PodStatus });
const v1PodCheckSchema = z.object({
  metadata: v1PodMetadata,
  spec: z
    .object({
      ...v1PodSpecFields,
      containers: z.array(containerSecuritySchema).nullish(),
      initContainers: z.array(containerSecuritySchema).nullish(),
      ephemeralContainers: z.array(containerSecuritySchema).nullish(),
    })
    .nullish(),
  status: v1PodStatus,
});

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readStrings(v: unknown): string[] | undefined {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) return undefined;
  for (const s of v) if (typeof s !== 'string' || s.length === 0) return undefined;
  return v as string[];
}

/** Appends what containerSecuritySchema accepts, without zod; false for anything it would reject. */
function readContainers(list: unknown, kind: ContainerSecurity['kind'], out: ContainerSecurity[]): boolean {
  if (list === undefined || list === null) return true;
  if (!Array.isArray(list)) return false;
  for (const c of list as unknown[]) {
    if (!isObject(c) || typeof c.name !== 'string' || c.name.length === 0) return false;
    const sc = c.securityContext;
    let privileged = false;
    let add: string[] | undefined = [];
    let drop: string[] | undefined = [];
    if (sc !== undefined && sc !== null) {
      if (!isObject(sc)) return false;
      if (sc.privileged !== undefined && sc.privileged !== null) {
        if (typeof sc.privileged !== 'boolean') return false;
        privileged = sc.privileged;
      }
      const caps = sc.capabilities;
      if (caps !== undefined && caps !== null) {
        if (!isObject(caps)) return false;
        add = readStrings(caps.add);
        drop = readStrings(caps.drop);
        if (!add || !drop) return false;
      }
    }
    out.push({ name: c.name, kind, privileged, add, drop });
  }
  return true;
}

function malformed(obj: unknown, err: z.ZodError | undefined): CniAgentError {
  const meta = (obj as { metadata?: { namespace?: unknown; name?: unknown } } | null)?.metadata;
  return new CniAgentError(
    'ERR_AGENT_MALFORMED_POD',
    `malformed pod ${String(meta?.namespace)}/${String(meta?.name)}: ${err ? issues(err) : 'spec containers unreadable'}`,
  );
}

function issues(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join('.') || '<root>'}: ${i.message}`).join('; ');
}

/** Converts a Kubernetes v1 Pod object; throws ERR_AGENT_MALFORMED_POD naming the bad fields. */
export function podFromV1(obj: unknown): PodInfo {
  const parsed = v1PodSchema.safeParse(obj);
  const rawSpec = (obj as { spec?: Record<string, unknown> | null } | null)?.spec;
  const containers: ContainerSecurity[] = [];
  const readable =
    parsed.success &&
    readContainers(rawSpec?.initContainers, 'initContainer', containers) &&
    readContainers(rawSpec?.containers, 'container', containers) &&
    readContainers(rawSpec?.ephemeralContainers, 'ephemeralContainer', containers);
  if (!parsed.success || !readable) {
    const check = v1PodCheckSchema.safeParse(obj);
    throw malformed(obj, check.success ? undefined : check.error);
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
    containers,
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
