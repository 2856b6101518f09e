// The world the pod-certificate tests (inpod-cert-*) share: pods on one node with in-pod rules, an
// InpodManager whose identities come from a CA the test scripts, and ZDS over a unix seqpacket socket.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsClient, ZdsServer, type ZdsHandler } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { IdentityManager, type CertificateSource } from '../src/identity.js';
import { InpodManager, type InpodManagerOptions, type ProxyFactoryOptions } from '../src/inpod-manager.js';
import { parseLocalConfig } from '../src/local-config.js';
import { createLogger, type Logger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { EchoApp, capturePod, localConfigYaml, requireRoot, uniqueName, waitFor } from './support.js';

/** One JSON log line of the manager and its proxies. */
export interface LogRecord {
  msg: string;
  uid?: string;
  [k: string]: unknown;
}

export interface CertWorldOptions<C extends CertificateSource, N extends string> {
  /** One letter naming the topology and the temp dir. */
  tag: string;
  /**
   * The pods on node n1 (namespace ns1), created in this order: name → service account (captured,
   * in the local config, ready for a ZDS Add), or null: not in the mesh (a client that reaches a
   * pod's 15008 as another node's ztunnel would).
   */
  pods: Record<N, string | null>;
  /** The CA the identities come from, wrapping the test's LocalCa. */
  ca: (local: LocalCa) => C;
  /** Overrides of the proxies' options (connectTimeoutMs, certificateRetry, maxCertificateWaiters…). */
  proxy?: Partial<ProxyFactoryOptions>;
  /** Overrides of the manager's options (prefetchMaxDelayMs…). */
  manager?: Partial<Omit<InpodManagerOptions, 'proxy' | 'metrics' | 'logger'>>;
  /** Keep the debug log as JSON records in `log` (default); false: a silent logger. */
  log?: boolean;
  /** What the ZDS client drives, given the manager; default the manager itself. */
  handler?: (m: InpodManager) => ZdsHandler;
}

/** Built by start() (in beforeAll), torn down by close() (in afterAll, also after a failed start). */
export class CertWorld<C extends CertificateSource, N extends string> {
  readonly log: LogRecord[] = [];
  pods!: Record<N, TopologyPod>;
  ca!: C;
  identities!: IdentityManager;
  /** What the manager's proxies are made with. */
  proxy!: ProxyFactoryOptions;
  metrics!: ZtunnelMetrics;
  logger!: Logger;
  m!: InpodManager;
  zds!: ZdsServer;
  #topo?: Topology;
  #dir?: string;
  #client?: ZdsClient;
  readonly #apps: EchoApp[] = [];
  readonly #handles: Netns[] = [];

  constructor(private readonly o: CertWorldOptions<C, N>) {}

  async start(): Promise<void> {
    requireRoot();
    this.#dir = await mkdtemp(join(tmpdir(), `wzt-${this.o.tag}-`));
    this.#topo = await Topology.create({ name: uniqueName(this.o.tag) });
    const n1 = await this.#topo.addNode({ name: 'n1' });
    const pods: Partial<Record<N, TopologyPod>> = {};
    for (const name of Object.keys(this.o.pods) as N[]) pods[name] = await n1.addPod({ name, namespace: 'ns1' });
    this.pods = pods as Record<N, TopologyPod>;
    const meshed = (Object.entries(this.o.pods) as [N, string | null][]).flatMap(([name, sa]) => (sa === null ? [] : [{ pod: this.pods[name], serviceAccount: sa, node: 'n1' }]));
    for (const { pod } of meshed) await capturePod(pod);
    const local = await LocalCa.create({ trustDomain: 'cluster.local' });
    this.ca = this.o.ca(local);
    this.identities = new IdentityManager(this.ca);
    const store = new WorkloadStore({ trustDomain: 'cluster.local', config: parseLocalConfig(localConfigYaml(meshed)) });
    this.proxy = {
      store,
      identities: this.identities,
      trustBundle: local.rootPem,
      trustDomain: 'cluster.local',
      mark: 1337,
      reusePort: true,
      origSrc: 'auto',
      ipv6: false,
      ...this.o.proxy,
    };
    this.metrics = new ZtunnelMetrics();
    this.logger = (
      this.o.log === false
        ? createLogger({ write: () => {} })
        : createLogger({ level: 'debug', format: 'json', write: (l) => this.log.push(JSON.parse(l) as LogRecord) })
    ).logger;
    this.m = new InpodManager({ retryMs: 300, ...this.o.manager, proxy: this.proxy, metrics: this.metrics, logger: this.logger });
    this.zds = new ZdsServer({ path: join(this.#dir, 'zds.sock'), ackTimeoutMs: 5000 });
    await this.zds.start();
    this.#client = new ZdsClient({ path: this.zds.path, backoff: { initialMs: 10, maxMs: 100 } });
    this.#client.start(this.o.handler?.(this.m) ?? this.m);
    await waitFor('ztunnel connected, snapshot acked', async () => this.zds.connected && this.m.pending().length === 0);
  }

  /** The pod's netns, closed by close(). */
  ns(pod: TopologyPod): Netns {
    const h = openNetns(pod.netnsPath);
    this.#handles.push(h);
    return h;
  }

  /** An echo app in the pod, closed by close(). */
  async echo(pod: TopologyPod, port: number): Promise<EchoApp> {
    const app = await EchoApp.start(pod, port);
    this.#apps.push(app);
    return app;
  }

  /** The manager's view of the pod. */
  state(pod: TopologyPod): ReturnType<InpodManager['pods']>[number] | undefined {
    return this.m.pods().find((p) => p.uid === pod.uid);
  }

  /** What IdentityManager holds for the service account (namespace ns1). */
  certOf(sa: string): ReturnType<IdentityManager['certificates']>[number] | undefined {
    return this.identities.certificates().find((c) => c.identity.endsWith(`/sa/${sa}`));
  }

  async close(): Promise<void> {
    for (const app of this.#apps) await app.close();
    for (const h of this.#handles) h.close();
    await this.#client?.close();
    await this.zds?.close();
    await this.m?.close({ deadlineMs: 0 });
    this.identities?.close();
    await this.#topo?.destroy();
    if (this.#dir) await rm(this.#dir, { recursive: true, force: true });
  }
}
