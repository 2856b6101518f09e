/** The error codes of the CNI specification (SPEC.md "Error"), by name. */
export const CNI_ERROR_CODES = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodingFailure: 6,
  invalidNetworkConfig: 7,
  tryAgainLater: 11,
  pluginNotAvailable: 50,
  pluginNotAvailableLimitedConnectivity: 51,
} as const;

export type CniErrorCode =
  | 'ERR_CNI_INCOMPATIBLE_VERSION'
  | 'ERR_CNI_INVALID_ENVIRONMENT'
  | 'ERR_CNI_DECODING_FAILURE'
  | 'ERR_CNI_INVALID_CONFIG'
  | 'ERR_CNI_AGENT_UNAVAILABLE'
  | 'ERR_CNI_AGENT_UNREACHABLE'
  | 'ERR_CNI_KUBE_API'
  | 'ERR_CNI_KUBECONFIG'
  | 'ERR_CNI_INTERNAL';

/** The numeric CNI code each error code is reported with. */
const CNI_NUMERIC: Record<CniErrorCode, number> = {
  ERR_CNI_INCOMPATIBLE_VERSION: CNI_ERROR_CODES.incompatibleVersion,
  ERR_CNI_INVALID_ENVIRONMENT: CNI_ERROR_CODES.invalidEnvironment,
  ERR_CNI_DECODING_FAILURE: CNI_ERROR_CODES.decodingFailure,
  ERR_CNI_INVALID_CONFIG: CNI_ERROR_CODES.invalidNetworkConfig,
  ERR_CNI_AGENT_UNAVAILABLE: CNI_ERROR_CODES.tryAgainLater,
  // postCmdAdd's "no connection"; the ADD then decides by the API, and fails as ERR_CNI_AGENT_UNAVAILABLE.
  ERR_CNI_AGENT_UNREACHABLE: CNI_ERROR_CODES.tryAgainLater,
  // The fallback lookup's failure; it reaches the runtime as the cause of ERR_CNI_AGENT_UNAVAILABLE.
  ERR_CNI_KUBE_API: CNI_ERROR_CODES.tryAgainLater,
  ERR_CNI_KUBECONFIG: CNI_ERROR_CODES.invalidNetworkConfig,
  ERR_CNI_INTERNAL: 999,
};

/** Every error thrown by @weir/cni-plugin; branch on `code`. `cniCode` is what the runtime sees. */
export class CniPluginError extends Error {
  readonly cniCode: number;
  readonly details: string | undefined;
  constructor(
    readonly code: CniErrorCode,
    message: string,
    options?: { cause?: unknown; details?: string },
  ) {
    super(message, options);
    this.name = 'CniPluginError';
    this.cniCode = CNI_NUMERIC[code];
    this.details = options?.details;
  }
}

/** The JSON object a plugin prints on stdout when it fails (SPEC.md "Error"). */
export interface CniErrorResult {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export function toCniError(err: unknown, cniVersion: string): CniErrorResult {
  if (err instanceof CniPluginError) {
    const out: CniErrorResult = { cniVersion, code: err.cniCode, msg: err.message };
    const details = err.details ?? (err.cause instanceof Error ? err.cause.message : undefined);
    // The runtime prints msg and details together: a cause the message already quotes is said once.
    if (details && !err.message.includes(details)) out.details = details;
    return out;
  }
  return { cniVersion, code: 999, msg: `weir-cni internal error: ${err instanceof Error ? err.message : String(err)}` };
}
