import type { Logger } from './logger.js';
import type { ResponseFlag, TcpLabels, ZtunnelMetrics } from './metrics.js';

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
  return identity ? identity.replace(/^spiffe:\/\//, '') : 'unknown';
}

/**
 * One proxied connection from accept to close: counts it in the metrics and writes the access-log
 * line (`connection complete`, or `connection failed` at WARN for early rejections).
 */
export class ConnectionRecord {
  readonly startedAt = process.hrtime.bigint();
  #done = false;

  constructor(
    readonly info: ConnectionInfo,
    private readonly metrics: ZtunnelMetrics,
    private readonly logger: Logger,
  ) {
    this.metrics.opened.inc(this.#labels('-'));
  }

  // Built when counted rather than kept: a record lives as long as its (often idle) connection.
  #labels(flag: ResponseFlag): TcpLabels {
    const { info } = this;
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
    const labels = this.#labels('-');
    this.metrics.closed.inc(labels);
    if (sent > 0) this.metrics.sentBytes.inc(labels, sent);
    if (received > 0) this.metrics.receivedBytes.inc(labels, received);
    this.logger.info(this.#fields(sent, received), 'connection complete');
  }

  /** The connection was refused or could not be established. */
  fail(flag: ResponseFlag, error: string, sent = 0, received = 0): void {
    if (this.#done) return;
    this.#done = true;
    const labels = this.#labels(flag);
    this.metrics.failed.inc(labels);
    this.metrics.closed.inc(labels);
    if (sent > 0) this.metrics.sentBytes.inc(labels, sent);
    if (received > 0) this.metrics.receivedBytes.inc(labels, received);
    this.logger.warn({ ...this.#fields(sent, received), error }, 'connection failed');
  }
}
