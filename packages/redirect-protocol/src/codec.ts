import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import {
  AckSchema,
  AddWorkloadSchema,
  DelWorkloadSchema,
  KeepWorkloadSchema,
  SnapshotSentSchema,
  WorkloadInfoSchema,
  type WorkloadRequest,
  Version,
  WorkloadRequestSchema,
  WorkloadResponseSchema,
  ZdsHelloSchema,
} from './gen/zds_pb.js';
import { ZdsError, ZdsProtocolError } from './errors.js';

/** Istio reads each record into a 1024-byte buffer; anything larger would be cut. */
export const MAX_RECORD_BYTES = 1024;

export interface WorkloadInfo {
  name: string;
  namespace: string;
  serviceAccount: string;
}

/** agent -> ztunnel, one per record. Only `add` carries an fd (the pod netns). */
export type ZdsRequest =
  | { kind: 'add'; uid: string; workloadInfo: WorkloadInfo }
  | { kind: 'keep'; uid: string }
  | { kind: 'del'; uid: string }
  | { kind: 'snapshotSent' };

function encode<D extends DescMessage>(schema: D, msg: MessageShape<D>, what: string): Uint8Array {
  const bytes = toBinary(schema, msg);
  if (bytes.length > MAX_RECORD_BYTES) {
    throw new ZdsError(
      'ERR_ZDS_RECORD_TOO_LARGE',
      `${what} encodes to ${bytes.length} bytes, over the ${MAX_RECORD_BYTES}-byte ZDS record limit`,
    );
  }
  return bytes;
}

function decode<D extends DescMessage>(schema: D, data: Uint8Array, what: string): MessageShape<D> {
  if (data.length === 0 || data.length > MAX_RECORD_BYTES) {
    throw new ZdsProtocolError(
      'record-size',
      `${what} record of ${data.length} bytes; a ZDS record is 1..${MAX_RECORD_BYTES} bytes`,
    );
  }
  try {
    return fromBinary(schema, data);
  } catch (err) {
    throw new ZdsProtocolError(
      'malformed',
      `${what} record of ${data.length} bytes is not a valid ${schema.typeName}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

function expectFds(fdCount: number, want: number, what: string): void {
  if (fdCount !== want) {
    throw new ZdsProtocolError('fd', `${what} record carried ${fdCount} fds; it must carry exactly ${want}`);
  }
}

export function encodeHello(version: Version = Version.V1): Uint8Array {
  return encode(ZdsHelloSchema, create(ZdsHelloSchema, { version }), 'ZdsHello');
}

/** Accepts only `ZdsHello{V1}` without fds; the agent's first read on every connection. */
export function decodeHello(data: Uint8Array, fdCount: number): { version: Version } {
  const hello = decode(ZdsHelloSchema, data, 'ZdsHello');
  expectFds(fdCount, 0, 'ZdsHello');
  if (hello.version !== Version.V1) {
    throw new ZdsProtocolError('bad-version', `ZdsHello version ${hello.version}; only V1 (1) is spoken`);
  }
  return { version: hello.version };
}

export function encodeRequest(req: ZdsRequest): Uint8Array {
  let payload: WorkloadRequest['payload'];
  switch (req.kind) {
    case 'add':
      payload = {
        case: 'add',
        value: create(AddWorkloadSchema, { uid: req.uid, workloadInfo: create(WorkloadInfoSchema, req.workloadInfo) }),
      };
      break;
    case 'keep':
      payload = { case: 'keep', value: create(KeepWorkloadSchema, { uid: req.uid }) };
      break;
    case 'del':
      payload = { case: 'del', value: create(DelWorkloadSchema, { uid: req.uid }) };
      break;
    case 'snapshotSent':
      payload = { case: 'snapshotSent', value: create(SnapshotSentSchema) };
      break;
  }
  const msg = create(WorkloadRequestSchema, { payload });
  return encode(WorkloadRequestSchema, msg, `WorkloadRequest ${req.kind}`);
}

function requireUid(uid: string, what: string): string {
  if (uid === '') throw new ZdsProtocolError('missing-field', `${what} has an empty uid`);
  return uid;
}

/**
 * Validates one agent -> ztunnel record: size, a known oneof case, required fields, and the fd rule
 * (exactly one on Add, none on anything else). Throws only ZdsProtocolError.
 */
export function decodeRequest(data: Uint8Array, fdCount: number): ZdsRequest {
  const msg = decode(WorkloadRequestSchema, data, 'WorkloadRequest');
  const p = msg.payload;
  switch (p.case) {
    case 'add': {
      expectFds(fdCount, 1, 'AddWorkload');
      const uid = requireUid(p.value.uid, 'AddWorkload');
      const info = p.value.workloadInfo;
      if (info === undefined) {
        throw new ZdsProtocolError('missing-field', `AddWorkload uid=${uid} has no workload_info`);
      }
      return {
        kind: 'add',
        uid,
        workloadInfo: { name: info.name, namespace: info.namespace, serviceAccount: info.serviceAccount },
      };
    }
    case 'keep':
      expectFds(fdCount, 0, 'KeepWorkload');
      return { kind: 'keep', uid: requireUid(p.value.uid, 'KeepWorkload') };
    case 'del':
      expectFds(fdCount, 0, 'DelWorkload');
      return { kind: 'del', uid: requireUid(p.value.uid, 'DelWorkload') };
    case 'snapshotSent':
      expectFds(fdCount, 0, 'SnapshotSent');
      return { kind: 'snapshotSent' };
    default:
      throw new ZdsProtocolError(
        'unknown-payload',
        `WorkloadRequest of ${data.length} bytes has no known payload (add=1, del=2, snapshot_sent=3, keep=5)`,
      );
  }
}

/** `error` empty (the default) is an ack, non-empty a nack. */
export function encodeAck(error = ''): Uint8Array {
  const msg = create(WorkloadResponseSchema, { payload: { case: 'ack', value: create(AckSchema, { error }) } });
  return encode(WorkloadResponseSchema, msg, 'WorkloadResponse ack');
}

export function decodeAck(data: Uint8Array, fdCount: number): { error: string } {
  const msg = decode(WorkloadResponseSchema, data, 'WorkloadResponse');
  if (msg.payload.case !== 'ack') {
    throw new ZdsProtocolError(
      'unknown-payload',
      `WorkloadResponse of ${data.length} bytes has no known payload (ack=1)`,
    );
  }
  expectFds(fdCount, 0, 'WorkloadResponse');
  return { error: msg.payload.value.error };
}
