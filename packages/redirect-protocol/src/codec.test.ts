import { create, toBinary } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import {
  MAX_RECORD_BYTES,
  decodeAck,
  decodeHello,
  decodeRequest,
  encodeAck,
  encodeHello,
  encodeRequest,
  type ZdsRequest,
} from './codec.js';
import { ZdsError, ZdsProtocolError, type ZdsProtocolViolation } from './errors.js';
import { AddWorkloadSchema, Version, WorkloadRequestSchema } from './gen/zds_pb.js';

function violation(fn: () => unknown): ZdsProtocolViolation {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ZdsProtocolError);
    return (err as ZdsProtocolError).violation;
  }
  throw new Error('expected a ZdsProtocolError');
}

const info = { name: 'web-0', namespace: 'default', serviceAccount: 'web' };

describe('requests', () => {
  const all: ZdsRequest[] = [
    { kind: 'add', uid: 'u1', workloadInfo: info },
    { kind: 'keep', uid: 'u2' },
    { kind: 'del', uid: 'u3' },
    { kind: 'snapshotSent' },
  ];
  it.each(all)('round-trips $kind', (req) => {
    expect(decodeRequest(encodeRequest(req), req.kind === 'add' ? 1 : 0)).toEqual(req);
  });

  it('requires exactly one fd on Add and none elsewhere', () => {
    const add = encodeRequest(all[0]!);
    expect(violation(() => decodeRequest(add, 0))).toBe('fd');
    expect(violation(() => decodeRequest(add, 2))).toBe('fd');
    for (const req of all.slice(1)) {
      expect(violation(() => decodeRequest(encodeRequest(req), 1))).toBe('fd');
    }
  });

  it('rejects Add without workload_info and empty uids', () => {
    const noInfo = toBinary(
      WorkloadRequestSchema,
      create(WorkloadRequestSchema, { payload: { case: 'add', value: create(AddWorkloadSchema, { uid: 'x' }) } }),
    );
    expect(violation(() => decodeRequest(noInfo, 1))).toBe('missing-field');
    expect(violation(() => decodeRequest(encodeRequest({ kind: 'del', uid: '' }), 0))).toBe('missing-field');
  });

  it('rejects empty, oversized, garbage and unknown-tag records', () => {
    expect(violation(() => decodeRequest(new Uint8Array(0), 0))).toBe('record-size');
    expect(violation(() => decodeRequest(new Uint8Array(MAX_RECORD_BYTES + 1), 0))).toBe('record-size');
    expect(violation(() => decodeRequest(Buffer.from('ffffffffff', 'hex'), 0))).toBe('malformed');
    // field 4 (unused in the oneof), length-delimited, empty
    expect(violation(() => decodeRequest(Buffer.from('2200', 'hex'), 0))).toBe('unknown-payload');
    // a truncated Add: claims 10 bytes, carries 2
    expect(violation(() => decodeRequest(Buffer.from('0a0a0a01', 'hex'), 1))).toBe('malformed');
    // invalid UTF-8 in a KeepWorkload uid
    expect(violation(() => decodeRequest(Buffer.from('2a040a02c328', 'hex'), 0))).toBe('malformed');
  });

  it('refuses to encode a record over 1024 bytes', () => {
    const err = (() => {
      try {
        encodeRequest({ kind: 'del', uid: 'x'.repeat(MAX_RECORD_BYTES) });
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(ZdsError);
    expect((err as ZdsError).code).toBe('ERR_ZDS_RECORD_TOO_LARGE');
  });
});

describe('hello', () => {
  it('accepts V1 only, without fds', () => {
    expect(decodeHello(encodeHello(), 0)).toEqual({ version: Version.V1 });
    expect(violation(() => decodeHello(encodeHello(Version.NOT_USED), 0))).toBe('record-size');
    expect(violation(() => decodeHello(Buffer.from('0800', 'hex'), 0))).toBe('bad-version');
    expect(violation(() => decodeHello(Buffer.from('0802', 'hex'), 0))).toBe('bad-version');
    expect(violation(() => decodeHello(encodeHello(), 1))).toBe('fd');
  });
});

describe('ack', () => {
  it('round-trips ack and nack', () => {
    expect(decodeAck(encodeAck(), 0)).toEqual({ error: '' });
    expect(decodeAck(encodeAck('bind failed'), 0)).toEqual({ error: 'bind failed' });
  });
  it('rejects a response without payload and one with fds', () => {
    expect(violation(() => decodeAck(Buffer.from('1200', 'hex'), 0))).toBe('unknown-payload');
    expect(violation(() => decodeAck(encodeAck(), 1))).toBe('fd');
  });
});
