// The field and enum numbers our own .proto files use, checked against the upstream text they were
// written from. The numbers below were read from:
//   repo   istio/ztunnel
//   commit 62d826530e5ce85764e309170205b293efcbc80b (2026-08-20)
//   paths  proto/workload.proto, proto/authorization.proto, proto/citadel.proto, proto/xds.proto
// proto/xds.proto is ztunnel's own subset of Envoy's envoy.service.discovery.v3 messages; it declares
// Node and Status in that package, where we use Envoy's real homes (envoy.config.core.v3.Node and
// google.rpc.Status) — the package does not reach the wire, the numbers do.
import type { DescEnum, DescFile, DescMessage } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { file_authorization } from '../src/xds/gen/authorization_pb.js';
import { file_citadel } from '../src/xds/gen/citadel_pb.js';
import { file_envoy_config_core_v3_base } from '../src/xds/gen/envoy/config/core/v3/base_pb.js';
import { file_envoy_service_discovery_v3_discovery } from '../src/xds/gen/envoy/service/discovery/v3/discovery_pb.js';
import { file_google_rpc_status } from '../src/xds/gen/google/rpc/status_pb.js';
import { file_workload } from '../src/xds/gen/workload_pb.js';

const UPSTREAM_WORKLOAD: Record<string, number> = {
  'Address.workload': 1, 'Address.service': 2,
  'Service.name': 1, 'Service.namespace': 2, 'Service.hostname': 3, 'Service.addresses': 4, 'Service.ports': 5,
  'Service.subject_alt_names': 6, 'Service.waypoint': 7, 'Service.load_balancing': 8, 'Service.ip_families': 9,
  'Service.extensions': 10, 'Service.canonical': 11, 'Service.ingress_use_waypoint': 12, 'Service.weighted_waypoints': 13,
  'Service.visibility': 14,
  'LoadBalancing.routing_preference': 1, 'LoadBalancing.mode': 2, 'LoadBalancing.health_policy': 3,
  'Workload.uid': 20, 'Workload.name': 1, 'Workload.namespace': 2, 'Workload.addresses': 3, 'Workload.hostname': 21,
  'Workload.network': 4, 'Workload.tunnel_protocol': 5, 'Workload.trust_domain': 6, 'Workload.service_account': 7,
  'Workload.waypoint': 8, 'Workload.network_gateway': 19, 'Workload.node': 9, 'Workload.canonical_name': 10,
  'Workload.canonical_revision': 11, 'Workload.workload_type': 12, 'Workload.workload_name': 13, 'Workload.native_tunnel': 14,
  'Workload.application_tunnel': 23, 'Workload.services': 22, 'Workload.authorization_policies': 16, 'Workload.status': 17,
  'Workload.cluster_id': 18, 'Workload.locality': 24, 'Workload.network_mode': 25, 'Workload.extensions': 26,
  'Workload.capacity': 27,
  'Locality.region': 1, 'Locality.zone': 2, 'Locality.subzone': 3,
  'PortList.ports': 1,
  'Port.service_port': 1, 'Port.target_port': 2, 'Port.app_protocol': 3,
  'ApplicationTunnel.protocol': 1, 'ApplicationTunnel.port': 2,
  'GatewayAddress.hostname': 1, 'GatewayAddress.address': 2, 'GatewayAddress.hbone_mtls_port': 3,
  'WeightedWaypoint.destination': 1, 'WeightedWaypoint.weight': 2,
  'NetworkAddress.network': 1, 'NetworkAddress.address': 2, 'NetworkAddress.length': 3,
  'NamespacedHostname.namespace': 1, 'NamespacedHostname.hostname': 2,
  'Extension.name': 1, 'Extension.config': 2,
  // enums
  'Service.Visibility.PUBLIC': 0, 'Service.Visibility.NAMESPACE': 1,
  'IPFamilies.AUTOMATIC': 0, 'IPFamilies.IPV4_ONLY': 1, 'IPFamilies.IPV6_ONLY': 2, 'IPFamilies.DUAL': 3,
  'NetworkMode.STANDARD': 0, 'NetworkMode.HOST_NETWORK': 1,
  'LoadBalancing.Scope.UNSPECIFIED_SCOPE': 0, 'LoadBalancing.Scope.REGION': 1, 'LoadBalancing.Scope.ZONE': 2,
  'LoadBalancing.Scope.SUBZONE': 3, 'LoadBalancing.Scope.NODE': 4, 'LoadBalancing.Scope.CLUSTER': 5,
  'LoadBalancing.Scope.NETWORK': 6,
  'LoadBalancing.Mode.UNSPECIFIED_MODE': 0, 'LoadBalancing.Mode.STRICT': 1, 'LoadBalancing.Mode.FAILOVER': 2,
  'LoadBalancing.Mode.PASSTHROUGH': 3,
  'LoadBalancing.HealthPolicy.ONLY_HEALTHY': 0, 'LoadBalancing.HealthPolicy.ALLOW_ALL': 1,
  'WorkloadStatus.HEALTHY': 0, 'WorkloadStatus.UNHEALTHY': 1,
  'WorkloadType.DEPLOYMENT': 0, 'WorkloadType.CRONJOB': 1, 'WorkloadType.POD': 2, 'WorkloadType.JOB': 3,
  'AppProtocol.UNKNOWN': 0, 'AppProtocol.HTTP11': 1, 'AppProtocol.HTTP2': 2, 'AppProtocol.GRPC': 3, 'AppProtocol.TCP': 4,
  'AppProtocol.TLS': 5,
  'TunnelProtocol.NONE': 0, 'TunnelProtocol.HBONE': 1, 'TunnelProtocol.LEGACY_ISTIO_MTLS': 2,
  'ApplicationTunnel.Protocol.NONE': 0, 'ApplicationTunnel.Protocol.PROXY': 1,
};

const UPSTREAM_AUTHORIZATION: Record<string, number> = {
  'Authorization.name': 1, 'Authorization.namespace': 2, 'Authorization.scope': 3, 'Authorization.action': 4,
  'Authorization.rules': 5, 'Authorization.dry_run': 6, 'Authorization.extensions': 7,
  'Rule.clauses': 1,
  'Clause.matches': 2,
  'Match.namespaces': 1, 'Match.not_namespaces': 2, 'Match.service_accounts': 11, 'Match.not_service_accounts': 12,
  'Match.principals': 3, 'Match.not_principals': 4, 'Match.source_ips': 5, 'Match.not_source_ips': 6,
  'Match.destination_ips': 7, 'Match.not_destination_ips': 8, 'Match.destination_ports': 9,
  'Match.not_destination_ports': 10, 'Match.extensions': 13,
  'Address.address': 1, 'Address.length': 2,
  'ServiceAccountMatch.namespace': 1, 'ServiceAccountMatch.serviceAccount': 2,
  'StringMatch.exact': 1, 'StringMatch.prefix': 2, 'StringMatch.suffix': 3, 'StringMatch.presence': 4,
  // enums
  'Scope.GLOBAL': 0, 'Scope.NAMESPACE': 1, 'Scope.WORKLOAD_SELECTOR': 2,
  'Action.ALLOW': 0, 'Action.DENY': 1,
};

const UPSTREAM_CITADEL: Record<string, number> = {
  'IstioCertificateRequest.csr': 1, 'IstioCertificateRequest.validity_duration': 3, 'IstioCertificateRequest.metadata': 4,
  'IstioCertificateResponse.cert_chain': 1,
};

// proto/xds.proto (its Status and Node are compared with google.rpc.Status and envoy.config.core.v3.Node).
const UPSTREAM_XDS: Record<string, number> = {
  'Status.code': 1, 'Status.message': 2, 'Status.details': 3,
  'Node.id': 1, 'Node.cluster': 2, 'Node.metadata': 3, 'Node.build_version': 5,
  'DeltaDiscoveryRequest.node': 1, 'DeltaDiscoveryRequest.type_url': 2, 'DeltaDiscoveryRequest.resource_names_subscribe': 3,
  'DeltaDiscoveryRequest.resource_names_unsubscribe': 4, 'DeltaDiscoveryRequest.initial_resource_versions': 5,
  'DeltaDiscoveryRequest.response_nonce': 6, 'DeltaDiscoveryRequest.error_detail': 7,
  'DeltaDiscoveryResponse.system_version_info': 1, 'DeltaDiscoveryResponse.resources': 2, 'DeltaDiscoveryResponse.type_url': 4,
  'DeltaDiscoveryResponse.removed_resources': 6, 'DeltaDiscoveryResponse.nonce': 5,
  'Resource.CacheControl.do_not_cache': 1, 'Resource.name': 3, 'Resource.aliases': 4, 'Resource.version': 1,
  'Resource.resource': 2, 'Resource.ttl': 6, 'Resource.cache_control': 7,
};

/** `Local.Name.field` → number for every field and enum value a generated file declares. */
function numbersOf(file: DescFile): Map<string, number> {
  const out = new Map<string, number>();
  const local = (typeName: string): string => typeName.slice(file.proto.package.length + 1);
  const addEnum = (e: DescEnum): void => {
    for (const v of e.values) out.set(`${local(e.typeName)}.${v.name}`, v.number);
  };
  const addMessage = (m: DescMessage): void => {
    for (const f of m.fields) out.set(`${local(m.typeName)}.${f.name}`, f.number);
    m.nestedMessages.forEach(addMessage);
    m.nestedEnums.forEach(addEnum);
  };
  file.messages.forEach(addMessage);
  file.enums.forEach(addEnum);
  return out;
}

function expectSubsetOf(file: DescFile, upstream: Record<string, number>): void {
  const ours = numbersOf(file);
  expect(ours.size).toBeGreaterThan(0);
  for (const [key, n] of ours) {
    expect(upstream[key], `${file.name}: ${key} is not in the upstream text`).toBeDefined();
    expect(n, `${file.name}: ${key}`).toBe(upstream[key]);
  }
}

describe('field numbers match istio/ztunnel@62d82653', () => {
  it('workload.proto (istio.workload)', () => {
    expectSubsetOf(file_workload, UPSTREAM_WORKLOAD);
    // Everything Weir converts is declared (a missing one would silently drop data on the wire).
    const ours = numbersOf(file_workload);
    for (const k of Object.keys(UPSTREAM_WORKLOAD).filter((k) => /^(Workload|Service|Port|NetworkAddress|GatewayAddress)\./.test(k))) {
      if (k === 'Service.weighted_waypoints' || k.startsWith('Service.Visibility') || k === 'Service.visibility') continue; // not used by Weir
      expect(ours.has(k), k).toBe(true);
    }
  });

  it('authorization.proto (istio.security): every upstream field declared', () => {
    expectSubsetOf(file_authorization, UPSTREAM_AUTHORIZATION);
    expect([...numbersOf(file_authorization).keys()].sort()).toEqual(Object.keys(UPSTREAM_AUTHORIZATION).sort());
  });

  it('citadel.proto (istio.v1.auth): every upstream field declared', () => {
    expect(Object.fromEntries(numbersOf(file_citadel))).toEqual(UPSTREAM_CITADEL);
  });

  it('Envoy delta discovery subset, google.rpc.Status and Node', () => {
    expectSubsetOf(file_envoy_service_discovery_v3_discovery, UPSTREAM_XDS);
    expectSubsetOf(file_google_rpc_status, UPSTREAM_XDS);
    expectSubsetOf(file_envoy_config_core_v3_base, UPSTREAM_XDS);
    const ours = numbersOf(file_envoy_service_discovery_v3_discovery);
    for (const k of Object.keys(UPSTREAM_XDS).filter((k) => /^(Delta|Resource\.)/.test(k))) expect(ours.has(k), k).toBe(true);
  });
});
