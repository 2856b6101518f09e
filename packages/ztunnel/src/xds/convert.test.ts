import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { parseLocalConfig } from '../local-config.js';
import { ipFromBytes, policyFromXds, serviceFromXds, workloadFromXds } from './convert.js';
import { Action, AuthorizationSchema, Scope } from './gen/authorization_pb.js';
import { IPFamilies, ServiceSchema, WorkloadSchema, WorkloadType } from './gen/workload_pb.js';
import { ipBytes } from './test-control-plane.js';
import { WEB_0_UID, WEB_0_XDS, WEB_0_YAML } from '../../test/support-xds.js';

describe('ipFromBytes', () => {
  it('formats IPv4 and RFC 5952 IPv6, rejects other lengths', () => {
    expect(ipFromBytes(ipBytes('10.1.2.3'), 'x')).toBe('10.1.2.3');
    expect(ipFromBytes(ipBytes('fd00::5'), 'x')).toBe('fd00::5');
    expect(ipFromBytes(ipBytes('::'), 'x')).toBe('::');
    expect(ipFromBytes(ipBytes('2001:db8:0:1:0:0:0:1'), 'x')).toBe('2001:db8:0:1::1');
    expect(ipFromBytes(ipBytes('2001:db8:1:2:3:4:5:6'), 'x')).toBe('2001:db8:1:2:3:4:5:6');
    expect(() => ipFromBytes(new Uint8Array(5), 'workload w.addresses[0]')).toThrow(
      'workload w.addresses[0]: 5 bytes is not an IPv4 (4) or IPv6 (16) address',
    );
  });
});

// One model, two sources: the same workload written as ztunnel's local YAML and pushed over xDS
// must come out as equal objects.
describe('xDS resources become the local-config model', () => {
  it('a workload equals its YAML twin', () => {
    expect(workloadFromXds(WEB_0_UID, create(WorkloadSchema, WEB_0_XDS))).toEqual(parseLocalConfig(`workloads:\n${WEB_0_YAML}`).workloads[0]);
  });

  it('fills the same defaults as YAML for a sparse workload; uid falls back to the resource name', () => {
    const w = workloadFromXds('res-1', create(WorkloadSchema, { name: 'a', namespace: 'b', addresses: [ipBytes('10.0.0.1')] }));
    // On the wire an unset workload_type is DEPLOYMENT (enum value 0), where the YAML default is pod.
    expect(w).toEqual(parseLocalConfig('workloads: [{uid: res-1, name: a, namespace: b, workloadIps: [10.0.0.1], workloadType: deployment}]').workloads[0]);
    expect(w.serviceAccount).toBe('default');
    expect(w.protocol).toBe('TCP');
  });

  it('a service equals its YAML twin (target port 0 → the service port)', () => {
    const s = serviceFromXds(
      'default/web.default.svc.cluster.local',
      create(ServiceSchema, {
        name: 'web',
        namespace: 'default',
        hostname: 'web.default.svc.cluster.local',
        addresses: [{ network: '', address: ipBytes('10.96.0.1') }, { network: 'n2', address: ipBytes('fd00::1') }],
        ports: [{ servicePort: 80, targetPort: 8080 }, { servicePort: 9090 }],
        subjectAltNames: ['spiffe://cluster.local/ns/default/sa/web'],
        canonical: true,
        ipFamilies: IPFamilies.DUAL,
      }),
    );
    const yaml = `
services:
  - name: web
    namespace: default
    hostname: web.default.svc.cluster.local
    vips: [/10.96.0.1, "n2/fd00::1"]
    ports: {80: 8080, 9090: 9090}
    subjectAltNames: [spiffe://cluster.local/ns/default/sa/web]
    canonical: true
    ipFamilies: Dual
`;
    expect(s).toEqual(parseLocalConfig(yaml).services[0]);
  });

  it('a policy equals its YAML twin', () => {
    const p = policyFromXds(
      'default/deny',
      create(AuthorizationSchema, {
        name: 'deny',
        namespace: 'default',
        scope: Scope.WORKLOAD_SELECTOR,
        action: Action.DENY,
        dryRun: true,
        rules: [
          {
            clauses: [
              {
                matches: [
                  {
                    namespaces: [{ matchType: { case: 'prefix', value: 'kube-' } }, { matchType: { case: 'presence', value: {} } }],
                    notPrincipals: [{ matchType: { case: 'exact', value: 'cluster.local/ns/a/sa/b' } }],
                    serviceAccounts: [{ namespace: 'ns', serviceAccount: 'sa' }],
                    sourceIps: [{ address: ipBytes('10.0.0.0'), length: 8 }],
                    notDestinationIps: [{ address: ipBytes('fd00::'), length: 64 }],
                    destinationPorts: [8080],
                  },
                ],
              },
            ],
          },
        ],
      }),
    );
    const yaml = `
policies:
  - name: deny
    namespace: default
    scope: WorkloadSelector
    action: Deny
    dryRun: true
    rules:
      - - - namespaces: [{prefix: kube-}, {presence: {}}]
            notPrincipals: [{exact: cluster.local/ns/a/sa/b}]
            serviceAccounts: [{namespace: ns, serviceAccount: sa}]
            sourceIps: [10.0.0.0/8]
            notDestinationIps: ["fd00::/64"]
            destinationPorts: [8080]
`;
    expect(p).toEqual(parseLocalConfig(yaml).policies[0]);
  });

  it('a hostname-only workload (istiod\'s for a ServiceEntry with resolution DNS) converts, with no address', () => {
    const w = workloadFromXds(
      'Kubernetes/networking.istio.io/ServiceEntry/ext/github/api.github.com',
      create(WorkloadSchema, {
        uid: 'Kubernetes/networking.istio.io/ServiceEntry/ext/github/api.github.com',
        name: 'github',
        namespace: 'ext',
        hostname: 'api.github.com',
        services: { 'ext/api.github.com': { ports: [{ servicePort: 443, targetPort: 443 }] } },
      }),
    );
    expect(w).toMatchObject({ name: 'github', namespace: 'ext', hostname: 'api.github.com', workloadIps: [], services: { 'ext/api.github.com': { '443': 443 } } });
  });

  it('reads enum values newer than this build as the default instead of refusing the resource', () => {
    const w = workloadFromXds('w3', create(WorkloadSchema, { name: 'a', namespace: 'b', addresses: [ipBytes('10.0.0.1')], workloadType: 9 as WorkloadType }));
    expect(w.workloadType).toBe('deployment');
    const s = serviceFromXds('s', create(ServiceSchema, { name: 's', namespace: 'n', hostname: 'h', ipFamilies: 9 as IPFamilies }));
    expect(s.ipFamilies).toBe('Automatic');
  });

  it('names the resource and the field when a resource is bad', () => {
    expect(() => workloadFromXds('w1', create(WorkloadSchema, { name: 'a', namespace: 'b' }))).toThrow(/workload w1: workloadIps: a workload needs at least one address, or a hostname/);
    expect(() => workloadFromXds('w2', create(WorkloadSchema, { name: '', namespace: 'b', addresses: [ipBytes('10.0.0.1')] }))).toThrow(/workload w2: name/);
    expect(() =>
      policyFromXds('p/x', create(AuthorizationSchema, { name: 'x', rules: [{ clauses: [{ matches: [{ destinationPorts: [0] }] }] }] })),
    ).toThrow(/authorization p\/x: rules\[0\]\[0\]\[0\]\.destinationPorts\[0\]/);
    expect(() => policyFromXds('p/y', create(AuthorizationSchema, { name: 'y', action: 7 as Action }))).toThrow('authorization p/y: unknown action 7');
    expect(() => serviceFromXds('s', create(ServiceSchema, { name: 's', namespace: 'n', hostname: 'h', addresses: [{ address: new Uint8Array(3) }] }))).toThrow(
      /service s\.addresses\[0\]: 3 bytes/,
    );
  });
});
