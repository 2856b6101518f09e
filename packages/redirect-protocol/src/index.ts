export { ZdsClient, type ZdsClientOptions } from './client.js';
export type { ZdsAddEvent, ZdsHandler } from './client-session.js';
export {
  MAX_RECORD_BYTES,
  decodeAck,
  decodeHello,
  decodeRequest,
  encodeAck,
  encodeHello,
  encodeRequest,
  type WorkloadInfo,
  type ZdsRequest,
} from './codec.js';
export {
  ZdsError,
  ZdsNackError,
  ZdsNotConnectedError,
  ZdsProtocolError,
  type ZdsErrorCode,
  type ZdsProtocolViolation,
} from './errors.js';
export { Version } from './gen/zds_pb.js';
export type { ZdsLogger } from './logger.js';
export {
  DEFAULT_ZDS_PATH,
  ZdsServer,
  type ZdsConnectionInfo,
  type ZdsServerEvents,
  type ZdsServerOptions,
} from './server.js';
