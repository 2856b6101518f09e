import { describe, expect, it } from 'vitest';
import { rng } from '../../test/h2-peer.js';
import { H2ProtocolError } from '../errors.js';
import {
  CLIENT_PREFACE,
  FrameReader,
  FrameType,
  Flags,
  encodeDataHeader,
  encodeFrame,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodePriority,
  encodeRstStream,
  encodeSettings,
  encodeSettingsAck,
  encodeWindowUpdate,
} from './frames.js';
import type { DataFrame, Frame, FrameReaderOptions } from './frames.js';
import { HpackEncoder } from './hpack.js';

/** A reader that records frames (DATA pieces joined per frame) and stream errors. */
function recorder(options: FrameReaderOptions = {}): { reader: FrameReader; frames: Frame[]; pieces: DataFrame[]; streamErrors: H2ProtocolError[] } {
  const frames: Frame[] = [];
  const pieces: DataFrame[] = [];
  const streamErrors: H2ProtocolError[] = [];
  const reader = new FrameReader(
    {
      frame(f) {
        if (f.type !== FrameType.DATA) {
          frames.push(f);
          return;
        }
        pieces.push(f);
        const last = frames.at(-1);
        if (!f.first && last?.type === FrameType.DATA && last.streamId === f.streamId) {
          last.data = Buffer.concat([last.data, f.data]);
          last.endStream = f.endStream;
        } else frames.push({ ...f, data: Buffer.from(f.data) });
      },
      streamError(e) {
        streamErrors.push(e);
      },
    },
    options,
  );
  return { reader, frames, pieces, streamErrors };
}

function h2error(fn: () => unknown): H2ProtocolError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(H2ProtocolError);
    return err as H2ProtocolError;
  }
  throw new Error('expected an H2ProtocolError, nothing was thrown');
}

const u32 = (n: number): number[] => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
const frame = (type: number, flags: number, streamId: number, payload: number[] | Buffer = []): Buffer => encodeFrame(type, flags, streamId, Buffer.from(payload));

const block1 = new HpackEncoder().encode([':method', 'CONNECT', ':authority', '10.0.0.1:8080', 'baggage', 'k8s.namespace.name=default,'.repeat(6)]);
const block3 = Buffer.from([0x82, 0x86, 0x84]);

/** A client's byte stream exercising every frame type, flag and the joining of CONTINUATION. */
const STREAM = Buffer.concat([
  CLIENT_PREFACE,
  encodeSettings({ headerTableSize: 4096, enablePush: 0, maxConcurrentStreams: 100, initialWindowSize: 4 << 20, maxFrameSize: 16384, maxHeaderListSize: 16384, enableConnectProtocol: 1 }),
  encodeSettingsAck(),
  encodeWindowUpdate(0, 12345),
  encodeHeaders(1, block1, false, 50),
  // HEADERS with PADDED and PRIORITY: pad 4, dependency 1 exclusive, weight 15.
  frame(FrameType.HEADERS, Flags.END_HEADERS | Flags.PADDED | Flags.PRIORITY, 3, [4, ...u32(0x80000001), 15, ...block3, 0, 0, 0, 0]),
  encodeDataHeader(1, 5, false),
  Buffer.from('hello'),
  frame(FrameType.DATA, Flags.PADDED | Flags.END_STREAM, 1, [3, ...Buffer.from('world'), 0, 0, 0]),
  frame(0x42, 0xff, 7, Buffer.alloc(10, 0xee)), // unknown type: ignored
  encodePriority(3, { exclusive: false, dependency: 1, weight: 15 }),
  encodePing(Buffer.from('12345678'), false),
  encodeRstStream(3, 8),
  encodeDataHeader(5, 0, true),
  encodeGoaway(5, 0, Buffer.from('bye')),
]);

const EXPECTED: Frame[] = [
  {
    type: FrameType.SETTINGS,
    streamId: 0,
    ack: false,
    settings: { headerTableSize: 4096, enablePush: 0, maxConcurrentStreams: 100, initialWindowSize: 4 << 20, maxFrameSize: 16384, maxHeaderListSize: 16384, enableConnectProtocol: 1 },
  },
  { type: FrameType.SETTINGS, streamId: 0, ack: true, settings: {} },
  { type: FrameType.WINDOW_UPDATE, streamId: 0, increment: 12345 },
  { type: FrameType.HEADERS, streamId: 1, block: block1, endStream: false, priority: undefined },
  { type: FrameType.HEADERS, streamId: 3, block: block3, endStream: false, priority: { exclusive: true, dependency: 1, weight: 15 } },
  { type: FrameType.DATA, streamId: 1, data: Buffer.from('hello'), first: true, flowLength: 5, endStream: false },
  { type: FrameType.DATA, streamId: 1, data: Buffer.from('world'), first: true, flowLength: 9, endStream: true },
  { type: FrameType.PRIORITY, streamId: 3, priority: { exclusive: false, dependency: 1, weight: 15 } },
  { type: FrameType.PING, streamId: 0, ack: false, opaque: Buffer.from('12345678') },
  { type: FrameType.RST_STREAM, streamId: 3, errorCode: 8 },
  { type: FrameType.DATA, streamId: 5, data: Buffer.alloc(0), first: true, flowLength: 0, endStream: true },
  { type: FrameType.GOAWAY, streamId: 0, lastStreamId: 5, errorCode: 0, debugData: Buffer.from('bye') },
];

describe('FrameReader', () => {
  it('parses every frame type from one chunk', () => {
    const r = recorder({ expectPreface: true });
    r.reader.push(STREAM);
    expect(r.frames).toEqual(EXPECTED);
    expect(r.streamErrors).toEqual([]);
    // The HEADERS spanned CONTINUATION frames: 50-byte fragments.
    expect(block1.length).toBeGreaterThan(100);
  });

  it('gives the same frames for a split at every byte boundary, and byte by byte', () => {
    for (let i = 0; i <= STREAM.length; i++) {
      const r = recorder({ expectPreface: true });
      r.reader.push(STREAM.subarray(0, i));
      r.reader.push(STREAM.subarray(i));
      expect(r.frames, `split at ${i}`).toEqual(EXPECTED);
    }
    const r = recorder({ expectPreface: true });
    for (let i = 0; i < STREAM.length; i++) r.reader.push(STREAM.subarray(i, i + 1));
    expect(r.frames).toEqual(EXPECTED);
    // Every DATA byte arrived as its own piece: nothing was held back.
    expect(r.pieces.filter((p) => p.streamId === 1).reduce((n, p) => n + p.data.length, 0)).toBe(10);
  });

  it('hands DATA over as views of the pushed chunks, never copies', () => {
    const payload = Buffer.alloc(16384, 7);
    const chunk = Buffer.concat([encodeDataHeader(1, payload.length, true), payload]);
    const r = recorder();
    r.reader.push(chunk);
    const [whole] = r.pieces;
    expect(whole?.data.buffer).toBe(chunk.buffer);
    expect(whole?.data.byteOffset).toBe(chunk.byteOffset + 9);
    expect(whole?.data.length).toBe(16384);
    // Split over three "TLS records": three pieces, each a view of its record.
    const r2 = recorder();
    const records = [chunk.subarray(0, 5000), chunk.subarray(5000, 12000), chunk.subarray(12000)];
    for (const rec of records) r2.reader.push(rec);
    expect(r2.pieces.map((p) => [p.data.buffer === chunk.buffer, p.data.byteOffset - chunk.byteOffset, p.data.length, p.first, p.flowLength, p.endStream])).toEqual([
      [true, 9, 4991, true, 16384, false],
      [true, 5000, 7000, false, 0, false],
      [true, 12000, 4393, false, 0, true],
    ]);
  });

  it('strips DATA padding wherever the chunks split it', () => {
    const f = frame(FrameType.DATA, Flags.PADDED, 1, [5, ...Buffer.from('abc'), 1, 2, 3, 4, 5]);
    for (let i = 9; i <= f.length; i++) {
      const r = recorder();
      r.reader.push(f.subarray(0, i));
      r.reader.push(f.subarray(i));
      expect(r.frames).toEqual([{ type: FrameType.DATA, streamId: 1, data: Buffer.from('abc'), first: true, flowLength: 9, endStream: false }]);
    }
    // All padding (pad = length − 1) is allowed: an empty piece that still counts 4 flow-control bytes.
    const r = recorder();
    r.reader.push(frame(FrameType.DATA, Flags.PADDED, 1, [3, 0, 0, 0]));
    expect(r.pieces).toEqual([{ type: FrameType.DATA, streamId: 1, data: Buffer.alloc(0), first: true, flowLength: 4, endStream: false }]);
  });

  it('accepts frames up to MAX_FRAME_SIZE, larger after setMaxFrameSize, and gathers split control frames', () => {
    const r = recorder();
    r.reader.setMaxFrameSize(100000);
    const big = Buffer.alloc(100000, 1);
    r.reader.push(Buffer.concat([encodeDataHeader(1, big.length, false), big]));
    expect(r.pieces[0]?.data.length).toBe(100000);
    const goaway = encodeGoaway(1, 2, Buffer.alloc(5000, 0x61));
    r.reader.push(goaway.subarray(0, 3000));
    r.reader.push(goaway.subarray(3000));
    expect(r.frames.at(-1)).toEqual({ type: FrameType.GOAWAY, streamId: 0, lastStreamId: 1, errorCode: 2, debugData: Buffer.alloc(5000, 0x61) });
    expect(() => r.reader.setMaxFrameSize(16383)).toThrow(RangeError);
  });

  it('serializes HEADERS into CONTINUATION frames at the peer MAX_FRAME_SIZE', () => {
    const block = Buffer.alloc(40000, 0x82);
    const wire = encodeHeaders(9, block, true, 16384);
    const kinds: [number, number, number][] = [];
    for (let o = 0; o < wire.length; ) {
      const len = wire.readUIntBE(o, 3);
      kinds.push([wire[o + 3] ?? -1, wire[o + 4] ?? -1, len]);
      o += 9 + len;
    }
    expect(kinds).toEqual([
      [FrameType.HEADERS, Flags.END_STREAM, 16384],
      [FrameType.CONTINUATION, 0, 16384],
      [FrameType.CONTINUATION, Flags.END_HEADERS, 7232],
    ]);
    const r = recorder();
    r.reader.push(wire);
    expect(r.frames).toEqual([{ type: FrameType.HEADERS, streamId: 9, block, endStream: true, priority: undefined }]);
    expect(encodeHeaders(1, Buffer.alloc(0), false).toString('hex')).toBe('000000010400000001');
  });

  it('refuses to send SETTINGS it would reject, and PING payloads that are not 8 bytes', () => {
    expect(h2error(() => encodeSettings({ maxFrameSize: 100 })).message).toMatch(/local SETTINGS MAX_FRAME_SIZE=100/);
    expect(() => encodePing(Buffer.alloc(7), false)).toThrow(RangeError);
  });
});

type Rejection = [name: string, bytes: Buffer, h2Code: string, streamId: number, message: RegExp];
const CONNECTION_ERRORS: Rejection[] = [
  ['DATA on stream 0', frame(0, 0, 0, [1]), 'PROTOCOL_ERROR', 0, /DATA frame on stream 0/],
  ['DATA padding ≥ length', frame(0, Flags.PADDED, 1, [3, 0, 0]), 'PROTOCOL_ERROR', 1, /padding 3 is not less than its length 3/],
  ['DATA PADDED but empty', frame(0, Flags.PADDED, 1), 'FRAME_SIZE_ERROR', 1, /PADDED but empty/],
  ['HEADERS on stream 0', frame(1, Flags.END_HEADERS, 0, [0x82]), 'PROTOCOL_ERROR', 0, /HEADERS frame on stream 0/],
  ['HEADERS padding too long', frame(1, Flags.END_HEADERS | Flags.PADDED, 1, [5, 0x82, 0]), 'PROTOCOL_ERROR', 1, /padding 5 exceeds the 2 bytes/],
  ['HEADERS PADDED but empty', frame(1, Flags.END_HEADERS | Flags.PADDED, 1), 'FRAME_SIZE_ERROR', 1, /has length 0, its PADDED\/PRIORITY fields need 1/],
  ['HEADERS PADDED+PRIORITY, padding into the priority', frame(1, Flags.END_HEADERS | Flags.PADDED | Flags.PRIORITY, 1, [2, 0, 0, 0, 0, 16, 0]), 'PROTOCOL_ERROR', 1, /padding 2 exceeds the 1 bytes/],
  ['HEADERS PRIORITY too short', frame(1, Flags.END_HEADERS | Flags.PRIORITY, 1, [0, 0, 0]), 'FRAME_SIZE_ERROR', 1, /has length 3, its PADDED\/PRIORITY fields need 5/],
  ['PRIORITY on stream 0', frame(2, 0, 0, [0, 0, 0, 1, 0]), 'PROTOCOL_ERROR', 0, /PRIORITY frame on stream 0/],
  ['RST_STREAM on stream 0', frame(3, 0, 0, u32(8)), 'PROTOCOL_ERROR', 0, /RST_STREAM frame on stream 0/],
  ['RST_STREAM of 3 bytes', frame(3, 0, 1, [0, 0, 8]), 'FRAME_SIZE_ERROR', 1, /length 3, must be 4/],
  ['SETTINGS on a stream', frame(4, 0, 1), 'PROTOCOL_ERROR', 1, /SETTINGS frame on stream 1 \(must be stream 0\)/],
  ['SETTINGS ACK with payload', frame(4, Flags.ACK, 0, [0, 1, 0, 0, 0, 0]), 'FRAME_SIZE_ERROR', 0, /ACK has length 6/],
  ['SETTINGS of 5 bytes', frame(4, 0, 0, [0, 1, 0, 0, 0]), 'FRAME_SIZE_ERROR', 0, /not a multiple of 6/],
  ['ENABLE_PUSH=2', frame(4, 0, 0, [0, 2, ...u32(2)]), 'PROTOCOL_ERROR', 0, /ENABLE_PUSH=2/],
  ['INITIAL_WINDOW_SIZE=2^31', frame(4, 0, 0, [0, 4, ...u32(2 ** 31)]), 'FLOW_CONTROL_ERROR', 0, /INITIAL_WINDOW_SIZE=2147483648/],
  ['MAX_FRAME_SIZE=16383', frame(4, 0, 0, [0, 5, ...u32(16383)]), 'PROTOCOL_ERROR', 0, /MAX_FRAME_SIZE=16383/],
  ['MAX_FRAME_SIZE=2^24', frame(4, 0, 0, [0, 5, ...u32(2 ** 24)]), 'PROTOCOL_ERROR', 0, /MAX_FRAME_SIZE=16777216/],
  ['ENABLE_CONNECT_PROTOCOL=2', frame(4, 0, 0, [0, 8, ...u32(2)]), 'PROTOCOL_ERROR', 0, /ENABLE_CONNECT_PROTOCOL=2/],
  ['PUSH_PROMISE', frame(5, Flags.END_HEADERS, 1, [...u32(2), 0x82]), 'PROTOCOL_ERROR', 1, /PUSH_PROMISE received/],
  ['PING on a stream', frame(6, 0, 1, Buffer.alloc(8)), 'PROTOCOL_ERROR', 1, /must be stream 0/],
  ['PING of 7 bytes', frame(6, 0, 0, Buffer.alloc(7)), 'FRAME_SIZE_ERROR', 0, /length 7, must be 8/],
  ['GOAWAY on a stream', frame(7, 0, 1, Buffer.alloc(8)), 'PROTOCOL_ERROR', 1, /must be stream 0/],
  ['GOAWAY of 7 bytes', frame(7, 0, 0, Buffer.alloc(7)), 'FRAME_SIZE_ERROR', 0, /at least 8/],
  ['WINDOW_UPDATE of 5 bytes', frame(8, 0, 1, Buffer.alloc(5)), 'FRAME_SIZE_ERROR', 1, /length 5, must be 4/],
  ['WINDOW_UPDATE 0 on the connection', frame(8, 0, 0, u32(0)), 'PROTOCOL_ERROR', 0, /increment 0/],
  ['CONTINUATION without HEADERS', frame(9, Flags.END_HEADERS, 1, [0x82]), 'PROTOCOL_ERROR', 1, /without a HEADERS frame/],
  ['DATA inside a field block', Buffer.concat([frame(1, 0, 1, [0x82]), frame(0, 0, 1, [1])]), 'PROTOCOL_ERROR', 1, /DATA frame on stream 1 inside the field block of stream 1/],
  ['CONTINUATION of another stream', Buffer.concat([frame(1, 0, 1, [0x82]), frame(9, 4, 3, [0x84])]), 'PROTOCOL_ERROR', 3, /CONTINUATION frame on stream 3 inside/],
  ['unknown type inside a field block', Buffer.concat([frame(1, 0, 1, [0x82]), frame(0x42, 0, 1)]), 'PROTOCOL_ERROR', 1, /0x42 frame on stream 1 inside/],
  ['a frame above MAX_FRAME_SIZE', encodeDataHeader(1, 16385, false), 'FRAME_SIZE_ERROR', 1, /length 16385, above our MAX_FRAME_SIZE 16384/],
  ['CONTINUATION flood', Buffer.concat([frame(1, 0, 1, Buffer.alloc(16384)), ...Array.from({ length: 4 }, () => frame(9, 0, 1, Buffer.alloc(16384)))]), 'ENHANCE_YOUR_CALM', 1, /reaches 81920 bytes, above 65536/],
  ['a single HEADERS block above the cap', frame(1, Flags.END_HEADERS, 1, Buffer.alloc(16384)), 'ENHANCE_YOUR_CALM', 1, /reaches 16384 bytes, above 1000/],
];

describe('FrameReader rejections', () => {
  for (const [name, bytes, h2Code, streamId, message] of CONNECTION_ERRORS) {
    it(`${name}: connection ${h2Code}, at any split`, () => {
      const options = name.includes('single HEADERS') ? { maxHeaderBlockSize: 1000 } : {};
      for (let i = 0; i <= bytes.length; i += Math.max(1, Math.floor(bytes.length / 40))) {
        const r = recorder(options);
        const e = h2error(() => {
          r.reader.push(bytes.subarray(0, i));
          r.reader.push(bytes.subarray(i));
        });
        expect([e.h2Code, e.scope, e.streamId]).toEqual([h2Code, 'connection', streamId]);
        expect(e.message).toMatch(message);
        // A failed reader stays failed.
        expect(h2error(() => r.reader.push(encodeSettingsAck()))).toBe(e);
      }
    });
  }

  it('a bad client preface names the byte', () => {
    const r = recorder({ expectPreface: true });
    r.reader.push(CLIENT_PREFACE.subarray(0, 10));
    const e = h2error(() => r.reader.push(Buffer.from('HTTP/1.1 GET /')));
    expect([e.h2Code, e.scope]).toEqual(['PROTOCOL_ERROR', 'connection']);
    expect(e.message).toBe('client preface byte 10 is 0x48, expected 0x2f');
  });

  it('stream errors are reported and the reader goes on', () => {
    const r = recorder();
    r.reader.push(
      Buffer.concat([
        frame(FrameType.PRIORITY, 0, 3, [0, 0, 0, 1]), // 4 bytes: stream FRAME_SIZE_ERROR
        frame(FrameType.PRIORITY, 0, 5, [...u32(5), 16]), // depends on itself
        frame(FrameType.WINDOW_UPDATE, 0, 7, u32(0)), // increment 0 on a stream
        frame(FrameType.HEADERS, Flags.END_HEADERS | Flags.PRIORITY, 9, [...u32(9), 16, 0x82]), // depends on itself
        frame(FrameType.HEADERS, Flags.PRIORITY, 11, [...u32(11), 16, 0x82]),
        frame(FrameType.CONTINUATION, Flags.END_HEADERS, 11, [0x84]),
        frame(FrameType.SETTINGS, 0, 0, [0, 0x99, ...u32(7)]), // unknown setting: ignored
      ]),
    );
    expect(r.streamErrors.map((e) => [e.h2Code, e.scope, e.streamId, e.message])).toEqual([
      ['FRAME_SIZE_ERROR', 'stream', 3, 'PRIORITY frame on stream 3 has length 4, must be 5'],
      ['PROTOCOL_ERROR', 'stream', 5, 'stream 5 depends on itself (priority)'],
      ['PROTOCOL_ERROR', 'stream', 7, 'WINDOW_UPDATE frame on stream 7 has increment 0'],
      ['PROTOCOL_ERROR', 'stream', 9, 'stream 9 depends on itself (priority)'],
      ['PROTOCOL_ERROR', 'stream', 11, 'stream 11 depends on itself (priority)'],
    ]);
    // The self-dependent HEADERS are still delivered: their blocks must reach the HPACK decoder.
    expect(r.frames.map((f) => [f.type, f.streamId])).toEqual([
      [FrameType.HEADERS, 9],
      [FrameType.HEADERS, 11],
      [FrameType.SETTINGS, 0],
    ]);
    expect(r.frames[1]).toMatchObject({ block: Buffer.from([0x82, 0x84]) });
    expect(r.frames[2]).toMatchObject({ settings: {} });
  });
});

describe('FrameReader fuzz', () => {
  it('throws nothing but H2ProtocolError on garbage, mutated streams and random chunking', () => {
    const r = rng(20261130);
    const body = STREAM.subarray(CLIENT_PREFACE.length);
    const started = Date.now();
    let failed = 0;
    let clean = 0;
    for (let i = 0; i < 4000; i++) {
      let input: Buffer;
      if (i % 4 === 0) input = Buffer.from(Array.from({ length: Math.floor(r() * 200) }, () => Math.floor(r() * 256)));
      else {
        input = Buffer.from(body);
        const flips = Math.floor(r() * 4);
        for (let k = 0; k < flips; k++) {
          const at = Math.floor(r() * input.length);
          input[at] = r() < 0.5 ? Math.floor(r() * 256) : (input[at] ?? 0) ^ (1 << Math.floor(r() * 8));
        }
      }
      const reader = new FrameReader({ frame() {}, streamError(e) { expect(e).toBeInstanceOf(H2ProtocolError); } }, { maxHeaderBlockSize: 4096 });
      try {
        for (let p = 0; p < input.length; ) {
          const n = 1 + Math.floor(r() * 64);
          reader.push(input.subarray(p, p + n));
          p += n;
        }
        clean++;
      } catch (err) {
        if (!(err instanceof H2ProtocolError)) throw err;
        expect(err.scope).toBe('connection');
        failed++;
      }
    }
    expect(failed).toBeGreaterThan(500);
    expect(clean).toBeGreaterThan(500);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
