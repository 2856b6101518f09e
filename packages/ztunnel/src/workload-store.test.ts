import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DnsNameTable } from './dns/name-table.js';
import { parseLocalConfig } from './local-config.js';
import { LocalConfigWatcher, WorkloadStore } from './workload-store.js';

const config = (extra = '') => `
workloads:
- {uid: ua, name: a, namespace: ns1, serviceAccount: sa-a, workloadIps: [10.0.0.1], protocol: HBONE,
   services: {"ns1/svc.ns1.svc.cluster.local": {80: 8080}}}
- {uid: ub, name: b, namespace: ns1, workloadIps: [10.0.0.2, "fd00::2"], protocol: HBONE, trustDomain: td.example,
   services: {"ns1/svc.ns1.svc.cluster.local": {80: 9090}}}
- {uid: uc, name: c, namespace: ns1, workloadIps: [10.0.0.3], status: Unhealthy,
   services: {"ns1/svc.ns1.svc.cluster.local": {80: 8080}}}
services:
- {name: svc, namespace: ns1, hostname: svc.ns1.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 7070, 81: 81}}
policies:
- {name: g, scope: Global, action: Deny, rules: []}
- {name: n, namespace: ns1, scope: Namespace}
- {name: other, namespace: ns2, scope: Namespace}
- {name: sel, namespace: ns1, scope: WorkloadSelector}
${extra}`;

describe('WorkloadStore', () => {
  const store = new WorkloadStore({ config: parseLocalConfig(config()) });

  it('looks workloads up by IP (v4, v6, v4-mapped) and uid', () => {
    expect(store.workloadByIp('10.0.0.1')?.name).toBe('a');
    expect(store.workloadByIp('::ffff:10.0.0.2')?.name).toBe('b');
    expect(store.workloadByIp('fd00::2')?.name).toBe('b');
    expect(store.workloadByIp('10.9.9.9')).toBeUndefined();
    expect(store.workloadByUid('ub')?.name).toBe('b');
    expect(store.workloadByName('ns1', 'c')?.uid).toBe('uc');
  });

  it('formats identities with the workload or default trust domain', () => {
    expect(store.identityOf(store.workloadByUid('ua')!)).toBe('spiffe://cluster.local/ns/ns1/sa/sa-a');
    expect(store.identityOf(store.workloadByUid('ub')!)).toBe('spiffe://td.example/ns/ns1/sa/default');
  });

  it('resolves a VIP:port to healthy endpoints round robin with their target ports', () => {
    const seen = new Map<string, number>();
    for (let i = 0; i < 4; i++) {
      const r = store.resolve('10.96.0.1', 80)!;
      expect(r.service?.name).toBe('svc');
      seen.set(r.workload.name, r.port);
    }
    expect(Object.fromEntries(seen)).toEqual({ a: 8080, b: 9090 });
    expect(store.resolve('10.96.0.1', 81)?.port).toBe(81);
    expect(store.resolve('10.96.0.1', 82)).toBeUndefined();
    expect(store.resolve('10.0.0.3', 5000)).toMatchObject({ address: '10.0.0.3', port: 5000 });
  });

  it('selects global, namespace and named policies for a workload', () => {
    const w = { ...store.workloadByUid('ua')!, authorizationPolicies: ['ns1/sel'] };
    expect(store.policiesFor(w).map((p) => p.name).sort()).toEqual(['g', 'n', 'sel']);
    expect(store.policiesFor(store.workloadByUid('ub')!).map((p) => p.name).sort()).toEqual(['g', 'n']);
  });
});

describe('WorkloadStore with workloads the YAML writes differently', () => {
  it('finds a pod whose IPv6 address the file writes non-canonically by the address the kernel reports', () => {
    // A socket's remoteAddress / SO_ORIGINAL_DST is always canonical: `fd00::5`.
    const s = new WorkloadStore({ config: parseLocalConfig('workloads: [{uid: u6, name: v6, namespace: ns1, protocol: HBONE, workloadIps: ["FD00:0:0:0::5"]}]') });
    expect(s.workloadByIp('fd00::5')?.name).toBe('v6');
    expect(s.resolve('fd00::5', 8080)).toMatchObject({ workload: { name: 'v6' }, address: 'fd00::5', port: 8080 });
  });

  it('keeps a hostname-only (DNS) workload out of every address path: IP lookup, VIP endpoints, pod-by-name', () => {
    const s = new WorkloadStore({
      config: parseLocalConfig(`
workloads:
- {uid: pod-web, name: web, namespace: ns1, workloadIps: [10.0.0.7], protocol: HBONE}
# A ServiceEntry named like the pod, resolution DNS: istiod sends its hostname, no address.
- {uid: se-web, name: web, namespace: ns1, hostname: api.example.com, protocol: HBONE,
   services: {"ns1/api.example.com": {443: 443}}}
- {uid: se-only, name: ext, namespace: ns1, hostname: ext.example.com, services: {"ns1/ext.example.com": {443: 443}}}
services:
- {name: api, namespace: ns1, hostname: api.example.com, vips: [/240.240.0.1], ports: {443: 443}}
- {name: ext, namespace: ns1, hostname: ext.example.com, vips: [/240.240.0.2], ports: {443: 443}}
`),
    });
    expect(s.config.workloads).toHaveLength(3);
    expect(s.workloadByUid('se-web')?.hostname).toBe('api.example.com');
    // The pod stays the pod for ZDS's name lookup, whatever order the state lists them in.
    expect(s.workloadByName('ns1', 'web')?.uid).toBe('pod-web');
    // A VIP whose only endpoints have no address is not a mesh destination: no endpoint, no HBONE target.
    expect(s.resolve('240.240.0.1', 443)).toBeUndefined();
    expect(s.resolve('240.240.0.2', 443)).toBeUndefined();
    // They are handed out by name instead, to be resolved when a connection comes.
    expect(s.dnsEndpoint('240.240.0.2', 443)).toMatchObject({ hostname: 'ext.example.com', port: 443, workload: { uid: 'se-only' }, service: { name: 'ext' } });
    expect(s.dnsEndpoint('240.240.0.2', 80)).toBeUndefined();
    expect(s.dnsEndpoint('10.0.0.7', 443)).toBeUndefined();
    // No address can ever match them.
    for (const ip of ['0.0.0.0', '::', '240.240.0.1', '']) expect(s.workloadByIp(ip)).toBeUndefined();
    // The DNS proxy answers the service's VIP; the workload's own name has no address, so it is left
    // to the upstream resolver rather than answered empty.
    const names = new DnsNameTable(s);
    expect(names.lookup('api.example.com')).toMatchObject({ v4: ['240.240.0.1'], v6: [] });
    s.replace({ ...s.config, services: [] });
    expect(names.lookup('api.example.com')).toBeUndefined();
  });

  it('hands out hostname endpoints only when the VIP has no healthy endpoint with an address', () => {
    const s = new WorkloadStore({
      config: parseLocalConfig(`
workloads:
- {name: a, namespace: ns1, hostname: a.example.com, services: {"ns1/x.example.com": {443: 8443}}}
- {name: b, namespace: ns1, hostname: b.example.com, services: {"ns1/x.example.com": {443: 8443}}}
- {name: c, namespace: ns1, hostname: c.example.com, status: Unhealthy, services: {"ns1/x.example.com": {443: 8443}}}
- {name: ip, namespace: ns1, workloadIps: [10.0.0.9], status: Unhealthy, services: {"ns1/x.example.com": {443: 8443}}}
services:
- {name: x, namespace: ns1, hostname: x.example.com, vips: [/240.240.0.3], ports: {443: 443}}
`),
    });
    // Round robin over the healthy ones, with the endpoint's target port; the unhealthy ones never.
    const picked = [0, 1, 2, 3].map(() => s.dnsEndpoint('240.240.0.3', 443));
    expect(picked.map((e) => e?.hostname)).toEqual(['a.example.com', 'b.example.com', 'a.example.com', 'b.example.com']);
    expect(picked.every((e) => e?.port === 8443)).toBe(true);
    // Once an endpoint with an address is healthy, the VIP resolves to it, and not by name.
    s.replace({ ...s.config, workloads: s.config.workloads.map((w) => (w.name === 'ip' ? { ...w, status: 'Healthy' as const } : w)) });
    expect(s.dnsEndpoint('240.240.0.3', 443)).toBeUndefined();
    expect(s.resolve('240.240.0.3', 443)).toMatchObject({ address: '10.0.0.9', port: 8443 });
  });
});

describe('LocalConfigWatcher', () => {
  it('reloads on replacement, keeps the previous state on a bad file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wzt-'));
    try {
      const path = join(dir, 'config.yaml');
      await writeFile(path, config());
      const store = new WorkloadStore();
      const watcher = new LocalConfigWatcher(path, store);
      await watcher.start();
      expect(store.config.workloads).toHaveLength(3);
      const changed = new Promise<void>((r) => store.once('change', () => r()));
      await writeFile(join(dir, 'tmp'), config('- {name: extra, namespace: ns1}'));
      await rename(join(dir, 'tmp'), path);
      await changed;
      expect(store.config.policies.map((p) => p.name)).toContain('extra');
      await writeFile(path, 'workloads: [{bogus: 1}]');
      await watcher.reload();
      expect(store.config.policies.map((p) => p.name)).toContain('extra');
      watcher.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
