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

/** HTTP/2 error codes (RFC 9113 §7), by name: the number goes on the wire in RST_STREAM and GOAWAY. */
export const H2_ERROR_CODES = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
  HTTP_1_1_REQUIRED: 0xd,
} as const;
export type H2ErrorCodeName = keyof typeof H2_ERROR_CODES;

/**
 * The peer broke HTTP/2 or HPACK (raised by the internal h2 codec). `scope` says what to tear down:
 * 'connection' → GOAWAY with `h2Code` and close; 'stream' → RST_STREAM `streamId` with `h2Code`.
 * Not an HboneError: the session layer turns it into one (ERR_HBONE_SESSION, this as the cause), so
 * the public HboneErrorCode union stays as it is.
 */
export class H2ProtocolError extends Error {
  readonly code = 'ERR_HBONE_H2_PROTOCOL';
  /** The error code's number on the wire (`H2_ERROR_CODES[h2Code]`). */
  readonly h2CodeNumber: number;
  constructor(
    readonly h2Code: H2ErrorCodeName,
    readonly scope: 'connection' | 'stream',
    /** The stream at fault; 0 for a connection error not tied to one stream. */
    readonly streamId: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'H2ProtocolError';
    this.h2CodeNumber = H2_ERROR_CODES[h2Code];
  }
}
