import { Counter, Histogram, type Registry } from '../metrics.js';

/** Labels on ztunnel's DNS metrics. */
export interface DnsLabels {
  request_query_type: string;
  request_protocol: 'udp' | 'tcp';
  source_workload: string;
  source_workload_namespace: string;
}

const LABELS = ['request_query_type', 'request_protocol', 'source_workload', 'source_workload_namespace'] as const;

/**
 * ztunnel's DNS proxy metrics, registered in the registry the node proxy serves on :15020 (one
 * instance per registry; every pod's DnsProxy shares it).
 */
export class DnsMetrics {
  readonly requests: Counter<(typeof LABELS)[number]>;
  readonly upstreamRequests: Counter<(typeof LABELS)[number]>;
  readonly upstreamFailures: Counter<(typeof LABELS)[number]>;
  readonly upstreamDuration: Histogram<(typeof LABELS)[number]>;

  constructor(registry: Registry) {
    this.requests = new Counter({
      name: 'istio_dns_requests_total',
      help: 'Total number of DNS requests',
      labelNames: LABELS,
      registers: [registry],
    });
    this.upstreamRequests = new Counter({
      name: 'istio_dns_upstream_requests_total',
      help: 'Total number of DNS requests forwarded to upstream',
      labelNames: LABELS,
      registers: [registry],
    });
    this.upstreamFailures = new Counter({
      name: 'istio_dns_upstream_failures_total',
      help: 'Total number of DNS requests that failed to forward upstream',
      labelNames: LABELS,
      registers: [registry],
    });
    this.upstreamDuration = new Histogram({
      name: 'istio_dns_upstream_request_duration_seconds',
      help: 'Total time in seconds it took to forward a DNS request upstream',
      labelNames: LABELS,
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    });
  }
}
