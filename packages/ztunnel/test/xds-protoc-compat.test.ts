// Byte compatibility of every message we define against an encoder no one here wrote: Debian's
// protoc, fed our .proto files. protoc encodes the text-format value; we encode the same value with
// the generated code; the bytes must be identical. Our bytes must also survive protoc decode+encode.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { ActionSchema, AuthorizationSchema, ClauseSchema, MatchSchema, RuleSchema, ScopeSchema, StringMatchSchema } from '../src/xds/gen/authorization_pb.js';
import { IstioCertificateRequestSchema, IstioCertificateResponseSchema } from '../src/xds/gen/citadel_pb.js';
import { NodeSchema } from '../src/xds/gen/envoy/config/core/v3/base_pb.js';
import {
  DeltaDiscoveryRequestSchema,
  DeltaDiscoveryResponseSchema,
  ResourceSchema,
} from '../src/xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { StatusSchema } from '../src/xds/gen/google/rpc/status_pb.js';
import {
  AddressSchema,
  AppProtocol,
  GatewayAddressSchema,
  IPFamilies,
  NetworkMode,
  ServiceSchema,
  TunnelProtocol,
  WorkloadSchema,
  WorkloadStatus,
  WorkloadType,
} from '../src/xds/gen/workload_pb.js';
import { ipBytes } from './support-control-plane.js';

const protoDir = fileURLToPath(new URL('../proto', import.meta.url));
const FILES = ['workload.proto', 'authorization.proto', 'citadel.proto', 'envoy/service/discovery/v3/discovery.proto'];
// protoc's well-known types (Debian protobuf-compiler ships them here).
const WKT = '/usr/include';

function protoc(args: string[], input: Uint8Array | string): Buffer {
  if (!existsSync(`${WKT}/google/protobuf/struct.proto`)) {
    throw new Error(`protoc well-known types missing at ${WKT}/google/protobuf: install Debian libprotobuf-dev (scripts/setup-host.sh)`);
  }
  try {
    return execFileSync('protoc', [...args, `-I${protoDir}`, `-I${WKT}`, ...FILES], { input, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') throw new Error('protoc not found: install Debian protobuf-compiler (scripts/setup-host.sh)');
    throw new Error(`protoc ${args.join(' ')} failed: ${e.stderr?.toString() ?? e.message}`);
  }
}

/** Bytes as a text-format string literal (octal escapes). */
function b(bytes: Uint8Array): string {
  return `"${[...bytes].map((x) => `\\${x.toString(8).padStart(3, '0')}`).join('')}"`;
}

const uni = 'ünï-日本-🚀';
const workloadInit = {
  uid: `Kubernetes//Pod/default/${uni}`,
  name: uni,
  namespace: 'default',
  addresses: [ipBytes('10.0.0.5'), ipBytes('fd00::5')],
  hostname: 'web-0.web.default.svc.cluster.local',
  network: 'net1',
  tunnelProtocol: TunnelProtocol.HBONE,
  trustDomain: 'cluster.local',
  serviceAccount: 'web',
  waypoint: { destination: { case: 'hostname' as const, value: { namespace: 'default', hostname: 'waypoint.default.svc' } }, hboneMtlsPort: 15008 },
  networkGateway: { destination: { case: 'address' as const, value: { network: 'net2', address: ipBytes('192.0.2.1') } }, hboneMtlsPort: 15008 },
  node: 'node-a',
  canonicalName: 'web',
  canonicalRevision: 'v1',
  workloadType: WorkloadType.POD,
  workloadName: 'web',
  nativeTunnel: true,
  applicationTunnel: { protocol: 1, port: 15088 },
  services: { 'default/web.default.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080, appProtocol: AppProtocol.HTTP2 }] } },
  authorizationPolicies: ['default/allow-web'],
  status: WorkloadStatus.UNHEALTHY,
  clusterId: 'Kubernetes',
  locality: { region: 'r', zone: 'z', subzone: 's' },
  networkMode: NetworkMode.HOST_NETWORK,
  extensions: [{ name: 'ext', config: { typeUrl: 'type.googleapis.com/google.protobuf.Empty', value: new Uint8Array() } }],
  capacity: 3,
};
const workloadText = `uid: "Kubernetes//Pod/default/${uni}" name: "${uni}" namespace: "default"
  addresses: ${b(ipBytes('10.0.0.5'))} addresses: ${b(ipBytes('fd00::5'))}
  hostname: "web-0.web.default.svc.cluster.local" network: "net1" tunnel_protocol: HBONE
  trust_domain: "cluster.local" service_account: "web"
  waypoint { hostname { namespace: "default" hostname: "waypoint.default.svc" } hbone_mtls_port: 15008 }
  network_gateway { address { network: "net2" address: ${b(ipBytes('192.0.2.1'))} } hbone_mtls_port: 15008 }
  node: "node-a" canonical_name: "web" canonical_revision: "v1" workload_type: POD workload_name: "web"
  native_tunnel: true application_tunnel { protocol: PROXY port: 15088 }
  services { key: "default/web.default.svc.cluster.local" value { ports { service_port: 80 target_port: 8080 app_protocol: HTTP2 } } }
  authorization_policies: "default/allow-web" status: UNHEALTHY cluster_id: "Kubernetes"
  locality { region: "r" zone: "z" subzone: "s" } network_mode: HOST_NETWORK
  extensions { name: "ext" config { type_url: "type.googleapis.com/google.protobuf.Empty" value: "" } }
  capacity { value: 3 }`;

const serviceInit = {
  name: 'web',
  namespace: 'default',
  hostname: 'web.default.svc.cluster.local',
  addresses: [{ network: '', address: ipBytes('10.96.0.10') }, { network: 'net1', address: ipBytes('fd00::10'), length: 128 }],
  ports: [{ servicePort: 80, targetPort: 8080 }, { servicePort: 443 }],
  subjectAltNames: ['spiffe://cluster.local/ns/default/sa/web'],
  waypoint: { destination: { case: 'address' as const, value: { network: '', address: ipBytes('10.0.0.99') } }, hboneMtlsPort: 15008 },
  loadBalancing: { routingPreference: [1, 2], mode: 2, healthPolicy: 1 },
  ipFamilies: IPFamilies.DUAL,
  canonical: true,
  ingressUseWaypoint: true,
};
const serviceText = `name: "web" namespace: "default" hostname: "web.default.svc.cluster.local"
  addresses { address: ${b(ipBytes('10.96.0.10'))} } addresses { network: "net1" address: ${b(ipBytes('fd00::10'))} length: 128 }
  ports { service_port: 80 target_port: 8080 } ports { service_port: 443 }
  subject_alt_names: "spiffe://cluster.local/ns/default/sa/web"
  waypoint { address { address: ${b(ipBytes('10.0.0.99'))} } hbone_mtls_port: 15008 }
  load_balancing { routing_preference: [REGION, ZONE] mode: FAILOVER health_policy: ALLOW_ALL }
  ip_families: DUAL canonical: true ingress_use_waypoint: true`;

const matchInit = {
  namespaces: [{ matchType: { case: 'exact' as const, value: 'a' } }, { matchType: { case: 'presence' as const, value: {} } }],
  notNamespaces: [{ matchType: { case: 'prefix' as const, value: 'kube-' } }],
  serviceAccounts: [{ namespace: 'ns', serviceAccount: 'sa' }],
  notServiceAccounts: [{ namespace: 'x', serviceAccount: 'y' }],
  principals: [{ matchType: { case: 'suffix' as const, value: '/sa/web' } }],
  notPrincipals: [{ matchType: { case: 'exact' as const, value: uni } }],
  sourceIps: [{ address: ipBytes('10.0.0.0'), length: 8 }],
  notSourceIps: [{ address: ipBytes('fd00::'), length: 64 }],
  destinationIps: [{ address: ipBytes('10.0.0.5'), length: 32 }],
  notDestinationIps: [{ address: ipBytes('10.0.0.6'), length: 32 }],
  destinationPorts: [80, 8080],
  notDestinationPorts: [22],
};
const matchText = `namespaces { exact: "a" } namespaces { presence { } } not_namespaces { prefix: "kube-" }
  principals { suffix: "/sa/web" } not_principals { exact: "${uni}" }
  source_ips { address: ${b(ipBytes('10.0.0.0'))} length: 8 } not_source_ips { address: ${b(ipBytes('fd00::'))} length: 64 }
  destination_ips { address: ${b(ipBytes('10.0.0.5'))} length: 32 } not_destination_ips { address: ${b(ipBytes('10.0.0.6'))} length: 32 }
  destination_ports: [80, 8080] not_destination_ports: 22
  service_accounts { namespace: "ns" serviceAccount: "sa" } not_service_accounts { namespace: "x" serviceAccount: "y" }`;

const workloadBytes = toBinary(WorkloadSchema, create(WorkloadSchema, workloadInit));
const addressBytes = toBinary(AddressSchema, create(AddressSchema, { type: { case: 'workload', value: workloadInit } }));

// One case per message; the text is protoc's text format for the same value.
const cases: { schema: DescMessage; type: string; init: MessageInitShape<DescMessage>; text: string }[] = [
  { schema: WorkloadSchema, type: 'istio.workload.Workload', init: workloadInit, text: workloadText },
  { schema: WorkloadSchema, type: 'istio.workload.Workload', init: {}, text: '' },
  { schema: ServiceSchema, type: 'istio.workload.Service', init: serviceInit, text: serviceText },
  { schema: AddressSchema, type: 'istio.workload.Address', init: { type: { case: 'workload', value: workloadInit } }, text: `workload { ${workloadText} }` },
  { schema: AddressSchema, type: 'istio.workload.Address', init: { type: { case: 'service', value: serviceInit } }, text: `service { ${serviceText} }` },
  { schema: GatewayAddressSchema, type: 'istio.workload.GatewayAddress', init: { hboneMtlsPort: 15008 }, text: 'hbone_mtls_port: 15008' },
  { schema: StringMatchSchema, type: 'istio.security.StringMatch', init: { matchType: { case: 'presence', value: {} } }, text: 'presence { }' },
  { schema: MatchSchema, type: 'istio.security.Match', init: matchInit, text: matchText },
  { schema: ClauseSchema, type: 'istio.security.Clause', init: { matches: [matchInit, {}] }, text: `matches { ${matchText} } matches { }` },
  { schema: RuleSchema, type: 'istio.security.Rule', init: { clauses: [{ matches: [{}] }] }, text: 'clauses { matches { } }' },
  {
    schema: AuthorizationSchema,
    type: 'istio.security.Authorization',
    init: {
      name: 'allow-web',
      namespace: 'default',
      scope: ScopeSchema.values[2]!.number,
      action: ActionSchema.values[1]!.number,
      rules: [{ clauses: [{ matches: [matchInit] }] }],
      dryRun: true,
      extensions: [{ name: 'e' }],
    },
    text: `name: "allow-web" namespace: "default" scope: WORKLOAD_SELECTOR action: DENY rules { clauses { matches { ${matchText} } } } dry_run: true extensions { name: "e" }`,
  },
  {
    schema: IstioCertificateRequestSchema,
    type: 'istio.v1.auth.IstioCertificateRequest',
    init: { csr: '-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n', validityDuration: 86400n, metadata: { ImpersonatedIdentity: 'spiffe://cluster.local/ns/default/sa/web' } },
    text: `csr: "-----BEGIN CERTIFICATE REQUEST-----\\nMIIB\\n-----END CERTIFICATE REQUEST-----\\n" validity_duration: 86400
      metadata { fields { key: "ImpersonatedIdentity" value { string_value: "spiffe://cluster.local/ns/default/sa/web" } } }`,
  },
  {
    schema: IstioCertificateResponseSchema,
    type: 'istio.v1.auth.IstioCertificateResponse',
    init: { certChain: ['leaf\n', 'root\n'] },
    text: 'cert_chain: "leaf\\n" cert_chain: "root\\n"',
  },
  {
    schema: NodeSchema,
    type: 'envoy.config.core.v3.Node',
    init: { id: 'ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local', cluster: 'c', metadata: { NAME: 'z', NODE_NAME: 'n' } },
    text: `id: "ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local" cluster: "c"
      metadata { fields { key: "NAME" value { string_value: "z" } } fields { key: "NODE_NAME" value { string_value: "n" } } }`,
  },
  { schema: StatusSchema, type: 'google.rpc.Status', init: { code: 3, message: uni }, text: `code: 3 message: "${uni}"` },
  {
    schema: DeltaDiscoveryRequestSchema,
    type: 'envoy.service.discovery.v3.DeltaDiscoveryRequest',
    init: {
      node: { id: 'n', metadata: { NAMESPACE: 'istio-system' } },
      typeUrl: 'type.googleapis.com/istio.workload.Address',
      resourceNamesSubscribe: ['*'],
      resourceNamesUnsubscribe: ['*'],
      initialResourceVersions: { 'Kubernetes//Pod/default/web-0': '7' },
      responseNonce: 'n-1',
      errorDetail: { code: 3, message: 'workload x: bad' },
    },
    text: `node { id: "n" metadata { fields { key: "NAMESPACE" value { string_value: "istio-system" } } } }
      type_url: "type.googleapis.com/istio.workload.Address" resource_names_subscribe: "*" resource_names_unsubscribe: "*"
      initial_resource_versions { key: "Kubernetes//Pod/default/web-0" value: "7" } response_nonce: "n-1"
      error_detail { code: 3 message: "workload x: bad" }`,
  },
  {
    schema: DeltaDiscoveryResponseSchema,
    type: 'envoy.service.discovery.v3.DeltaDiscoveryResponse',
    init: {
      systemVersionInfo: '42',
      resources: [{ name: 'Kubernetes//Pod/default/web-0', version: '7', resource: { typeUrl: 'type.googleapis.com/istio.workload.Address', value: addressBytes } }],
      typeUrl: 'type.googleapis.com/istio.workload.Address',
      removedResources: ['default/gone'],
      nonce: 'n-2',
    },
    text: `system_version_info: "42"
      resources { version: "7" resource { type_url: "type.googleapis.com/istio.workload.Address" value: ${b(addressBytes)} } name: "Kubernetes//Pod/default/web-0" }
      type_url: "type.googleapis.com/istio.workload.Address" nonce: "n-2" removed_resources: "default/gone"`,
  },
  {
    schema: ResourceSchema,
    type: 'envoy.service.discovery.v3.Resource',
    init: { version: '1', name: 'a', aliases: ['b'], ttl: { seconds: 5n }, cacheControl: { doNotCache: true }, resource: { typeUrl: 't', value: workloadBytes } },
    text: `version: "1" resource { type_url: "t" value: ${b(workloadBytes)} } name: "a" aliases: "b" ttl { seconds: 5 } cache_control { do_not_cache: true }`,
  },
];

describe('wire format equals protoc --encode with our .proto files', () => {
  for (const [i, c] of cases.entries()) {
    it(`${c.type} #${i}`, () => {
      const ours = toBinary(c.schema, create(c.schema, c.init));
      const theirs = protoc([`--encode=${c.type}`], c.text);
      expect(Buffer.from(ours).toString('hex')).toBe(theirs.toString('hex'));
      // And protoc reads ours back to the same value.
      const text = protoc([`--decode=${c.type}`], ours);
      expect(Buffer.from(protoc([`--encode=${c.type}`], text)).toString('hex')).toBe(Buffer.from(ours).toString('hex'));
      expect(toBinary(c.schema, fromBinary(c.schema, theirs))).toEqual(ours);
    });
  }
});
