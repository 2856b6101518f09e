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
