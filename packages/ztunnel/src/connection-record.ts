import type { Logger } from './logger.js';
import type { ResponseFlag, TcpLabels, TcpTally, ZtunnelMetrics } from './metrics.js';

export interface Endpoint {
  addr: string;
  workload?: string | undefined;
  namespace?: string | undefined;
  identity?: string | undefined;
}

export interface ConnectionInfo {
  direction: 'inbound' | 'outbound';
  src: Endpoint;
  dst: Endpoint & { hboneAddr?: string | undefined; service?: string | undefined };
  /** HBONE (mutual TLS) or plaintext. */
  mtls: boolean;
}

function principal(identity: string | undefined): string {
  if (!identity) return 'unknown';
  return identity.startsWith('spiffe://') ? identity.slice(9) : identity;
}

function labelsOf(info: ConnectionInfo, flag: ResponseFlag): TcpLabels {
  return {
    reporter: info.direction === 'inbound' ? 'destination' : 'source',
    source_workload: info.src.workload ?? 'unknown',
    source_workload_namespace: info.src.namespace ?? 'unknown',
    source_principal: principal(info.src.identity),
    destination_workload: info.dst.workload ?? 'unknown',
    destination_workload_namespace: info.dst.namespace ?? 'unknown',
    destination_principal: principal(info.dst.identity),
    request_protocol: 'tcp',
    connection_security_policy: info.mtls ? 'mutual_tls' : 'unknown',
    response_flags: flag,
  };
}

/** The tally of a connection's label set with a response flag, found by one string instead of ten labels. */
function tallyOf(metrics: ZtunnelMetrics, info: ConnectionInfo, flag: ResponseFlag): TcpTally {
  const { src, dst } = info;
  // Equal keys must mean equal labels (the reverse need not hold: tallies with equal labels add up in
  // the same series). Kubernetes names and SPIFFE identities never contain '\n'.
  const key = `${info.direction}\n${src.workload ?? 'unknown'}\n${src.namespace ?? 'unknown'}\n${src.identity ?? ''}\n${dst.workload ?? 'unknown'}\n${dst.namespace ?? 'unknown'}\n${dst.identity ?? ''}\n${info.mtls}\n${flag}`;
  return metrics.tally(key, () => labelsOf(info, flag));
}

/** The tally a ConnectionRecord with these labels counts in while it runs (response flag '-'). */
export function openTally(metrics: ZtunnelMetrics, info: ConnectionInfo): TcpTally {
  return tallyOf(metrics, info, '-');
}

/**
 * One proxied connection from accept to close: counts it in the metrics and writes the access-log
 * line (`connection complete`, or `connection failed` at WARN for early rejections).
 */
export class ConnectionRecord {
  readonly startedAt = process.hrtime.bigint();
  /** Shared by every connection with the same labels: a record holds a reference, not a label set. */
  readonly #tally: TcpTally;
  #done = false;

  /** `tally`: openTally() of an equal label set, when the caller keeps one (saves the key per connection). */
  constructor(
    readonly info: ConnectionInfo,
    private readonly metrics: ZtunnelMetrics,
    private readonly logger: Logger,
    tally?: TcpTally,
  ) {
    this.#tally = tally ?? tallyOf(metrics, info, '-');
    this.#tally.opened++;
  }

  get done(): boolean {
    return this.#done;
  }

  #fields(sent: number, received: number): Record<string, unknown> {
    const { src, dst } = this.info;
    const ms = Number(process.hrtime.bigint() - this.startedAt) / 1e6;
    return {
      'src.addr': src.addr,
      'src.workload': src.workload,
      'src.namespace': src.namespace,
      'src.identity': src.identity,
      'dst.addr': dst.addr,
      'dst.hbone_addr': dst.hboneAddr,
      'dst.service': dst.service,
      'dst.workload': dst.workload,
      'dst.namespace': dst.namespace,
      'dst.identity': dst.identity,
      direction: this.info.direction,
      bytes_sent: sent,
      bytes_recv: received,
      duration: `${Math.round(ms)}ms`,
    };
  }

  /** The connection ran and ended; `sent` went to the downstream peer, `received` came from it. */
  complete(sent: number, received: number): void {
    if (this.#done) return;
    this.#done = true;
    const t = this.#tally;
    t.closed++;
    t.sentBytes += sent;
    t.receivedBytes += received;
    // The fields are only built for a line that is written (the access log is often below the level).
    if (this.logger.isLevelEnabled?.('info') !== false) this.logger.info(this.#fields(sent, received), 'connection complete');
  }

  /** The connection was refused or could not be established. */
  fail(flag: ResponseFlag, error: string, sent = 0, received = 0): void {
    if (this.#done) return;
    this.#done = true;
    const t = tallyOf(this.metrics, this.info, flag);
    t.failed++;
    t.closed++;
    t.sentBytes += sent;
    t.receivedBytes += received;
    if (this.logger.isLevelEnabled?.('warn') !== false) this.logger.warn({ ...this.#fields(sent, received), error }, 'connection failed');
  }
}
