import { describe, expect, it } from 'vitest';
import { parseLocalConfig } from './local-config.js';
import { ZtunnelError } from './errors.js';

const yaml = `
workloads:
- uid: cluster1//v1/Pod/default/a
  name: a
  namespace: default
  serviceAccount: sa-a
  trustDomain: cluster.local
  workloadIps: [10.0.0.1]
  protocol: HBONE
  node: node1
  services:
    "default/svc.default.svc.cluster.local":
      80: 8080
services:
- name: svc
  namespace: default
  hostname: svc.default.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports:
    80: 8080
policies:
- name: deny-b
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - serviceAccounts: [sa-b]
        destinationPorts: [8080]
      - notPrincipals: [{prefix: "cluster.local/"}]
`;

describe('parseLocalConfig', () => {
  it('parses workloads, services and policies with ztunnel field names', () => {
    const c = parseLocalConfig(yaml);
    expect(c.workloads[0]).toMatchObject({ name: 'a', protocol: 'HBONE', workloadIps: ['10.0.0.1'], status: 'Healthy' });
    expect(c.workloads[0]!.services['default/svc.default.svc.cluster.local']).toEqual({ '80': 8080 });
    expect(c.services[0]!.ports).toEqual({ '80': 8080 });
    const clause = c.policies[0]!.rules[0]![0]!;
    expect(clause[0]!.serviceAccounts[0]!.name).toEqual({ kind: 'exact', value: 'sa-b' });
    expect(clause[1]!.notPrincipals[0]).toEqual({ kind: 'prefix', value: 'cluster.local/' });
  });

  it('accepts an empty file', () => {
    expect(parseLocalConfig('')).toEqual({ workloads: [], services: [], policies: [] });
  });

  it('rejects unknown fields naming their path', () => {
    const bad = yaml.replace('serviceAccount: sa-a', 'serviceAcount: sa-a');
    expect(() => parseLocalConfig(bad, 'x.yaml')).toThrow(/x\.yaml: workloads\[0\]\.serviceAcount: .*serviceAcount/);
  });

  it('rejects bad values naming their path and the error code', () => {
    try {
      parseLocalConfig(yaml.replace('[10.0.0.1]', '[10.0.0.300]'));
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ZtunnelError);
      expect((err as ZtunnelError).code).toBe('ERR_ZTUNNEL_LOCAL_CONFIG');
      expect((err as Error).message).toContain('workloads[0].workloadIps[0]: not an IP address');
    }
    expect(() => parseLocalConfig('workloads: [{name: a}]')).toThrow(/workloads\[0\]\.namespace/);
    expect(() => parseLocalConfig('policies: [{name: p, action: Maybe}]')).toThrow(/policies\[0\]\.action/);
    expect(() => parseLocalConfig('a: [')).toThrow(/invalid YAML/);
  });
  it('accepts a hostname-only workload (a DNS ServiceEntry), but not a workload with neither', () => {
    const c = parseLocalConfig('workloads: [{name: github, namespace: ext, hostname: api.github.com}]');
    expect(c.workloads[0]).toMatchObject({ name: 'github', hostname: 'api.github.com', workloadIps: [] });
    expect(() => parseLocalConfig('workloads: [{name: a, namespace: b}]')).toThrow(
      'workloads[0].workloadIps: a workload needs at least one address, or a hostname (a DNS workload)',
    );
    expect(() => parseLocalConfig('workloads: [{name: a, namespace: b, workloadIps: []}]')).toThrow(/workloads\[0\]\.workloadIps: a workload needs/);
  });

  it('canonicalizes addresses (workload IPs, VIPs, CIDRs) as the kernel prints them, refuses zone ids', () => {
    const c = parseLocalConfig(`
workloads:
- {name: a, namespace: b, workloadIps: ["FD00:0:0:0::5", "2001:DB8:0:0:1:0:0:1", 10.0.0.5, "::ffff:a00:6"]}
services:
- {name: s, namespace: b, hostname: s.b, vips: ["net1/FD00:0::10", "0:0:0:0:0:0:0:1", /10.96.0.1]}
policies:
- {name: p, rules: [[[{sourceIps: ["FD00:0::/64", "FD00::1"], notDestinationIps: [10.0.0.0/8]}]]]}
`);
    expect(c.workloads[0]!.workloadIps).toEqual(['fd00::5', '2001:db8::1:0:0:1', '10.0.0.5', '::ffff:10.0.0.6']);
    expect(c.services[0]!.vips).toEqual(['net1/fd00::10', '::1', '/10.96.0.1']);
    const m = c.policies[0]!.rules[0]![0]![0]!;
    expect(m.sourceIps).toEqual(['fd00::/64', 'fd00::1']);
    expect(m.notDestinationIps).toEqual(['10.0.0.0/8']);
    expect(() => parseLocalConfig('workloads: [{name: a, namespace: b, workloadIps: ["fe80::1%eth0"]}]')).toThrow(/workloadIps\[0\]: not an IP address/);
    expect(() => parseLocalConfig('policies: [{name: p, rules: [[[{sourceIps: ["fe80::1%eth0/64"]}]]]}]')).toThrow(/sourceIps\[0\]: not an IP address or CIDR/);
  });
});
