import { isIP, SocketAddress } from 'node:net';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ZtunnelError } from './errors.js';

// The shape of ztunnel's LOCAL_XDS_PATH file: camelCase, unknown fields rejected (serde's
// deny_unknown_fields), so a typo is an error naming its path rather than a silently ignored field.

const port = z.coerce.number().int().min(1).max(65535);
const portMap = z.record(z.string().regex(/^\d+$/, 'port must be a number'), port);

/**
 * An address as the kernel and Node print it (`FD00:0::5` → `fd00::5`): the data path compares
 * addresses as strings (socket addresses against the workload state), so a hand-written
 * non-canonical form would never match and its pod would be taken for one outside the mesh.
 */
export function canonicalIp(s: string): string {
  return new SocketAddress({ address: s, family: isIP(s) === 6 ? 'ipv6' : 'ipv4' }).address;
}

// A zone id (`fe80::1%eth0`) names a link, never a pod: refused rather than silently dropped.
const isPlainIp = (s: string): boolean => isIP(s) !== 0 && !s.includes('%');
const ip = z.string().refine(isPlainIp, { message: 'not an IP address' }).transform(canonicalIp);
const cidr = z
  .string()
  .refine(
    (s) => {
      const [addr, len, extra] = s.split('/');
      if (extra !== undefined || addr === undefined || !isPlainIp(addr)) return false;
      if (len === undefined) return true;
      const n = Number(len);
      return /^\d+$/.test(len) && n <= (isIP(addr) === 4 ? 32 : 128);
    },
    { message: 'not an IP address or CIDR' },
  )
  .transform((s) => {
    const slash = s.indexOf('/');
    return slash < 0 ? canonicalIp(s) : `${canonicalIp(s.slice(0, slash))}${s.slice(slash)}`;
  });

/** `{exact}`, `{prefix}`, `{suffix}`, `{presence}` — as ztunnel serializes StringMatch; a bare string is exact. */
const stringMatch = z.union([
  z.string().transform((exact) => ({ kind: 'exact' as const, value: exact })),
  z.strictObject({ exact: z.string() }).transform((m) => ({ kind: 'exact' as const, value: m.exact })),
  z.strictObject({ prefix: z.string() }).transform((m) => ({ kind: 'prefix' as const, value: m.prefix })),
  z.strictObject({ suffix: z.string() }).transform((m) => ({ kind: 'suffix' as const, value: m.suffix })),
  z
    .strictObject({ presence: z.unknown() })
    .transform(() => ({ kind: 'presence' as const, value: '' })),
]);
export type StringMatch = z.output<typeof stringMatch>;

/** A service account match: a name (any namespace), or `{namespace, serviceAccount}`. */
const serviceAccountMatch = z.union([
  stringMatch.transform((name) => ({ namespace: undefined, name })),
  z
    .strictObject({ namespace: z.string(), serviceAccount: z.string() })
    .transform((m) => ({
      namespace: m.namespace as string | undefined,
      name: { kind: 'exact' as const, value: m.serviceAccount },
    })),
]);
export type ServiceAccountMatch = z.output<typeof serviceAccountMatch>;

const rbacMatch = z.strictObject({
  namespaces: z.array(stringMatch).default([]),
  notNamespaces: z.array(stringMatch).default([]),
  serviceAccounts: z.array(serviceAccountMatch).default([]),
  notServiceAccounts: z.array(serviceAccountMatch).default([]),
  principals: z.array(stringMatch).default([]),
  notPrincipals: z.array(stringMatch).default([]),
  sourceIps: z.array(cidr).default([]),
  notSourceIps: z.array(cidr).default([]),
  destinationIps: z.array(cidr).default([]),
  notDestinationIps: z.array(cidr).default([]),
  destinationPorts: z.array(port).default([]),
  notDestinationPorts: z.array(port).default([]),
});
export type RbacMatch = z.output<typeof rbacMatch>;

const policySchema = z.strictObject({
  name: z.string().min(1),
  namespace: z.string().default(''),
  scope: z.enum(['Global', 'Namespace', 'WorkloadSelector']).default('Namespace'),
  action: z.enum(['Allow', 'Deny']).default('Allow'),
  /** rules → clauses → matches: any rule, all clauses, any match. */
  rules: z.array(z.array(z.array(rbacMatch))).default([]),
  dryRun: z.boolean().default(false),
});
export type Policy = z.output<typeof policySchema>;

const gatewayAddress = z.strictObject({
  destination: z.unknown().optional(),
  hboneMtlsPort: port.optional(),
  hboneSinglePort: port.optional(),
});

const locality = z.strictObject({
  region: z.string().default(''),
  zone: z.string().default(''),
  subzone: z.string().default(''),
});

const workloadSchema = z
  .strictObject({
    uid: z.string().default(''),
    name: z.string().min(1),
    namespace: z.string().min(1),
    serviceAccount: z.string().default('default'),
    trustDomain: z.string().default(''),
    workloadIps: z.array(ip).default([]),
    protocol: z.enum(['TCP', 'HBONE']).default('TCP'),
    node: z.string().default(''),
    network: z.string().default(''),
    clusterId: z.string().default(''),
    hostname: z.string().default(''),
    services: z.record(z.string().regex(/^[^/]+\/.+$/, 'service key must be "<namespace>/<hostname>"'), portMap).default({}),
    waypoint: gatewayAddress.optional(),
    networkGateway: gatewayAddress.optional(),
    authorizationPolicies: z.array(z.string()).default([]),
    status: z.enum(['Healthy', 'Unhealthy']).default('Healthy'),
    locality: locality.optional(),
    canonicalName: z.string().default(''),
    canonicalRevision: z.string().default(''),
    workloadName: z.string().default(''),
    workloadType: z.string().default('pod'),
    networkMode: z.enum(['Standard', 'HostNetwork']).default('Standard'),
  })
  // istiod sends a workload with a hostname and no address for every ServiceEntry with DNS
  // resolution (and for endpoints given as names): reachable by name only, never by an IP.
  .refine((w) => w.workloadIps.length > 0 || w.hostname !== '', {
    path: ['workloadIps'],
    message: 'a workload needs at least one address, or a hostname (a DNS workload)',
  });
export type Workload = z.output<typeof workloadSchema>;

const vip = z
  .string()
  .refine(
    (s) => {
      const slash = s.indexOf('/');
      return isPlainIp(slash < 0 ? s : s.slice(slash + 1));
    },
    { message: 'VIP must be "<network>/<ip>"' },
  )
  .transform((s) => {
    const slash = s.indexOf('/');
    return slash < 0 ? canonicalIp(s) : `${s.slice(0, slash + 1)}${canonicalIp(s.slice(slash + 1))}`;
  });

const serviceSchema = z.strictObject({
  name: z.string().min(1),
  namespace: z.string().min(1),
  hostname: z.string().min(1),
  vips: z.array(vip).default([]),
  ports: portMap.default({}),
  subjectAltNames: z.array(z.string()).default([]),
  canonical: z.boolean().default(true),
  waypoint: gatewayAddress.optional(),
  loadBalancer: z.unknown().optional(),
  ipFamilies: z.enum(['Automatic', 'IPv4Only', 'IPv6Only', 'Dual']).optional(),
});
export type Service = z.output<typeof serviceSchema>;

const localConfigSchema = z.strictObject({
  workloads: z.array(workloadSchema).nullish().transform((v) => v ?? []),
  services: z.array(serviceSchema).nullish().transform((v) => v ?? []),
  policies: z.array(policySchema).nullish().transform((v) => v ?? []),
});
export type LocalConfig = z.output<typeof localConfigSchema>;

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out === '' ? String(p) : `.${String(p)}`;
  return out === '' ? '(root)' : out;
}

/**
 * Parses ztunnel's local config YAML. Throws ZtunnelError('ERR_ZTUNNEL_LOCAL_CONFIG') whose message
 * names each bad field by path (`workloads[0].workloadIps[0]: not an IP address`).
 */
export function parseLocalConfig(text: string, source = 'local config'): LocalConfig {
  let raw: unknown;
  try {
    raw = parseYaml(text) ?? {};
  } catch (cause) {
    throw new ZtunnelError('ERR_ZTUNNEL_LOCAL_CONFIG', `${source}: invalid YAML: ${(cause as Error).message}`, { cause });
  }
  const parsed = localConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => {
      const keys = i.code === 'unrecognized_keys' ? ` (${i.keys.join(', ')})` : '';
      const path = i.code === 'unrecognized_keys' ? [...i.path, ...i.keys.slice(0, 1)] : i.path;
      return `${formatPath(path)}: ${i.message}${keys}`;
    });
    throw new ZtunnelError('ERR_ZTUNNEL_LOCAL_CONFIG', `${source}: ${lines.join('; ')}`, { cause: parsed.error });
  }
  return parsed.data;
}
