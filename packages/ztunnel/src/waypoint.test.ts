import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { parseLocalConfig } from './local-config.js';
import { waypointFor } from './waypoint.js';
import { WorkloadStore } from './workload-store.js';
import { serviceFromXds, workloadFromXds } from './xds/convert.js';
import { ServiceSchema, WorkloadSchema } from './xds/gen/workload_pb.js';
import { ipBytes } from './xds/test-control-plane.js';

// The shapes convert.ts writes from xDS GatewayAddress: {address: "<network>/<ip>"} or {hostname: {namespace, hostname}}.
const yaml = `
workloads:
- {uid: src, name: client, namespace: a, serviceAccount: client, trustDomain: cluster.local, workloadIps: [10.0.0.1], protocol: HBONE}
- {uid: wp, name: waypoint-0, namespace: b, serviceAccount: waypoint, trustDomain: cluster.local, workloadIps: [10.0.0.9], protocol: HBONE,
   services: {"b/waypoint.b.svc.cluster.local": {15008: 15008}}}
- {uid: r1, name: reviews-0, namespace: b, serviceAccount: reviews, trustDomain: cluster.local, workloadIps: [10.0.0.2], protocol: HBONE,
   services: {"b/reviews.b.svc.cluster.local": {80: 8080}}}
- {uid: p1, name: pod-wp, namespace: b, trustDomain: cluster.local, workloadIps: [10.0.0.3], protocol: TCP,
   waypoint: {destination: {address: "/10.96.0.9"}, hboneMtlsPort: 15008}}
- {uid: p2, name: pod-host-wp, namespace: b, trustDomain: cluster.local, workloadIps: [10.0.0.4], protocol: HBONE,
   waypoint: {destination: {hostname: {namespace: b, hostname: waypoint.b.svc.cluster.local}}}}
- {uid: p3, name: pod-lost-wp, namespace: b, trustDomain: cluster.local, workloadIps: [10.0.0.5], protocol: HBONE,
   waypoint: {destination: {address: "/10.99.99.99"}, hboneMtlsPort: 15008}}
- {uid: p4, name: plain, namespace: b, trustDomain: cluster.local, workloadIps: [10.0.0.6], protocol: HBONE}
services:
- {name: waypoint, namespace: b, hostname: waypoint.b.svc.cluster.local, vips: ["/10.96.0.9"], ports: {15008: 15008}}
- {name: reviews, namespace: b, hostname: reviews.b.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080},
   waypoint: {destination: {address: "/10.0.0.9"}, hboneMtlsPort: 15008}}
- {name: empty, namespace: b, hostname: empty.b.svc.cluster.local, vips: ["/10.96.0.3"], ports: {80: 80},
   waypoint: {destination: {address: "/10.96.0.9"}}}
`;

describe('waypointFor', () => {
  const store = new WorkloadStore({ config: parseLocalConfig(yaml) });
  const client = store.workloadByUid('src');
  const decide = (ip: string, port: number, source = client) => waypointFor(store, { address: ip, port }, store.resolve(ip, port), () => source);

  it("routes a service VIP through the service's waypoint, CONNECT to the VIP, expecting the waypoint's identity", () => {
    expect(decide('10.96.0.2', 80)).toMatchObject({
      kind: 'route',
      waypoint: '10.0.0.9',
      peer: { host: '10.0.0.9', port: 15008 },
      target: { host: '10.96.0.2', port: 80 },
      identity: 'spiffe://cluster.local/ns/b/sa/waypoint',
      service: { name: 'reviews' },
    });
  });

  it("routes a workload addressed directly through its waypoint, given as a waypoint service's VIP or hostname", () => {
    expect(decide('10.0.0.3', 8080)).toMatchObject({ kind: 'route', waypoint: '10.96.0.9', peer: { host: '10.0.0.9', port: 15008 }, target: { host: '10.0.0.3', port: 8080 } });
    expect(decide('10.0.0.4', 8080)).toMatchObject({
      kind: 'route',
      waypoint: 'b/waypoint.b.svc.cluster.local',
      peer: { host: '10.0.0.9', port: 15008 },
      identity: 'spiffe://cluster.local/ns/b/sa/waypoint',
    });
  });

  it('still applies to a VIP whose service has no endpoint (resolve() knows nothing, the waypoint routes)', () => {
    expect(store.resolve('10.96.0.3', 80)).toBeUndefined();
    expect(decide('10.96.0.3', 80)).toMatchObject({ kind: 'route', target: { host: '10.96.0.3', port: 80 }, service: { name: 'empty' } });
  });

  it('refuses, naming the waypoint, when the waypoint is not in the state (never direct)', () => {
    expect(decide('10.0.0.5', 8080)).toMatchObject({
      kind: 'refuse',
      waypoint: '10.99.99.99',
      reason: '10.99.99.99 is neither a workload nor a service with a healthy endpoint in the workload state',
    });
  });

  it("lets the waypoint's own traffic and destinations without a waypoint go direct", () => {
    expect(decide('10.96.0.2', 80, store.workloadByUid('wp'))).toBeUndefined();
    expect(decide('10.0.0.6', 8080)).toBeUndefined();
    expect(decide('192.0.2.1', 443)).toBeUndefined();
  });

  it('reads waypoints as istiod sends them (xDS GatewayAddress, address or hostname form, through convert.ts)', () => {
    const base = parseLocalConfig(yaml);
    const svc = serviceFromXds(
      'b/ratings.b.svc.cluster.local',
      create(ServiceSchema, {
        name: 'ratings',
        namespace: 'b',
        hostname: 'ratings.b.svc.cluster.local',
        addresses: [{ network: '', address: ipBytes('10.96.0.7') }],
        ports: [{ servicePort: 9080, targetPort: 9080 }],
        waypoint: { destination: { case: 'address', value: { network: '', address: ipBytes('10.96.0.9') } }, hboneMtlsPort: 15008 },
      }),
    );
    const pod = workloadFromXds(
      'Kubernetes//Pod/b/details-0',
      create(WorkloadSchema, {
        uid: 'Kubernetes//Pod/b/details-0',
        name: 'details-0',
        namespace: 'b',
        addresses: [ipBytes('10.0.0.7')],
        waypoint: { destination: { case: 'hostname', value: { namespace: 'b', hostname: 'waypoint.b.svc.cluster.local' } }, hboneMtlsPort: 15008 },
      }),
    );
    const s = new WorkloadStore({ config: { ...base, services: [...base.services, svc], workloads: [...base.workloads, pod] } });
    const at = (ip: string, port: number) => waypointFor(s, { address: ip, port }, s.resolve(ip, port), () => undefined);
    expect(at('10.96.0.7', 9080)).toMatchObject({ kind: 'route', waypoint: '10.96.0.9', peer: { host: '10.0.0.9', port: 15008 } });
    expect(at('10.0.0.7', 9080)).toMatchObject({ kind: 'route', waypoint: 'b/waypoint.b.svc.cluster.local', peer: { host: '10.0.0.9', port: 15008 } });
  });
});
