// Byte compatibility against an encoder no one here wrote: Debian's protoc, fed our zds.proto.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import {
  AckSchema,
  AddWorkloadSchema,
  DelWorkloadSchema,
  KeepWorkloadSchema,
  SnapshotSentSchema,
  Version,
  WorkloadInfoSchema,
  WorkloadRequestSchema,
  WorkloadResponseSchema,
  ZdsHelloSchema,
} from '../src/gen/zds_pb.js';
import {
  decodeAck,
  decodeHello,
  decodeRequest,
  encodeAck,
  encodeHello,
  encodeRequest,
  type ZdsRequest,
} from '../src/codec.js';

const protoDir = fileURLToPath(new URL('../proto', import.meta.url));

function protoc(mode: 'encode' | 'decode', type: string, input: Uint8Array | string): Buffer {
  try {
    return execFileSync('protoc', [`--${mode}=istio.workload.zds.${type}`, `-I${protoDir}`, 'zds.proto'], {
      input,
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('protoc not found: install Debian protobuf-compiler (scripts/setup-host.sh)');
    }
    throw err;
  }
}

const uni = 'pod-é-日本-🚀';

// One case per message type; text is protoc's text format for the same value.
const cases: { schema: DescMessage; type: string; init: MessageInitShape<DescMessage>; text: string }[] = [
  { schema: ZdsHelloSchema, type: 'ZdsHello', init: { version: Version.V1 }, text: 'version: V1' },
  { schema: ZdsHelloSchema, type: 'ZdsHello', init: { version: Version.NOT_USED }, text: '' },
  {
    schema: WorkloadInfoSchema,
    type: 'WorkloadInfo',
    init: { name: 'web-0', namespace: 'default', serviceAccount: 'sa' },
    text: 'name: "web-0" namespace: "default" service_account: "sa"',
  },
  {
    schema: AddWorkloadSchema,
    type: 'AddWorkload',
    init: { uid: uni, workloadInfo: { name: 'a', namespace: 'b', serviceAccount: 'c' } },
    text: `uid: "${uni}" workload_info { name: "a" namespace: "b" service_account: "c" }`,
  },
  { schema: KeepWorkloadSchema, type: 'KeepWorkload', init: { uid: 'k-1' }, text: 'uid: "k-1"' },
  { schema: DelWorkloadSchema, type: 'DelWorkload', init: { uid: 'd-1' }, text: 'uid: "d-1"' },
  { schema: SnapshotSentSchema, type: 'SnapshotSent', init: {}, text: '' },
  { schema: AckSchema, type: 'Ack', init: {}, text: '' },
  { schema: AckSchema, type: 'Ack', init: { error: 'bind: address in use' }, text: 'error: "bind: address in use"' },
  {
    schema: WorkloadRequestSchema,
    type: 'WorkloadRequest',
    init: { payload: { case: 'keep', value: { uid: 'k-2' } } },
    text: 'keep { uid: "k-2" }',
  },
  { schema: WorkloadRequestSchema, type: 'WorkloadRequest', init: {}, text: '' },
  {
    schema: WorkloadResponseSchema,
    type: 'WorkloadResponse',
    init: { payload: { case: 'ack', value: {} } },
    text: 'ack { }',
  },
  { schema: WorkloadResponseSchema, type: 'WorkloadResponse', init: {}, text: '' },
];

describe('every message type matches protoc byte for byte', () => {
  for (const c of cases) {
    it(`${c.type} ${c.text || '(empty)'}`, () => {
      const ours = toBinary(c.schema, create(c.schema, c.init));
      const theirs = protoc('encode', c.type, c.text);
      expect(Buffer.from(ours).toString('hex')).toBe(theirs.toString('hex'));
      // and back: protoc reads our bytes, we read protoc's bytes
      const decodedText = protoc('decode', c.type, ours).toString();
      expect(protoc('encode', c.type, decodedText).toString('hex')).toBe(theirs.toString('hex'));
      expect(toBinary(c.schema, fromBinary(c.schema, theirs))).toEqual(ours);
    });
  }
});

describe('the codec records match protoc', () => {
  const requests: [ZdsRequest, string][] = [
    [
      { kind: 'add', uid: 'uid-1', workloadInfo: { name: 'web-0', namespace: 'ns', serviceAccount: 'default' } },
      'add { uid: "uid-1" workload_info { name: "web-0" namespace: "ns" service_account: "default" } }',
    ],
    [{ kind: 'keep', uid: 'uid-2' }, 'keep { uid: "uid-2" }'],
    [{ kind: 'del', uid: 'uid-3' }, 'del { uid: "uid-3" }'],
    [{ kind: 'snapshotSent' }, 'snapshot_sent { }'],
  ];
  for (const [req, text] of requests) {
    it(`WorkloadRequest ${req.kind}`, () => {
      const theirs = protoc('encode', 'WorkloadRequest', text);
      expect(Buffer.from(encodeRequest(req)).toString('hex')).toBe(theirs.toString('hex'));
      expect(decodeRequest(theirs, req.kind === 'add' ? 1 : 0)).toEqual(req);
    });
  }

  it('an empty SnapshotSent request is the two bytes 1a 00', () => {
    expect(protoc('encode', 'WorkloadRequest', 'snapshot_sent {}').toString('hex')).toBe('1a00');
  });

  it('ZdsHello V1', () => {
    const theirs = protoc('encode', 'ZdsHello', 'version: V1');
    expect(Buffer.from(encodeHello()).toString('hex')).toBe(theirs.toString('hex'));
    expect(decodeHello(theirs, 0)).toEqual({ version: Version.V1 });
  });

  it('empty ack and nack', () => {
    const ack = protoc('encode', 'WorkloadResponse', 'ack { }');
    expect(ack.toString('hex')).toBe('0a00');
    expect(Buffer.from(encodeAck()).toString('hex')).toBe(ack.toString('hex'));
    expect(decodeAck(ack, 0)).toEqual({ error: '' });
    const nack = protoc('encode', 'WorkloadResponse', 'ack { error: "no room" }');
    expect(Buffer.from(encodeAck('no room')).toString('hex')).toBe(nack.toString('hex'));
    expect(decodeAck(nack, 0)).toEqual({ error: 'no room' });
    expect(protoc('decode', 'WorkloadResponse', encodeAck('no room')).toString()).toBe(
      'ack {\n  error: "no room"\n}\n',
    );
  });

});
