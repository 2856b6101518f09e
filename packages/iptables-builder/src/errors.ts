export type IptablesErrorCode =
  | 'ERR_IPTABLES_INVALID_RULE'
  | 'ERR_IPTABLES_PARSE'
  | 'ERR_IPTABLES_RESTORE_FAILED'
  | 'ERR_IPTABLES_COMMAND_FAILED'
  | 'ERR_IPTABLES_BACKEND_UNAVAILABLE'
  | 'ERR_IPTABLES_ROUTING_FAILED'
  | 'ERR_IPTABLES_IPSET_NOT_FOUND'
  | 'ERR_IPTABLES_IPV6_LO_DISABLED';

/** Base class of every error this package throws; branch on `code`. */
export class IptablesError extends Error {
  constructor(
    readonly code: IptablesErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'IptablesError';
  }
}

/** A rule (or rule set) was built with a value that iptables would reject or misread. */
export class InvalidRuleError extends IptablesError {
  constructor(
    /** Path of the offending field, e.g. `ipv4.nat.ISTIO_OUTPUT[2].matches[0].cidr`. */
    readonly field: string,
    readonly value: unknown,
    reason: string,
  ) {
    super('ERR_IPTABLES_INVALID_RULE', `invalid rule field ${field}: ${reason} (got ${JSON.stringify(value)})`);
    this.name = 'InvalidRuleError';
  }
}

/** A command (iptables-restore, nft, ip) exited non-zero; its stderr is attached. */
export class CommandFailedError extends IptablesError {
  /** The stdin fed to the command (restore text), when there was one. */
  readonly input: string | undefined;

  constructor(
    code: IptablesErrorCode,
    readonly command: string,
    readonly args: readonly string[],
    readonly exitCode: number,
    readonly stderr: string,
    options?: { cause?: unknown; input?: string },
  ) {
    super(code, `${command} ${args.join(' ')} exited ${exitCode}: ${stderr.trim() || '(no stderr)'}`, options);
    this.name = 'CommandFailedError';
    this.input = options?.input;
  }
}
