export type TopologyErrorCode =
  | 'TOPOLOGY_PREREQUISITES'
  | 'TOPOLOGY_INVALID_OPTIONS'
  | 'TOPOLOGY_COMMAND_FAILED'
  | 'TOPOLOGY_CNI_FAILED'
  | 'TOPOLOGY_EXISTS'
  | 'TOPOLOGY_NOT_FOUND'
  | 'TOPOLOGY_DESTROYED'
  | 'TOPOLOGY_PROCESS_FAILED'
  | 'TOPOLOGY_TIMEOUT';

export class TopologyError extends Error {
  constructor(
    readonly code: TopologyErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TopologyError';
  }
}

/** A CNI plugin answered an error (or unparsable output): names the plugin, command and pod. */
export class CniInvocationError extends TopologyError {
  constructor(
    readonly plugin: string,
    readonly command: string,
    readonly cniCode: number | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('TOPOLOGY_CNI_FAILED', message, options);
    this.name = 'CniInvocationError';
  }
}
