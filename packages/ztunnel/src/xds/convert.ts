import { ZtunnelError } from '../errors.js';
import { parseLocalConfig, type LocalConfig, type Policy, type Service, type Workload } from '../local-config.js';
import {
  Action,
  Scope,
  type Authorization,
  type Address as AuthzAddress,
  type Match,
  type ServiceAccountMatch,
  type StringMatch,
} from './gen/authorization_pb.js';
import {
  IPFamilies,
  NetworkMode,
  TunnelProtocol,
  WorkloadStatus,
  WorkloadType,
  type GatewayAddress,
  type Service as XdsService,
  type Workload as XdsWorkload,
} from './gen/workload_pb.js';

// xDS resources become the very objects ztunnel's local YAML becomes: each converted resource is
// run through parseLocalConfig (JSON is YAML), so both sources share one schema and one validation.

function fail(what: string, message: string): never {
  throw new ZtunnelError('ERR_ZTUNNEL_XDS', `${what}: ${message}`);
}

/** Raw address bytes (4 or 16) to text; IPv4-mapped IPv6 stays IPv6 text, as ztunnel prints it. */
export function ipFromBytes(bytes: Uint8Array, what: string): string {
  if (bytes.length === 4) return bytes.join('.');
  if (bytes.length === 16) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
    // Compress the longest run of zero groups (RFC 5952).
    let best = -1;
    let bestLen = 0;
    for (let i = 0; i < 8; ) {
      if (groups[i] !== '0') {
        i++;
        continue;
      }
      let j = i;
      while (j < 8 && groups[j] === '0') j++;
      if (j - i > bestLen && j - i > 1) {
        best = i;
        bestLen = j - i;
      }
      i = j;
    }
    if (best < 0) return groups.join(':');
    return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
  }
  return fail(what, `${bytes.length} bytes is not an IPv4 (4) or IPv6 (16) address`);
}

function parseOne<K extends keyof LocalConfig>(key: K, value: unknown, what: string): LocalConfig[K][number] {
  try {
    return parseLocalConfig(JSON.stringify({ [key]: [value] }), what)[key][0]!;
  } catch (err) {
    throw new ZtunnelError('ERR_ZTUNNEL_XDS', (err as Error).message.replace(`${key}[0].`, ''), { cause: err });
  }
}

function gateway(g: GatewayAddress | undefined, what: string): Record<string, unknown> | undefined {
  if (!g) return undefined;
  const d = g.destination;
  const destination =
    d.case === 'hostname'
      ? { hostname: { namespace: d.value.namespace, hostname: d.value.hostname } }
      : d.case === 'address'
        ? { address: `${d.value.network}/${ipFromBytes(d.value.address, `${what}.address`)}` }
        : undefined;
  return { ...(destination ? { destination } : {}), ...(g.hboneMtlsPort ? { hboneMtlsPort: g.hboneMtlsPort } : {}) };
}

const WORKLOAD_TYPES: Record<WorkloadType, string> = {
  [WorkloadType.DEPLOYMENT]: 'deployment',
  [WorkloadType.CRONJOB]: 'cronjob',
  [WorkloadType.POD]: 'pod',
  [WorkloadType.JOB]: 'job',
};

/** An `istio.workload.Workload` as a local-config Workload. `name` is the xDS resource name. */
export function workloadFromXds(name: string, w: XdsWorkload): Workload {
  const what = `workload ${name}`;
  const services: Record<string, Record<string, number>> = {};
  for (const [key, list] of Object.entries(w.services)) {
    const ports: Record<string, number> = {};
    // target_port 0: the service's own target port applies (left to the Service entry).
    for (const p of list.ports) if (p.targetPort !== 0) ports[String(p.servicePort)] = p.targetPort;
    services[key] = ports;
  }
  const waypoint = gateway(w.waypoint, `${what}.waypoint`);
  const networkGateway = gateway(w.networkGateway, `${what}.networkGateway`);
  return parseOne<'workloads'>(
    'workloads',
    {
      uid: w.uid || name,
      name: w.name,
      namespace: w.namespace,
      serviceAccount: w.serviceAccount || 'default',
      trustDomain: w.trustDomain,
      workloadIps: w.addresses.map((a, i) => ipFromBytes(a, `${what}.addresses[${i}]`)),
      protocol: w.tunnelProtocol === TunnelProtocol.HBONE ? 'HBONE' : 'TCP',
      node: w.node,
      network: w.network,
      clusterId: w.clusterId,
      hostname: w.hostname,
      services,
      ...(waypoint ? { waypoint } : {}),
      ...(networkGateway ? { networkGateway } : {}),
      authorizationPolicies: w.authorizationPolicies,
      status: w.status === WorkloadStatus.UNHEALTHY ? 'Unhealthy' : 'Healthy',
      ...(w.locality ? { locality: { region: w.locality.region, zone: w.locality.zone, subzone: w.locality.subzone } } : {}),
      canonicalName: w.canonicalName,
      canonicalRevision: w.canonicalRevision,
      workloadName: w.workloadName,
      // An enum value newer than this build reads as the default, as ztunnel's generated accessors do:
      // a label is no reason to drop a workload.
      workloadType: WORKLOAD_TYPES[w.workloadType] ?? WORKLOAD_TYPES[WorkloadType.DEPLOYMENT],
      networkMode: w.networkMode === NetworkMode.HOST_NETWORK ? 'HostNetwork' : 'Standard',
    },
    what,
  );
}

const IP_FAMILIES: Record<IPFamilies, string> = {
  [IPFamilies.AUTOMATIC]: 'Automatic',
  [IPFamilies.IPV4_ONLY]: 'IPv4Only',
  [IPFamilies.IPV6_ONLY]: 'IPv6Only',
  [IPFamilies.DUAL]: 'Dual',
};

/** An `istio.workload.Service` as a local-config Service. */
export function serviceFromXds(name: string, s: XdsService): Service {
  const what = `service ${name}`;
  const ports: Record<string, number> = {};
  // target_port 0 means "per workload"; the service port is the best service-wide answer.
  for (const p of s.ports) ports[String(p.servicePort)] = p.targetPort || p.servicePort;
  const waypoint = gateway(s.waypoint, `${what}.waypoint`);
  return parseOne(
    'services',
    {
      name: s.name,
      namespace: s.namespace,
      hostname: s.hostname,
      vips: s.addresses.map((a, i) => `${a.network}/${ipFromBytes(a.address, `${what}.addresses[${i}]`)}`),
      ports,
      subjectAltNames: s.subjectAltNames,
      canonical: s.canonical,
      ...(waypoint ? { waypoint } : {}),
      ipFamilies: IP_FAMILIES[s.ipFamilies] ?? IP_FAMILIES[IPFamilies.AUTOMATIC],
    },
    what,
  );
}

function stringMatch(m: StringMatch, what: string): Record<string, unknown> {
  switch (m.matchType.case) {
    case 'exact':
      return { exact: m.matchType.value };
    case 'prefix':
      return { prefix: m.matchType.value };
    case 'suffix':
      return { suffix: m.matchType.value };
    case 'presence':
      return { presence: {} };
    default:
      return fail(what, 'string match with no exact, prefix, suffix or presence');
  }
}

function cidr(a: AuthzAddress, what: string): string {
  return `${ipFromBytes(a.address, what)}/${a.length}`;
}

function serviceAccount(m: ServiceAccountMatch): unknown {
  // No namespace: the local model's "this service account name in any namespace".
  return m.namespace === '' ? m.serviceAccount : { namespace: m.namespace, serviceAccount: m.serviceAccount };
}

function match(m: Match, what: string): Record<string, unknown> {
  const sm = (list: StringMatch[], field: string) => list.map((x, i) => stringMatch(x, `${what}.${field}[${i}]`));
  const ips = (list: AuthzAddress[], field: string) => list.map((x, i) => cidr(x, `${what}.${field}[${i}]`));
  return {
    namespaces: sm(m.namespaces, 'namespaces'),
    notNamespaces: sm(m.notNamespaces, 'notNamespaces'),
    serviceAccounts: m.serviceAccounts.map(serviceAccount),
    notServiceAccounts: m.notServiceAccounts.map(serviceAccount),
    principals: sm(m.principals, 'principals'),
    notPrincipals: sm(m.notPrincipals, 'notPrincipals'),
    sourceIps: ips(m.sourceIps, 'sourceIps'),
    notSourceIps: ips(m.notSourceIps, 'notSourceIps'),
    destinationIps: ips(m.destinationIps, 'destinationIps'),
    notDestinationIps: ips(m.notDestinationIps, 'notDestinationIps'),
    destinationPorts: m.destinationPorts,
    notDestinationPorts: m.notDestinationPorts,
  };
}

const SCOPES: Record<Scope, Policy['scope']> = {
  [Scope.GLOBAL]: 'Global',
  [Scope.NAMESPACE]: 'Namespace',
  [Scope.WORKLOAD_SELECTOR]: 'WorkloadSelector',
};

/** An `istio.security.Authorization` as a local-config Policy. */
export function policyFromXds(name: string, a: Authorization): Policy {
  const what = `authorization ${name}`;
  return parseOne(
    'policies',
    {
      name: a.name,
      namespace: a.namespace,
      scope: SCOPES[a.scope] ?? fail(what, `unknown scope ${a.scope}`),
      action: a.action === Action.DENY ? 'Deny' : a.action === Action.ALLOW ? 'Allow' : fail(what, `unknown action ${a.action}`),
      rules: a.rules.map((r, ri) =>
        r.clauses.map((c, ci) => c.matches.map((m, mi) => match(m, `${what}.rules[${ri}][${ci}][${mi}]`))),
      ),
      dryRun: a.dryRun,
    },
    what,
  );
}

/**
 * What is enforced in place of an authorization policy that could not be converted and has no
 * earlier good version: it must never allow what the real policy may have denied. A DENY (or an
 * action this build does not know) becomes "deny everything" in the policy's scope; an ALLOW becomes
 * an ALLOW that matches nothing, so the workloads it selects fall back to default-deny unless another
 * ALLOW admits the connection. Namespace and name come from the resource when it decodes, else from
 * the xDS resource name (`<namespace>/<name>`), so workloads naming the policy still find it. A scope
 * that is unknown, or a namespace scope without a namespace, becomes global: wider, never narrower.
 * A dry-run policy stays dry-run (it never decides anything).
 */
export function failClosedPolicy(resourceName: string, a: Authorization | undefined): Policy {
  const slash = resourceName.indexOf('/');
  const namespace = a?.namespace || (slash > 0 ? resourceName.slice(0, slash) : '');
  const name = a?.name || resourceName.slice(slash + 1) || resourceName || '(unnamed)';
  let scope: Policy['scope'] = (a && SCOPES[a.scope]) ?? 'Global';
  if (scope === 'Namespace' && namespace === '') scope = 'Global';
  const allow = a?.action === Action.ALLOW;
  return { name, namespace, scope, action: allow ? 'Allow' : 'Deny', rules: allow ? [] : [[]], dryRun: a?.dryRun ?? false };
}
