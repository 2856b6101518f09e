export type ZtunnelErrorCode =
  | 'ERR_ZTUNNEL_CONFIG'
  | 'ERR_ZTUNNEL_LOCAL_CONFIG'
  | 'ERR_ZTUNNEL_IDENTITY'
  | 'ERR_ZTUNNEL_XDS'
  | 'ERR_ZTUNNEL_CA'
  | 'ERR_ZTUNNEL_PROXY_START'
  | 'ERR_ZTUNNEL_PROXY_STOPPED'
  | 'ERR_ZTUNNEL_UNKNOWN_WORKLOAD'
  | 'ERR_ZTUNNEL_RECURSIVE'
  | 'ERR_ZTUNNEL_SERVER';

/** The one error class of @weir/ztunnel; branch on `code`. */
export class ZtunnelError extends Error {
  constructor(
    readonly code: ZtunnelErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ZtunnelError';
  }
}
