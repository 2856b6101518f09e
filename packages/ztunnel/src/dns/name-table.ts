import { isIPv6 } from 'node:net';
import type { LocalConfig } from '../local-config.js';
import type { WorkloadStore } from '../workload-store.js';

/** The addresses a name resolves to in the mesh state. */
export interface MeshAddresses {
  /** The name in the state that matched (a service or workload hostname, lower case). */
  hostname: string;
  v4: string[];
  v6: string[];
}

export interface DnsNameTableOptions {
  /** The cluster's DNS domain (`<svc>.<ns>.svc.<domain>`). Default `cluster.local`. */
  clusterDomain?: string;
}

const vipAddress = (vip: string): string => {
  const slash = vip.indexOf('/');
  return slash < 0 ? vip : vip.slice(slash + 1);
};
const normalizeIp = (ip: string): string => (ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip);
const canonicalName = (name: string): string => name.toLowerCase().replace(/\.$/, '');

function add(index: Map<string, { v4: Set<string>; v6: Set<string> }>, name: string, ips: Iterable<string>): void {
  const key = canonicalName(name);
  if (key === '') return;
  const entry = index.get(key) ?? { v4: new Set<string>(), v6: new Set<string>() };
  for (const raw of ips) {
    const ip = normalizeIp(raw);
    (isIPv6(ip) ? entry.v6 : entry.v4).add(ip);
  }
  index.set(key, entry);
}

/**
 * Names the mesh state knows: service hostnames → their VIPs (or the IPs of their healthy endpoints
 * when the service has no VIP, as for headless services), and workload hostnames → workload IPs.
 * Rebuilt lazily whenever the store's config object changes, so it never serves stale state and
 * needs no listener on the store.
 */
export class DnsNameTable {
  readonly clusterDomain: string;
  readonly #store: WorkloadStore;
  #config: LocalConfig | undefined;
  #index = new Map<string, { v4: Set<string>; v6: Set<string> }>();

  constructor(store: WorkloadStore, options: DnsNameTableOptions = {}) {
    this.#store = store;
    this.clusterDomain = canonicalName(options.clusterDomain ?? 'cluster.local');
  }

  #current(): Map<string, { v4: Set<string>; v6: Set<string> }> {
    const config = this.#store.config;
    if (config === this.#config) return this.#index;
    const index = new Map<string, { v4: Set<string>; v6: Set<string> }>();
    for (const s of config.services) {
      if (s.vips.length > 0) {
        add(index, s.hostname, s.vips.map(vipAddress));
        continue;
      }
      const key = `${s.namespace}/${s.hostname}`;
      const endpoints = config.workloads.filter((w) => w.status === 'Healthy' && w.services[key] !== undefined);
      add(index, s.hostname, endpoints.flatMap((w) => w.workloadIps));
    }
    for (const w of config.workloads) if (w.hostname !== '') add(index, w.hostname, w.workloadIps);
    this.#config = config;
    this.#index = index;
    return index;
  }

  /** The search path of a pod in `namespace` (what kubelet writes into its resolv.conf). */
  searchDomains(namespace: string): string[] {
    const d = this.clusterDomain;
    return [`${namespace}.svc.${d}`, `svc.${d}`, d];
  }

  /**
   * Looks a queried name up: exactly; then, for a client in `namespace`, with one of its search
   * domains stripped (a resolver walking `reviews.default` through the search path asks
   * `reviews.default.default.svc.cluster.local` first) and the remainder expanded again; then the
   * name itself expanded with the search domains (`reviews` → `reviews.<ns>.svc.<domain>`).
   */
  lookup(name: string, namespace?: string): MeshAddresses | undefined {
    const index = this.#current();
    const q = canonicalName(name);
    if (q === '') return undefined;
    const candidates = [q];
    if (namespace !== undefined && namespace !== '') {
      const search = this.searchDomains(namespace.toLowerCase());
      for (const s of search) {
        if (!q.endsWith(`.${s}`)) continue;
        const base = q.slice(0, -(s.length + 1));
        candidates.push(base, ...search.map((x) => `${base}.${x}`));
      }
      candidates.push(...search.map((x) => `${q}.${x}`));
    }
    for (const c of candidates) {
      const e = index.get(c);
      if (e && (e.v4.size > 0 || e.v6.size > 0)) return { hostname: c, v4: [...e.v4], v6: [...e.v6] };
    }
    return undefined;
  }
}
