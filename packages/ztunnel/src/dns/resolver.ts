import type { Answer } from 'dns-packet';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../logger.js';
import { silentLogger } from '../logger.js';
import type { DnsForwarder } from './forwarder.js';
import type { DnsLabels, DnsMetrics } from './metrics.js';
import type { DnsNameTable } from './name-table.js';
import { buildResponse, headerOnlyResponse, parseQuery, responseRcode } from './message.js';

export interface DnsResolverOptions {
  table: DnsNameTable;
  forwarder: DnsForwarder;
  /** The client pod's namespace: its search path is `<ns>.svc.<domain> svc.<domain> <domain>`. */
  namespace?: string | undefined;
  /** The client pod's workload name, for metric labels. */
  workloadName?: string | undefined;
  /** TTL of answers from the mesh state (short: the state changes under the client). */
  ttlSeconds: number;
  /** Forwards in flight at once; beyond this a query is answered SERVFAIL at once. */
  maxInflight: number;
  metrics?: DnsMetrics | undefined;
  logger?: Logger | undefined;
}

// Metric label values come from this fixed set, so hostile query types cannot grow the registry.
const LABELLED_TYPES = new Set(['A', 'AAAA', 'ANY', 'CAA', 'CNAME', 'DNSKEY', 'DS', 'HTTPS', 'MX', 'NAPTR', 'NS', 'PTR', 'SOA', 'SRV', 'SVCB', 'TXT']);

/**
 * Answers one DNS message: A/AAAA for names in the mesh state from the state, everything else
 * forwarded upstream, upstream failures as SERVFAIL. Never throws; `undefined` means "drop".
 */
export class DnsResolver {
  readonly #o: DnsResolverOptions;
  readonly #log: Logger;
  #inflight = 0;

  constructor(o: DnsResolverOptions) {
    this.#o = o;
    this.#log = o.logger ?? silentLogger;
  }

  get inflight(): number {
    return this.#inflight;
  }

  async answer(query: Buffer, transport: 'udp' | 'tcp', src: string): Promise<Buffer | undefined> {
    try {
      return await this.#answer(query, transport, src);
    } catch (err) {
      // A bug, never the client's fault: one SERVFAIL, not a crashed node proxy.
      this.#log.warn({ src, protocol: transport, err }, 'dns request failed unexpectedly');
      return query.length >= 12 ? headerOnlyResponse(query, 'SERVFAIL') : undefined;
    }
  }

  async #answer(query: Buffer, transport: 'udp' | 'tcp', src: string): Promise<Buffer | undefined> {
    const started = performance.now();
    const q = parseQuery(query);
    if (q.kind === 'drop') {
      this.#log.debug({ src, protocol: transport, reason: q.reason }, 'dns request dropped');
      return undefined;
    }
    if (q.kind === 'error') {
      this.#log.debug({ src, protocol: transport, rcode: q.rcode, reason: q.reason }, 'dns request rejected');
      return headerOnlyResponse(query, q.rcode);
    }
    const { name, type } = q.question;
    const labels: DnsLabels = {
      request_query_type: LABELLED_TYPES.has(String(type)) ? String(type) : 'other',
      request_protocol: transport,
      source_workload: this.#o.workloadName ?? 'unknown',
      source_workload_namespace: this.#o.namespace ?? 'unknown',
    };
    this.#o.metrics?.requests.inc(labels);
    const access = (fields: Record<string, unknown>): void =>
      this.#log.debug({ src, protocol: transport, query: name, type, ...fields, duration_ms: Math.round((performance.now() - started) * 100) / 100 }, 'dns request');

    if ((type === 'A' || type === 'AAAA') && (q.question.class ?? 'IN') === 'IN') {
      const found = this.#o.table.lookup(name, this.#o.namespace);
      if (found) {
        const ips = type === 'A' ? found.v4 : found.v6;
        const answers: Answer[] = ips.map((data) => ({ type, name, class: 'IN', ttl: this.#o.ttlSeconds, data }));
        const response = buildResponse(q, 'NOERROR', answers, { authoritative: true, transport });
        access({ rcode: 'NOERROR', answers: ips.length, from: 'mesh', resolved: found.hostname });
        return response;
      }
    }

    if (this.#inflight >= this.#o.maxInflight) {
      this.#o.metrics?.upstreamFailures.inc(labels);
      access({ rcode: 'SERVFAIL', from: 'overload', inflight: this.#inflight });
      return buildResponse(q, 'SERVFAIL', [], { authoritative: false, transport });
    }
    this.#inflight++;
    this.#o.metrics?.upstreamRequests.inc(labels);
    const forwardStarted = performance.now();
    try {
      const { response, upstream } = await this.#o.forwarder.forward(query, transport);
      this.#o.metrics?.upstreamDuration.observe(labels, (performance.now() - forwardStarted) / 1000);
      access({ rcode: responseRcode(response) ?? 'unknown', from: upstream });
      return response;
    } catch (err) {
      this.#o.metrics?.upstreamFailures.inc(labels);
      this.#o.metrics?.upstreamDuration.observe(labels, (performance.now() - forwardStarted) / 1000);
      access({ rcode: 'SERVFAIL', from: 'upstream', error: (err as Error).message });
      return buildResponse(q, 'SERVFAIL', [], { authoritative: false, transport });
    } finally {
      this.#inflight--;
    }
  }
}
