export type PkiErrorCode =
  | 'ERR_PKI_INVALID_IDENTITY'
  | 'ERR_PKI_TRUST_DOMAIN'
  | 'ERR_PKI_INVALID_KEY'
  | 'ERR_PKI_INVALID_CERTIFICATE'
  | 'ERR_PKI_VALIDITY'
  | 'ERR_PKI_NOT_A_CA'
  | 'ERR_PKI_CHAIN'
  | 'ERR_PKI_INVALID_CSR';

/** Every error thrown by @weir/pki; branch on `code`, never on the message. */
export class PkiError extends Error {
  constructor(
    readonly code: PkiErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PkiError';
  }
}
