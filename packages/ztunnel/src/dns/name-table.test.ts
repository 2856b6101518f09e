import { describe, expect, it } from 'vitest';
import { parseLocalConfig } from '../local-config.js';
import { WorkloadStore } from '../workload-store.js';
import { DnsNameTable } from './name-table.js';

const yaml = `
workloads:
- {uid: u1, name: r1, namespace: default, workloadIps: [10.0.0.1], services: {"default/headless.default.svc.cluster.local": {80: 80}}}
- {uid: u2, name: r2, namespace: default, workloadIps: [10.0.0.2, "fd00::2"], services: {"default/headless.default.svc.cluster.local": {80: 80}}}
- {uid: u3, name: r3, namespace: default, workloadIps: [10.0.0.3], status: Unhealthy, services: {"default/headless.default.svc.cluster.local": {80: 80}}}
- {uid: u4, name: vm, namespace: other, workloadIps: [10.0.0.4], hostname: vm.example.internal}
services:
- {name: reviews, namespace: default, hostname: reviews.default.svc.cluster.local, vips: ["/10.96.0.10", "net1/fd00:96::10"]}
- {name: ratings, namespace: other, hostname: ratings.other.svc.cluster.local, vips: ["/10.96.0.20"]}
- {name: headless, namespace: default, hostname: headless.default.svc.cluster.local}
- {name: ext, namespace: default, hostname: api.Example.com, vips: ["/240.240.0.1"]}
`;

describe('DnsNameTable', () => {
  const store = new WorkloadStore({ config: parseLocalConfig(yaml) });
  const table = new DnsNameTable(store);

  it('answers service hostnames with their VIPs, split by family, case-insensitively and with a trailing dot', () => {
    expect(table.lookup('reviews.default.svc.cluster.local')).toEqual({ hostname: 'reviews.default.svc.cluster.local', namespace: 'default', v4: ['10.96.0.10'], v6: ['fd00:96::10'] });
    expect(table.lookup('REVIEWS.default.svc.cluster.local.')?.v4).toEqual(['10.96.0.10']);
    expect(table.lookup('api.example.com')?.v4).toEqual(['240.240.0.1']);
  });

  it('answers a service without VIPs with its healthy endpoints, and workload hostnames with workload IPs', () => {
    expect(table.lookup('headless.default.svc.cluster.local')).toEqual({
      hostname: 'headless.default.svc.cluster.local',
      namespace: 'default',
      v4: ['10.0.0.1', '10.0.0.2'],
      v6: ['fd00::2'],
    });
    expect(table.lookup('vm.example.internal')?.v4).toEqual(['10.0.0.4']);
  });

  it("expands short names with the client pod's search path", () => {
    expect(table.lookup('reviews', 'default')?.hostname).toBe('reviews.default.svc.cluster.local');
    expect(table.lookup('reviews.default', 'other')?.hostname).toBe('reviews.default.svc.cluster.local');
    expect(table.lookup('ratings.other.svc', 'default')?.hostname).toBe('ratings.other.svc.cluster.local');
    // Without a namespace there is no search path.
    expect(table.lookup('reviews')).toBeUndefined();
    // A short name of another namespace does not resolve bare.
    expect(table.lookup('ratings', 'default')).toBeUndefined();
  });

  it('strips a search domain the resolver appended and expands the rest again', () => {
    // glibc walking `reviews.default` in namespace `other` asks this first:
    expect(table.lookup('reviews.default.other.svc.cluster.local', 'other')?.hostname).toBe('reviews.default.svc.cluster.local');
    expect(table.lookup('api.example.com.default.svc.cluster.local', 'default')?.hostname).toBe('api.example.com');
    expect(table.lookup('nothing.default.svc.cluster.local', 'default')).toBeUndefined();
  });

  it('follows store changes', () => {
    const s = new WorkloadStore({ config: parseLocalConfig(yaml) });
    const t = new DnsNameTable(s, { clusterDomain: 'cluster.local' });
    expect(t.lookup('new.default.svc.cluster.local')).toBeUndefined();
    s.replace(parseLocalConfig(`services:\n- {name: new, namespace: default, hostname: new.default.svc.cluster.local, vips: ["/10.96.0.99"]}\n`));
    expect(t.lookup('new', 'default')?.v4).toEqual(['10.96.0.99']);
    expect(t.lookup('reviews', 'default')).toBeUndefined();
  });

  it('honours another cluster domain', () => {
    const s = new WorkloadStore({
      config: parseLocalConfig(`services:\n- {name: a, namespace: n, hostname: a.n.svc.corp.example, vips: ["/10.96.1.1"]}\n`),
    });
    expect(new DnsNameTable(s, { clusterDomain: 'corp.example.' }).lookup('a', 'n')?.v4).toEqual(['10.96.1.1']);
  });

  describe('a name claimed in several namespaces (review 6 #4: a ServiceEntry in one namespace must not join another\'s name)', () => {
    const claimed = `
services:
- {name: grab, namespace: evil, hostname: reviews.default.svc.cluster.local, vips: ["/10.96.6.66"]}
- {name: reviews, namespace: default, hostname: reviews.default.svc.cluster.local, vips: ["/10.96.0.10"]}
- {name: bank, namespace: a, hostname: api.bank.example, vips: ["/240.0.0.1"]}
- {name: bank, namespace: b, hostname: api.bank.example, vips: ["/240.0.0.2"]}
- {name: empty, namespace: c, hostname: api.bank.example}
workloads:
- {uid: w1, name: vm, namespace: b, workloadIps: [10.0.9.9], hostname: api.bank.example}
`;
    const t = new DnsNameTable(new WorkloadStore({ config: parseLocalConfig(claimed) }));

    it("answers the Kubernetes service's own namespace, never the union", () => {
      expect(t.lookup('reviews', 'default')).toEqual({ hostname: 'reviews.default.svc.cluster.local', namespace: 'default', v4: ['10.96.0.10'], v6: [] });
      // A third namespace: the namespace the name says owns it, though evil's entry comes first.
      expect(t.lookup('reviews.default', 'other')?.v4).toEqual(['10.96.0.10']);
      expect(t.lookup('reviews.default.svc.cluster.local')?.v4).toEqual(['10.96.0.10']);
    });

    it("prefers the client's own namespace (as ztunnel does), which only affects that namespace's pods", () => {
      expect(t.lookup('reviews.default.svc.cluster.local', 'evil')).toMatchObject({ namespace: 'evil', v4: ['10.96.6.66'] });
    });

    it('answers other names from one namespace: the client\'s, else the first listed with addresses', () => {
      // b's service and workload hostnames are one tenant's: together; a's never.
      expect(t.lookup('api.bank.example', 'b')).toEqual({ hostname: 'api.bank.example', namespace: 'b', v4: ['240.0.0.2', '10.0.9.9'], v6: [] });
      expect(t.lookup('api.bank.example', 'a')?.v4).toEqual(['240.0.0.1']);
      expect(t.lookup('api.bank.example', 'z')?.v4).toEqual(['240.0.0.1']);
      // c's entry has no address: its clients get the fallback, not an empty answer.
      expect(t.lookup('api.bank.example', 'c')?.v4).toEqual(['240.0.0.1']);
    });
  });
});
