export type FakeApiServerErrorCode =
  | 'ERR_FAKE_API_NOT_FOUND'
  | 'ERR_FAKE_API_ALREADY_EXISTS'
  | 'ERR_FAKE_API_INVALID'
  | 'ERR_FAKE_API_NOT_LISTENING'
  | 'ERR_FAKE_API_TLS';

/** Every error thrown by @weir/fake-apiserver's test controls; branch on `code`. */
export class FakeApiServerError extends Error {
  constructor(
    readonly code: FakeApiServerErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'FakeApiServerError';
  }
}
