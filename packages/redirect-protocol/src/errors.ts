export type ZdsErrorCode =
  | 'ERR_ZDS_PROTOCOL'
  | 'ERR_ZDS_NACK'
  | 'ERR_ZDS_NOT_CONNECTED'
  | 'ERR_ZDS_ACK_TIMEOUT'
  | 'ERR_ZDS_DISCONNECTED'
  | 'ERR_ZDS_CLOSED'
  | 'ERR_ZDS_RECORD_TOO_LARGE'
  | 'ERR_ZDS_SUPERSEDED'
  | 'ERR_ZDS_NETNS'
  | 'ERR_ZDS_ALREADY_STARTED'
  | 'ERR_ZDS_INVALID_ARGUMENT'
  | 'ERR_ZDS_TRANSPORT';

/** Base class of every error this package throws or reports; branch on `code`. */
export class ZdsError extends Error {
  constructor(
    readonly code: ZdsErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ZdsError';
  }
}

/** What exactly the peer got wrong; stable, for logs and tests. */
export type ZdsProtocolViolation =
  | 'record-size' // empty, truncated or over 1024 bytes
  | 'malformed' // not a decodable protobuf message
  | 'unknown-payload' // no oneof case we know (empty record or a newer tag)
  | 'missing-field' // e.g. Add without uid or workload_info
  | 'bad-version' // ZdsHello not V1
  | 'fd' // an fd where none belongs, none where one must be, or more than one
  | 'sequence' // a valid message at the wrong time
  | 'transport'; // the socket reported a record it could not deliver whole

/** The peer broke the ZDS contract; the connection is closed and re-established. */
export class ZdsProtocolError extends ZdsError {
  constructor(
    readonly violation: ZdsProtocolViolation,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('ERR_ZDS_PROTOCOL', message, options);
    this.name = 'ZdsProtocolError';
  }
}

/** ztunnel answered with `Ack{error}`: it could not take the workload. */
export class ZdsNackError extends ZdsError {
  constructor(
    readonly uid: string | undefined,
    readonly reason: string,
  ) {
    super('ERR_ZDS_NACK', `ztunnel nacked${uid === undefined ? '' : ` workload uid=${uid}`}: ${reason}`);
    this.name = 'ZdsNackError';
  }
}

/** No ztunnel is connected, so the workload was kept for the next snapshot only. */
export class ZdsNotConnectedError extends ZdsError {
  constructor(message: string) {
    super('ERR_ZDS_NOT_CONNECTED', message);
    this.name = 'ZdsNotConnectedError';
  }
}
