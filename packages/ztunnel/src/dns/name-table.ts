import { isIPv6 } from 'node:net';
import type { LocalConfig } from '../local-config.js';
import type { WorkloadStore } from '../workload-store.js';

/** The addresses a name resolves to in the mesh state. */
export interface MeshAddresses {
  /** The name in the state that matched (a service or workload hostname, lower case). */
  hostname: string;
  /** The namespace whose service (or workload) answered: one namespace per answer, never a union. */
  namespace: string;
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

/** One namespace's claim on a name: only one namespace's addresses are ever answered for a name. */
interface NameEntry {
  namespace: string;
  v4: Set<string>;
  v6: Set<string>;
}

/** Per name, each namespace's entry in the order the state lists them (the first is the fallback). */
type NameIndex = Map<string, NameEntry[]>;

function add(index: NameIndex, name: string, namespace: string, ips: Iterable<string>): void {
  const key = canonicalName(name);
  if (key === '') return;
  const entries = index.get(key) ?? [];
  let entry = entries.find((e) => e.namespace === namespace);
  if (entry === undefined) {
    entry = { namespace, v4: new Set<string>(), v6: new Set<string>() };
    entries.push(entry);
  }
  for (const raw of ips) {
    const ip = normalizeIp(raw);
    (isIPv6(ip) ? entry.v6 : entry.v4).add(ip);
  }
  index.set(key, entries);
}

const hasAddresses = (e: NameEntry): boolean => e.v4.size > 0 || e.v6.size > 0;

/**
 * Names the mesh state knows: service hostnames → their VIPs (or the IPs of their healthy endpoints
 * when the service has no VIP, as for headless services), and workload hostnames → workload IPs.
 * Entries are kept per (namespace, name) and a name is answered from one namespace only (as
 * ztunnel's DNS picks one service): the client's own, else the namespace a Kubernetes service name
 * (`<svc>.<ns>.svc.<domain>`) names, else the first in the state. A ServiceEntry in another
 * namespace claiming `reviews.default.svc.<domain>` therefore never adds its VIP to that name.
 * Rebuilt lazily whenever the store's config object changes, so it never serves stale state and
 * needs no listener on the store.
 */
export class DnsNameTable {
  readonly clusterDomain: string;
  readonly #store: WorkloadStore;
  #config: LocalConfig | undefined;
  #index: NameIndex = new Map();

  constructor(store: WorkloadStore, options: DnsNameTableOptions = {}) {
    this.#store = store;
    this.clusterDomain = canonicalName(options.clusterDomain ?? 'cluster.local');
  }

  #current(): NameIndex {
    const config = this.#store.config;
    if (config === this.#config) return this.#index;
    const index: NameIndex = new Map();
    for (const s of config.services) {
      if (s.vips.length > 0) {
        add(index, s.hostname, s.namespace, s.vips.map(vipAddress));
        continue;
      }
      const key = `${s.namespace}/${s.hostname}`;
      const endpoints = config.workloads.filter((w) => w.status === 'Healthy' && w.services[key] !== undefined);
      add(index, s.hostname, s.namespace, endpoints.flatMap((w) => w.workloadIps));
    }
    for (const w of config.workloads) if (w.hostname !== '') add(index, w.hostname, w.namespace, w.workloadIps);
    this.#config = config;
    this.#index = index;
    return index;
  }

  /** The namespace a Kubernetes service name belongs to (`<svc>.<ns>.svc.<domain>`), if it is one. */
  #serviceNamespace(name: string): string | undefined {
    const suffix = `.svc.${this.clusterDomain}`;
    if (!name.endsWith(suffix)) return undefined;
    const labels = name.slice(0, -suffix.length).split('.');
    return labels.length === 2 ? labels[1] : undefined;
  }

  /** The one entry a client in `namespace` gets for `name`. */
  #choose(name: string, entries: NameEntry[], namespace: string | undefined): NameEntry | undefined {
    if (entries.length === 1) return hasAddresses(entries[0]!) ? entries[0] : undefined;
    const usable = entries.filter(hasAddresses);
    if (namespace !== undefined) {
      const own = usable.find((e) => e.namespace === namespace);
      if (own) return own;
    }
    const owner = this.#serviceNamespace(name);
    return (owner !== undefined ? usable.find((e) => e.namespace === owner) : undefined) ?? usable[0];
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
    const client = namespace === undefined || namespace === '' ? undefined : namespace;
    for (const c of candidates) {
      const entries = index.get(c);
      const e = entries && this.#choose(c, entries, client);
      if (e) return { hostname: c, namespace: e.namespace, v4: [...e.v4], v6: [...e.v6] };
    }
    return undefined;
  }
}
