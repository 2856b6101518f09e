import { createRequire } from 'node:module';
import type * as Prom from 'prom-client';

// prom-client's index loads all of prom-client: the push gateway (http, https, zlib), cluster
// aggregation and the CPU metric's @opentelemetry/api (51 modules, for exemplars ztunnel never
// sets), ~8 MiB of RSS in a process of its own, ~4 MiB of an idle ztunnel's. The classes and the
// default metrics come from their own files instead (the same module instances index.js re-exports).
const load = createRequire(import.meta.url);
export const Registry = load('prom-client/lib/registry') as typeof Prom.Registry;
export type Registry = Prom.Registry;
export const Counter = load('prom-client/lib/counter') as typeof Prom.Counter;
export type Counter<T extends string = string> = Prom.Counter<T>;
export const Gauge = load('prom-client/lib/gauge') as typeof Prom.Gauge;
export type Gauge<T extends string = string> = Prom.Gauge<T>;
export const Histogram = load('prom-client/lib/histogram') as typeof Prom.Histogram;
export type Histogram<T extends string = string> = Prom.Histogram<T>;

type DefaultMetric = (registry: Prom.Registry, config: { eventLoopMonitoringPrecision: number }) => void;
/** prom-client's collectDefaultMetrics list, but process CPU (below) in place of processCpuTotal. */
const DEFAULT_METRICS = [
  'processStartTime',
  'osMemoryHeap',
  'processOpenFileDescriptors',
  'processMaxFileDescriptors',
  'eventLoopLag',
  'processResources',
  'processHandles',
  'processRequests',
  'heapSizeAndUsed',
  'heapSpacesSizeAndUsed',
  'version',
  'gc',
] as const;

/** prom-client's process_cpu_* counters (same names and help), without its exemplar support. */
function processCpuMetrics(registry: Prom.Registry): void {
  let last = process.cpuUsage();
  const user = new Counter({
    name: 'process_cpu_user_seconds_total',
    help: 'Total user CPU time spent in seconds.',
    registers: [registry],
    collect() {
      const now = process.cpuUsage();
      user.inc((now.user - last.user) / 1e6);
      system.inc((now.system - last.system) / 1e6);
      total.inc((now.user - last.user + now.system - last.system) / 1e6);
      last = now;
    },
  });
  const system = new Counter({ name: 'process_cpu_system_seconds_total', help: 'Total system CPU time spent in seconds.', registers: [registry] });
  const total = new Counter({ name: 'process_cpu_seconds_total', help: 'Total user and system CPU time spent in seconds.', registers: [registry] });
}

/** What prom-client's collectDefaultMetrics registers, loaded from the metrics' own files. */
function collectDefaultMetrics(registry: Prom.Registry, eventLoopMonitoringPrecision: number): void {
  processCpuMetrics(registry);
  for (const name of DEFAULT_METRICS) (load(`prom-client/lib/metrics/${name}`) as DefaultMetric)(registry, { eventLoopMonitoringPrecision });
}

export type ResponseFlag = '-' | 'DENY' | 'CONNECT' | 'TLS_FAILURE' | 'NETWORK_POLICY';

/** The labels ztunnel puts on its TCP metrics. */
export interface TcpLabels {
  reporter: 'source' | 'destination';
  source_workload: string;
  source_workload_namespace: string;
  source_principal: string;
  destination_workload: string;
  destination_workload_namespace: string;
  destination_principal: string;
  request_protocol: 'tcp';
  connection_security_policy: 'mutual_tls' | 'unknown';
  response_flags: ResponseFlag;
}

const TCP_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'request_protocol',
  'connection_security_policy',
  'response_flags',
] as const;

/**
 * The TCP counters of one label set, counted as plain numbers on the connection path and added to the
 * Prometheus counters when those are read: prom-client hashes and validates the ten labels on every
 * `inc`, four times per connection.
 */
export class TcpTally {
  opened = 0;
  closed = 0;
  failed = 0;
  sentBytes = 0;
  receivedBytes = 0;

  constructor(readonly labels: TcpLabels) {}
}

/** ztunnel's Prometheus metrics, in a registry of their own. */
export class ZtunnelMetrics {
  readonly registry = new Registry();
  readonly #tallies = new Map<string, TcpTally>();
  /** Each TCP counter adds the pending tallies before it is read (whichever is read first adds all). */
  readonly #flush = (): void => {
    for (const t of this.#tallies.values()) {
      if (t.opened > 0) this.opened.inc(t.labels, t.opened);
      if (t.closed > 0) this.closed.inc(t.labels, t.closed);
      if (t.failed > 0) this.failed.inc(t.labels, t.failed);
      if (t.sentBytes > 0) this.sentBytes.inc(t.labels, t.sentBytes);
      if (t.receivedBytes > 0) this.receivedBytes.inc(t.labels, t.receivedBytes);
      t.opened = t.closed = t.failed = t.sentBytes = t.receivedBytes = 0;
    }
  };
  readonly opened = new Counter({
    name: 'istio_tcp_connections_opened_total',
    help: 'The total number of TCP connections opened',
    labelNames: TCP_LABELS,
    registers: [this.registry],
    collect: this.#flush,
  });
  readonly closed = new Counter({
    name: 'istio_tcp_connections_closed_total',
    help: 'The total number of TCP connections closed',
    labelNames: TCP_LABELS,
    registers: [this.registry],
    collect: this.#flush,
  });
  readonly failed = new Counter({
    name: 'istio_tcp_connections_failed_total',
    help: 'The total number of TCP connections that failed to establish',
    labelNames: TCP_LABELS,
    registers: [this.registry],
    collect: this.#flush,
  });
  readonly sentBytes = new Counter({
    name: 'istio_tcp_sent_bytes_total',
    help: 'The size of total bytes sent during response in case of a TCP connection',
    labelNames: TCP_LABELS,
    registers: [this.registry],
    collect: this.#flush,
  });
  readonly receivedBytes = new Counter({
    name: 'istio_tcp_received_bytes_total',
    help: 'The size of total bytes received during request in case of a TCP connection',
    labelNames: TCP_LABELS,
    registers: [this.registry],
    collect: this.#flush,
  });
  readonly activeProxies = new Gauge({
    name: 'workload_manager_active_proxy_count',
    help: 'The total number of active in-pod proxies',
    registers: [this.registry],
  });
  readonly pendingProxies = new Gauge({
    name: 'workload_manager_pending_proxy_count',
    help: 'The total number of in-pod proxies waiting to start',
    registers: [this.registry],
  });
  readonly proxiesStarted = new Counter({
    name: 'workload_manager_proxies_started_total',
    help: 'The total number of in-pod proxies started',
    registers: [this.registry],
  });
  readonly proxiesStopped = new Counter({
    name: 'workload_manager_proxies_stopped_total',
    help: 'The total number of in-pod proxies stopped',
    registers: [this.registry],
  });

  constructor(options: { processMetrics?: boolean } = {}) {
    // prom-client samples event-loop lag every 10 ms by default: 100 wake-ups a second of an
    // otherwise idle proxy, each able to land in front of a packet. 100 ms still shows real stalls.
    if (options.processMetrics) collectDefaultMetrics(this.registry, 100);
  }

  /**
   * The tally for one label set, made on first use and kept (as prom-client keeps every label set it
   * saw). `key` must identify the labels; the caller builds it from what it already has at hand.
   */
  tally(key: string, labels: () => TcpLabels): TcpTally {
    let t = this.#tallies.get(key);
    if (t === undefined) {
      t = new TcpTally(labels());
      this.#tallies.set(key, t);
    }
    return t;
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
