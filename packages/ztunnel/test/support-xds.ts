// One workload written both ways: as the xDS Workload istiod pushes and as an entry of ztunnel's
// local YAML. Every field is set, so a converter that drops or renames one shows up in a test that
// compares the two (src/xds/convert.test.ts, test/xds-client.test.ts).
import type { MessageInitShape } from '@bufbuild/protobuf';
import { TunnelProtocol, WorkloadStatus, WorkloadType, type WorkloadSchema } from '../src/xds/gen/workload_pb.js';
import { ipBytes } from '../src/xds/test-control-plane.js';

export const WEB_0_UID = 'Kubernetes//Pod/default/web-0';

// Port 81 with target 0 ("the service's own target port") has no YAML form: conversion drops it.
export const WEB_0_XDS: MessageInitShape<typeof WorkloadSchema> = {
  uid: WEB_0_UID,
  name: 'web-0',
  namespace: 'default',
  serviceAccount: 'web',
  trustDomain: 'cluster.local',
  addresses: [ipBytes('10.0.0.5'), ipBytes('fd00::5')],
  tunnelProtocol: TunnelProtocol.HBONE,
  node: 'node-a',
  network: 'net1',
  clusterId: 'Kubernetes',
  services: {
    'default/web.default.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080 }, { servicePort: 81, targetPort: 0 }] },
  },
  authorizationPolicies: ['default/only-frontend'],
  status: WorkloadStatus.UNHEALTHY,
  locality: { region: 'r1', zone: 'z1' },
  canonicalName: 'web',
  canonicalRevision: 'v1',
  workloadName: 'web',
  workloadType: WorkloadType.DEPLOYMENT,
  waypoint: { destination: { case: 'hostname', value: { namespace: 'default', hostname: 'wp.default.svc.cluster.local' } }, hboneMtlsPort: 15008 },
};

/** WEB_0_XDS as a list item under `workloads:` (two-space indent). */
export const WEB_0_YAML = `\
  - uid: ${WEB_0_UID}
    name: web-0
    namespace: default
    serviceAccount: web
    trustDomain: cluster.local
    workloadIps: [10.0.0.5, "fd00::5"]
    protocol: HBONE
    node: node-a
    network: net1
    clusterId: Kubernetes
    services: {"default/web.default.svc.cluster.local": {80: 8080}}
    authorizationPolicies: [default/only-frontend]
    status: Unhealthy
    locality: {region: r1, zone: z1}
    canonicalName: web
    canonicalRevision: v1
    workloadName: web
    workloadType: deployment
    waypoint: {destination: {hostname: {namespace: default, hostname: wp.default.svc.cluster.local}}, hboneMtlsPort: 15008}
`;
