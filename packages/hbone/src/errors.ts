export type HboneErrorCode =
  /** The peer answered the CONNECT with a status other than 200 (`status` holds it). */
  | 'ERR_HBONE_STATUS'
  /** The TLS handshake failed (bad chain, no certificate, version or ALPN mismatch). */
  | 'ERR_HBONE_TLS'
  /** The peer's certificate carries none of the expected SPIFFE identities. */
  | 'ERR_HBONE_IDENTITY_MISMATCH'
  /** The TCP connection to the peer could not be made. */
  | 'ERR_HBONE_CONNECT'
  /** Connecting or the handshake took longer than allowed, or the peer did not answer a PING in time. */
  | 'ERR_HBONE_TIMEOUT'
  /** The peer accepted a CONNECT stream but left it unanswered past `responseTimeoutMs` (the stream was reset). */
  | 'ERR_HBONE_RESPONSE_TIMEOUT'
  /** The caller's AbortSignal fired. */
  | 'ERR_HBONE_ABORTED'
  /** The HTTP/2 session or stream failed or was reset before the tunnel was up. */
  | 'ERR_HBONE_SESSION'
  /** An authority is not `ip:port` / `[v6]:port`. */
  | 'ERR_HBONE_INVALID_AUTHORITY'
  /** A string is not `spiffe://<td>/ns/<ns>/sa/<sa>`. */
  | 'ERR_HBONE_INVALID_IDENTITY'
  /** Invalid options or certificates given to this library. */
  | 'ERR_HBONE_CONFIG'
  /** A new tunnel was refused because paused tunnels hold more than the BufferBudget allows. */
  | 'ERR_HBONE_BUFFER_BUDGET'
  /** The client or server was closed. */
  | 'ERR_HBONE_CLOSED';

/** Every error raised by @weir/hbone; branch on `code`. */
export class HboneError extends Error {
  /** HTTP status of a refused CONNECT (`ERR_HBONE_STATUS`). */
  readonly status: number | undefined;
  constructor(
    readonly code: HboneErrorCode,
    message: string,
    options?: { cause?: unknown; status?: number },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HboneError';
    this.status = options?.status;
  }
}
