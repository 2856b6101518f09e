import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from './logger.js';
import { silentLogger } from './logger.js';
import { parseLocalConfig, type LocalConfig, type Policy, type Service, type Workload } from './local-config.js';

/** Where a connection to `ip:port` should go, as far as the mesh knows. */
export interface ResolvedDestination {
  workload: Workload;
  /** The IP of the chosen endpoint (a workload IP). */
  address: string;
  /** The port on the workload (a service port mapped to its target port). */
  port: number;
  /** Set when the destination was a service VIP. */
  service?: Service;
}

/** A service endpoint known only by hostname: where to connect once the name is resolved. */
export interface DnsEndpoint {
  workload: Workload;
  hostname: string;
  /** The port on the endpoint (the service port mapped to its target port). */
  port: number;
  service: Service;
}

/** Strips an optional `<network>/` prefix from a VIP. */
function vipAddress(vip: string): string {
  const slash = vip.indexOf('/');
  return slash < 0 ? vip : vip.slice(slash + 1);
}

function serviceKey(s: Service): string {
  return `${s.namespace}/${s.hostname}`;
}

function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/**
 * Workloads, services and policies from ztunnel's local config, indexed for the data path. `replace`
 * swaps the whole state atomically; live connections keep the objects they resolved.
 */
export class WorkloadStore extends EventEmitter<{ change: [] }> {
  #config: LocalConfig = { workloads: [], services: [], policies: [] };
  #byIp = new Map<string, Workload>();
  #byUid = new Map<string, Workload>();
  #byName = new Map<string, Workload>();
  #vips = new Map<string, Service>();
  #endpoints = new Map<string, Workload[]>();
  #policies = new Map<string, Policy>();
  #rr = new Map<string, number>();
  readonly defaultTrustDomain: string;

  constructor(options: { trustDomain?: string; config?: LocalConfig } = {}) {
    super();
    // Every pod's proxy listens for 'change': a node with more than 10 pods is normal, not a leak.
    this.setMaxListeners(0);
    this.defaultTrustDomain = options.trustDomain ?? 'cluster.local';
    if (options.config) this.replace(options.config);
  }

  get config(): LocalConfig {
    return this.#config;
  }

  replace(config: LocalConfig): void {
    const byIp = new Map<string, Workload>();
    const byUid = new Map<string, Workload>();
    const byName = new Map<string, Workload>();
    const endpoints = new Map<string, Workload[]>();
    for (const w of config.workloads) {
      for (const ip of w.workloadIps) byIp.set(normalizeIp(ip), w);
      if (w.uid !== '') byUid.set(w.uid, w);
      // A workload without addresses (a DNS ServiceEntry's hostname) is never a pod: it must not
      // stand in for a pod of the same name, which the name lookup (ZDS's pod) would then find.
      if (w.workloadIps.length > 0) byName.set(`${w.namespace}/${w.name}`, w);
      for (const key of Object.keys(w.services)) {
        const list = endpoints.get(key) ?? [];
        list.push(w);
        endpoints.set(key, list);
      }
    }
    const vips = new Map<string, Service>();
    for (const s of config.services) for (const v of s.vips) vips.set(normalizeIp(vipAddress(v)), s);
    const policies = new Map<string, Policy>();
    for (const p of config.policies) policies.set(`${p.namespace}/${p.name}`, p);
    this.#config = config;
    this.#byIp = byIp;
    this.#byUid = byUid;
    this.#byName = byName;
    this.#vips = vips;
    this.#endpoints = endpoints;
    this.#policies = policies;
    this.emit('change');
  }

  workloadByIp(ip: string): Workload | undefined {
    return this.#byIp.get(normalizeIp(ip));
  }

  workloadByUid(uid: string): Workload | undefined {
    return this.#byUid.get(uid);
  }

  workloadByName(namespace: string, name: string): Workload | undefined {
    return this.#byName.get(`${namespace}/${name}`);
  }

  serviceByVip(ip: string): Service | undefined {
    return this.#vips.get(normalizeIp(ip));
  }

  /** The SPIFFE identity of a workload (`spiffe://<td>/ns/<ns>/sa/<sa>`). */
  identityOf(w: Workload): string {
    return `spiffe://${w.trustDomain || this.defaultTrustDomain}/ns/${w.namespace}/sa/${w.serviceAccount}`;
  }

  /**
   * Resolves `ip:port` to a workload: directly by workload IP, or through a service VIP to one healthy
   * endpoint (round robin) and its target port. Undefined when the address is not in the mesh state.
   */
  resolve(ip: string, port: number): ResolvedDestination | undefined {
    const direct = this.workloadByIp(ip);
    if (direct) return { workload: direct, address: normalizeIp(ip), port };
    const service = this.serviceByVip(ip);
    if (!service) return undefined;
    const key = serviceKey(service);
    // Endpoints known by hostname only have no address to connect to: never picked here
    // (dnsEndpoint() hands them out, for the caller to resolve on demand).
    const candidates = (this.#endpoints.get(key) ?? []).filter(
      (w) =>
        w.status === 'Healthy' &&
        w.workloadIps.length > 0 &&
        (w.services[key]?.[String(port)] !== undefined || service.ports[String(port)] !== undefined),
    );
    if (candidates.length === 0) return undefined;
    const n = this.#rr.get(key) ?? 0;
    this.#rr.set(key, n + 1);
    const workload = candidates[n % candidates.length]!;
    const target = Number(workload.services[key]?.[String(port)] ?? service.ports[String(port)] ?? port) || port;
    const family = ip.includes(':') ? 6 : 4;
    const address = workload.workloadIps.find((a) => (a.includes(':') ? 6 : 4) === family) ?? workload.workloadIps[0]!;
    return { workload, address, port: target, service };
  }

  /**
   * For a service VIP none of whose healthy endpoints has an address, but some are known by hostname
   * (istiod's workload for a ServiceEntry with DNS resolution): one of those (round robin) and its
   * target port, for the caller to resolve by DNS when the connection comes. Undefined otherwise
   * (`resolve()` answers for VIPs with addressable endpoints).
   */
  dnsEndpoint(ip: string, port: number): DnsEndpoint | undefined {
    const service = this.serviceByVip(ip);
    if (!service) return undefined;
    const key = serviceKey(service);
    const serves = (w: Workload): boolean => w.services[key]?.[String(port)] !== undefined || service.ports[String(port)] !== undefined;
    const endpoints = (this.#endpoints.get(key) ?? []).filter((w) => w.status === 'Healthy' && serves(w));
    if (endpoints.some((w) => w.workloadIps.length > 0)) return undefined;
    const candidates = endpoints.filter((w) => w.hostname !== '');
    if (candidates.length === 0) return undefined;
    const n = this.#rr.get(key) ?? 0;
    this.#rr.set(key, n + 1);
    const workload = candidates[n % candidates.length]!;
    const target = Number(workload.services[key]?.[String(port)] ?? service.ports[String(port)] ?? port) || port;
    return { workload, hostname: workload.hostname, port: target, service };
  }

  /** Policies that apply to a destination workload: its namespace's, global ones and those it names. */
  policiesFor(w: Workload): Policy[] {
    const out: Policy[] = [];
    for (const p of this.#config.policies) {
      if (p.scope === 'Global') out.push(p);
      else if (p.scope === 'Namespace' && p.namespace === w.namespace) out.push(p);
    }
    for (const name of w.authorizationPolicies) {
      const key = name.includes('/') ? name : `${w.namespace}/${name}`;
      const p = this.#policies.get(key);
      if (p && p.scope === 'WorkloadSelector' && !out.includes(p)) out.push(p);
    }
    return out;
  }
}

/**
 * Loads a local config file into a store and reloads it on change. A bad file is logged and the
 * previous state kept, so a typo never tears down the data path.
 */
export class LocalConfigWatcher {
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #last = '';
  readonly #logger: Logger;

  constructor(
    readonly path: string,
    readonly store: WorkloadStore,
    logger: Logger = silentLogger,
  ) {
    this.#logger = logger;
  }

  /** Reads the file once (throws on a bad file), then watches its directory for replacements. */
  async start(): Promise<void> {
    await this.#load(true);
    // Watch the directory: editors and ConfigMap mounts replace the file rather than write it.
    this.#watcher = watch(dirname(this.path), (_event, name) => {
      if (name !== null && name !== basename(this.path) && !name.startsWith('..')) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => void this.#load(false), 50);
    });
    this.#watcher.on('error', (err) => this.#logger.warn({ err, path: this.path }, 'local config watch failed'));
  }

  async reload(): Promise<void> {
    await this.#load(false);
  }

  async #load(initial: boolean): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if (initial) throw err;
      this.#logger.warn({ err, path: this.path }, 'local config unreadable, keeping previous state');
      return;
    }
    if (!initial && text === this.#last) return;
    try {
      const config = parseLocalConfig(text, this.path);
      this.#last = text;
      this.store.replace(config);
      this.#logger.info(
        { path: this.path, workloads: config.workloads.length, services: config.services.length, policies: config.policies.length },
        'local config loaded',
      );
    } catch (err) {
      if (initial) throw err;
      this.#logger.error({ err, path: this.path }, 'local config rejected, keeping previous state');
    }
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#watcher?.close();
  }
}
