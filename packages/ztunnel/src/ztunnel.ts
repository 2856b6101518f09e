import type { AddressInfo } from 'node:net';
import { BufferBudget, type BufferBudgetOptions } from '@weir/hbone';
import { ZdsClient } from '@weir/redirect-protocol';
import { createAdminServer, createMetricsServer, createReadinessServer, parseListenAddress, type HttpEndpoint, type ListenAddress } from './admin.js';
import type { CaCertificateDump } from './ca-client/ca-client.js';
import { ZtunnelError } from './errors.js';
import { IdentityManager, type CertificateSource } from './identity.js';
import { InpodManager } from './inpod-manager.js';
import type { OrigSrcMode, ProxyPorts } from './inpod-proxy.js';
import type { LocalConfig } from './local-config.js';
import { silentLogger, type LogLevel, type Logger } from './logger.js';
import { ZtunnelMetrics } from './metrics.js';
import { registerBufferBudgetMetrics } from './buffer-budget-metrics.js';
import { DnsMetrics, DnsNameTable, type DnsUpstream } from './dns/index.js';
import { LocalConfigWatcher, WorkloadStore } from './workload-store.js';
// Types only: the xDS client (gRPC, generated protobuf) is loaded by start() when `xds` is set, so a
// ztunnel on a local config never pays for it in memory.
import type { XdsClient, XdsClientOptions } from './xds/client.js';

export interface ZtunnelOptions {
  /** The node agent's ZDS socket (ztunnel connects). */
  inpodUds: string;
  /** SO_MARK on every pod socket; default 1337. */
  packetMark?: number;
  /** SO_REUSEPORT on pod listeners; default true. */
  portReuse?: boolean;
  /** Source spoofing towards the app; default `auto`. */
  origSrc?: OrigSrcMode;
  /** Listen on `[::]` (dual stack) rather than `0.0.0.0`; default true. */
  ipv6Enabled?: boolean;
  trustDomain?: string;
  clusterId?: string;
  nodeName?: string;
  /** ztunnel's LOCAL_XDS_PATH: read at start and reloaded on change. */
  localXdsPath?: string;
  /** Inline workload state (used when no path is given). */
  localConfig?: LocalConfig;
  /**
   * istiod over Delta ADS (ztunnel's XDS_ADDRESS): feeds the workload store instead of a local
   * config; the node agent is connected only after the first response of every type.
   */
  xds?: Omit<XdsClientOptions, 'store' | 'logger' | 'registry'>;
  /**
   * Issues workload certificates: an embedded LocalCa or a CaClient (Istio's CA); `rootPem` is the
   * mesh trust bundle, read again for every TLS context so a rotated bundle takes effect.
   */
  ca: CertificateSource & {
    rootPem: string;
    /** A remote CA's issued certificates, shown in `/config_dump` (CaClient). */
    certificates?(): CaCertificateDump[];
    /** Called by stop() (CaClient). */
    close?(): void;
  };
  /** Workload certificate lifetime; rotated at half-life. Default 24 h. */
  certTtlSeconds?: number;
  /** How long established connections may run after stop(); default 5 s. */
  terminationDeadlineMs?: number;
  /** Admin server (`/config_dump`, `/logging`, `/quitquitquit`); default 127.0.0.1:15000; null: off. */
  adminAddress?: ListenAddress | string | null;
  /** Metrics server; default [::]:15020; null: off. */
  metricsAddress?: ListenAddress | string | null;
  /** Readiness server; default [::]:15021; null: off. */
  readinessAddress?: ListenAddress | string | null;
  /** In-pod ports; default 15001/15006/15008. */
  ports?: ProxyPorts;
  /** Retry period of a proxy that failed to start; default 5 s. */
  proxyRetryMs?: number;
  /** ZDS reconnect backoff (ms); default 10 ms doubling to 15 s. */
  zdsBackoff?: { initialMs: number; maxMs: number };
  logger?: Logger;
  /** Runtime log level control behind `/logging`. */
  logControl?: { readonly level: LogLevel; setLevel(level: LogLevel): void };
  /** Called on `/quitquitquit` (the app usually stops and exits). */
  onQuit?: () => void;
  /** Also export process metrics (CPU, memory, event loop). */
  processMetrics?: boolean;
  /** SOCKS5 on 127.0.0.1:15080 in every pod; default false (as current ztunnel). */
  socks5?: boolean;
  /** DNS proxy on 15053 in every pod (ztunnel `DNS_PROXY`); default true. */
  dnsProxy?: boolean;
  /**
   * Where names outside the mesh go (the node's resolvers, see readResolvConfUpstreams); default none:
   * mesh names still resolve, everything else is SERVFAIL.
   */
  dnsUpstreams?: DnsUpstream[];
  /** Default `cluster.local`. */
  clusterDomain?: string;
  /**
   * One budget for every pod's HBONE tunnels: bytes held by tunnels whose reader stopped (default 256 MiB
   * in all, 12 MiB per HBONE session; the chart's memory limit is 1 GiB) and TLS handshakes in progress
   * on 15008 (default 512). Over it the tunnels holding the most are reset and new ones refused.
   */
  bufferBudget?: BufferBudgetOptions;
}

type EndpointName = 'admin' | 'metrics' | 'readiness';

const toAddress = (a: ListenAddress | string): ListenAddress => (typeof a === 'string' ? parseListenAddress(a) : a);

/**
 * The node proxy: takes pods from the node agent over ZDS, runs an InpodProxy per pod, serves admin,
 * metrics and readiness. start() once, stop() once.
 */
export class Ztunnel {
  readonly store: WorkloadStore;
  readonly metrics: ZtunnelMetrics;
  readonly identities: IdentityManager;
  readonly manager: InpodManager;
  #xds: XdsClient | undefined;
  readonly #o: ZtunnelOptions;
  readonly #log: Logger;
  #watcher: LocalConfigWatcher | undefined;
  #zds: ZdsClient | undefined;
  readonly #http: { name: EndpointName; endpoint: HttpEndpoint; address: ListenAddress }[] = [];
  #stopping: Promise<void> | undefined;
  #stopSignal: (() => void) | undefined;

  constructor(o: ZtunnelOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger;
    const trustDomain = o.trustDomain ?? 'cluster.local';
    this.store = new WorkloadStore({ trustDomain, ...(o.localConfig ? { config: o.localConfig } : {}) });
    if (o.xds && (o.localXdsPath !== undefined || o.localConfig)) {
      throw new ZtunnelError('ERR_ZTUNNEL_CONFIG', `xds (${o.xds.address}) and a local config (${o.localXdsPath ?? 'inline'}) are mutually exclusive`);
    }
    this.metrics = new ZtunnelMetrics({ processMetrics: o.processMetrics ?? false });
    this.identities = new IdentityManager(o.ca, { ttlSeconds: o.certTtlSeconds ?? 86_400, logger: this.#log.child({ component: 'identity' }) });
    const bufferBudget = new BufferBudget({ logger: this.#log.child({ component: 'hbone' }), ...o.bufferBudget });
    registerBufferBudgetMetrics(this.metrics.registry, bufferBudget);
    this.manager = new InpodManager({
      proxy: {
        bufferBudget,
        store: this.store,
        identities: this.identities,
        trustBundle: () => o.ca.rootPem,
        trustDomain,
        clusterId: o.clusterId ?? 'Kubernetes',
        mark: o.packetMark ?? 1337,
        reusePort: o.portReuse ?? true,
        origSrc: o.origSrc ?? 'auto',
        ipv6: o.ipv6Enabled ?? true,
        socks5: o.socks5 ?? false,
        // DnsMetrics once per registry: prom-client refuses a second registration of the same names.
        ...((o.dnsProxy ?? true)
          ? {
              dns: {
                upstreams: o.dnsUpstreams ?? [],
                metrics: new DnsMetrics(this.metrics.registry),
                ...(o.clusterDomain ? { clusterDomain: o.clusterDomain } : {}),
                // One index of mesh names for the node, not one per pod.
                nameTable: new DnsNameTable(this.store, o.clusterDomain ? { clusterDomain: o.clusterDomain } : {}),
              },
            }
          : {}),
        ...(o.ports ? { ports: o.ports } : {}),
      },
      metrics: this.metrics,
      logger: this.#log,
      ...(o.proxyRetryMs !== undefined ? { retryMs: o.proxyRetryMs } : {}),
    });
    const any = (o.ipv6Enabled ?? true) ? '::' : '0.0.0.0';
    const servers: [EndpointName, ListenAddress | string | null | undefined, ListenAddress, () => HttpEndpoint][] = [
      ['admin', o.adminAddress, { host: '127.0.0.1', port: 15000 }, () => this.#adminServer()],
      ['metrics', o.metricsAddress, { host: any, port: 15020 }, () => createMetricsServer(this.metrics)],
      ['readiness', o.readinessAddress, { host: any, port: 15021 }, () => createReadinessServer(() => this.pending())],
    ];
    for (const [name, addr, def, make] of servers) {
      if (addr === null) continue;
      this.#http.push({ name, endpoint: make(), address: addr === undefined ? def : toAddress(addr) });
    }
  }

  #adminServer(): HttpEndpoint {
    return createAdminServer({
      configDump: () => this.configDump(),
      logLevel: () => this.#o.logControl?.level ?? 'info',
      setLogLevel: (level) => {
        if (!this.#o.logControl) throw new Error('log level is fixed (no log control given)');
        this.#o.logControl.setLevel(level);
        this.#log.info({ level }, 'log level changed');
      },
      quit: () => this.#o.onQuit?.(),
    });
  }

  /** The xDS client when `xds` is set (created by start()). */
  get xds(): XdsClient | undefined {
    return this.#xds;
  }

  /** Loads local state, opens the HTTP endpoints and connects to the node agent. */
  async start(): Promise<void> {
    if (this.#o.xds) {
      const { XdsClient } = await import('./xds/client.js');
      this.#xds = new XdsClient({ ...this.#o.xds, store: this.store, logger: this.#log.child({ component: 'xds' }), registry: this.metrics.registry });
    }
    if (this.#o.localXdsPath !== undefined) {
      this.#watcher = new LocalConfigWatcher(this.#o.localXdsPath, this.store, this.#log.child({ component: 'xds' }));
      await this.#watcher.start();
    }
    try {
      for (const h of this.#http) {
        const a = await h.endpoint.listen(h.address);
        this.#log.info({ address: `${a.address}:${a.port}`, component: h.name }, `${h.name} server listening`);
      }
    } catch (err) {
      await Promise.all(this.#http.map((h) => h.endpoint.close()));
      this.#watcher?.close();
      throw err;
    }
    if (this.xds) {
      // As ztunnel: pods are taken over only once the mesh state is known (first response of every type).
      this.xds.start();
      await Promise.race([this.xds.ready(), new Promise<void>((r) => (this.#stopSignal = r))]);
      if (this.#stopping) return;
      this.#log.info({ address: this.#o.xds!.address }, 'xds ready, connecting to the node agent');
    }
    this.#zds = new ZdsClient({
      path: this.#o.inpodUds,
      logger: this.#log.child({ component: 'inpod' }),
      ...(this.#o.zdsBackoff ? { backoff: this.#o.zdsBackoff } : {}),
    });
    this.#zds.start(this.manager);
  }

  /** Where each HTTP endpoint listens (useful with port 0). */
  addresses(): Partial<Record<'admin' | 'metrics' | 'readiness', AddressInfo>> {
    const out: Partial<Record<'admin' | 'metrics' | 'readiness', AddressInfo>> = {};
    for (const h of this.#http) {
      const a = h.endpoint.address();
      if (a) out[h.name] = a;
    }
    return out;
  }

  /** Why readiness fails; empty when ready. */
  pending(): string[] {
    return this.#stopping ? ['shutting down'] : [...(this.xds?.pending() ?? []), ...this.manager.pending()];
  }

  configDump(): unknown {
    return {
      config: {
        inpodUds: this.#o.inpodUds,
        packetMark: this.#o.packetMark ?? 1337,
        portReuse: this.#o.portReuse ?? true,
        trustDomain: this.store.defaultTrustDomain,
        clusterId: this.#o.clusterId ?? 'Kubernetes',
        nodeName: this.#o.nodeName ?? '',
        localXdsPath: this.#o.localXdsPath ?? null,
        xdsAddress: this.#o.xds?.address ?? null,
      },
      xds: this.xds?.dump() ?? null,
      ca: this.#o.ca.certificates ? { certificates: this.#o.ca.certificates() } : { embedded: true },
      workloads: this.store.config.workloads,
      services: this.store.config.services,
      policies: this.store.config.policies,
      certificates: this.identities.certificates(),
      pods: this.manager.pods(),
      ready: this.pending().length === 0,
    };
  }

  /**
   * Shuts down like ztunnel on SIGTERM: pod listeners close at once (a successor bound beside us with
   * SO_REUSEPORT takes new connections), established ones run until the deadline, HBONE sessions get
   * GOAWAY, then everything is closed.
   */
  stop(o: { deadlineMs?: number } = {}): Promise<void> {
    this.#stopping ??= (async () => {
      const deadlineMs = o.deadlineMs ?? this.#o.terminationDeadlineMs ?? 5000;
      this.#log.info({ deadline_ms: deadlineMs }, 'shutting down: listeners closed, draining connections');
      this.#stopSignal?.();
      this.manager.closeListeners();
      await this.#zds?.close().catch((err: unknown) => this.#log.warn({ err }, 'closing the node agent connection failed'));
      this.#watcher?.close();
      await this.xds?.close().catch((err: unknown) => this.#log.warn({ err }, 'closing the xds connection failed'));
      await this.manager.close({ deadlineMs });
      this.identities.close();
      this.#o.ca.close?.();
      await Promise.all(this.#http.map((h) => h.endpoint.close()));
      this.#log.info({}, 'shutdown complete');
    })();
    return this.#stopping;
  }
}
