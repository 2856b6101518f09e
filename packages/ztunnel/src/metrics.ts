import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

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

/** ztunnel's Prometheus metrics, in a registry of their own. */
export class ZtunnelMetrics {
  readonly registry = new Registry();
  readonly opened = new Counter({
    name: 'istio_tcp_connections_opened_total',
    help: 'The total number of TCP connections opened',
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  readonly closed = new Counter({
    name: 'istio_tcp_connections_closed_total',
    help: 'The total number of TCP connections closed',
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  readonly failed = new Counter({
    name: 'istio_tcp_connections_failed_total',
    help: 'The total number of TCP connections that failed to establish',
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  readonly sentBytes = new Counter({
    name: 'istio_tcp_sent_bytes_total',
    help: 'The size of total bytes sent during response in case of a TCP connection',
    labelNames: TCP_LABELS,
    registers: [this.registry],
  });
  readonly receivedBytes = new Counter({
    name: 'istio_tcp_received_bytes_total',
    help: 'The size of total bytes received during request in case of a TCP connection',
    labelNames: TCP_LABELS,
    registers: [this.registry],
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
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 100 });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
