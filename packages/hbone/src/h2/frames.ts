// HTTP/2 framing (RFC 9113 §4, §6): frame serializers and an incremental FrameReader that validates
// each frame's size, stream id and fixed fields. Stream states, flow-control windows and header
// semantics belong to the session on top; this layer only knows frames.
import { H2ProtocolError } from '../errors.js';
import type { H2ErrorCodeName } from '../errors.js';

export const FRAME_HEADER_SIZE = 9;
export const DEFAULT_MAX_FRAME_SIZE = 16384;
export const MAX_MAX_FRAME_SIZE = 16777215;
export const MAX_WINDOW = 0x7fffffff;
/** The client connection preface (RFC 9113 §3.4); a SETTINGS frame follows it. */
export const CLIENT_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flags = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
  PRIORITY: 0x20,
} as const;

export const SettingId = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
  /** RFC 8441 extended CONNECT. */
  ENABLE_CONNECT_PROTOCOL: 0x8,
} as const;

/** The settings a SETTINGS frame carried, last value winning; unknown identifiers are dropped (§6.5.2). */
export interface Settings {
  headerTableSize?: number;
  enablePush?: number;
  maxConcurrentStreams?: number;
  initialWindowSize?: number;
  maxFrameSize?: number;
  maxHeaderListSize?: number;
  enableConnectProtocol?: number;
}

export interface Priority {
  exclusive: boolean;
  dependency: number;
  /** On the wire weight − 1 (0..255); this is the wire value. */
  weight: number;
}

/**
 * A DATA frame, or a piece of one: the reader hands over DATA as it arrives, as subarrays of the
 * chunks pushed in (never copied). `first` marks a frame's first piece, which carries the whole
 * payload length in `flowLength` (padding included: all of it counts against the flow-control
 * windows, §6.1; later pieces have 0); `endStream` is set on the last piece of a frame with
 * END_STREAM. A piece may be empty (an empty frame, a piece of only padding or of the pad length).
 */
export interface DataFrame {
  type: typeof FrameType.DATA;
  streamId: number;
  data: Buffer;
  first: boolean;
  flowLength: number;
  endStream: boolean;
}

/** HEADERS with its CONTINUATION frames joined: `block` is the whole field block (HPACK input). */
export interface HeadersFrame {
  type: typeof FrameType.HEADERS;
  streamId: number;
  block: Buffer;
  endStream: boolean;
  priority: Priority | undefined;
}

export interface PriorityFrame {
  type: typeof FrameType.PRIORITY;
  streamId: number;
  priority: Priority;
}

export interface RstStreamFrame {
  type: typeof FrameType.RST_STREAM;
  streamId: number;
  errorCode: number;
}

export interface SettingsFrame {
  type: typeof FrameType.SETTINGS;
  streamId: 0;
  ack: boolean;
  settings: Settings;
}

export interface PingFrame {
  type: typeof FrameType.PING;
  streamId: 0;
  ack: boolean;
  /** 8 bytes. */
  opaque: Buffer;
}

export interface GoawayFrame {
  type: typeof FrameType.GOAWAY;
  streamId: 0;
  lastStreamId: number;
  errorCode: number;
  debugData: Buffer;
}

export interface WindowUpdateFrame {
  type: typeof FrameType.WINDOW_UPDATE;
  streamId: number;
  increment: number;
}

export type Frame =
  | DataFrame
  | HeadersFrame
  | PriorityFrame
  | RstStreamFrame
  | SettingsFrame
  | PingFrame
  | GoawayFrame
  | WindowUpdateFrame;

function connectionError(code: H2ErrorCodeName, streamId: number, message: string): H2ProtocolError {
  return new H2ProtocolError(code, 'connection', streamId, message);
}

const typeName = (type: number): string => Object.keys(FrameType).find((k) => FrameType[k as keyof typeof FrameType] === type) ?? `0x${type.toString(16)}`;

// ---- serializers ----

const EMPTY = Buffer.alloc(0);

/** Writes a frame header at out[o]. */
export function writeFrameHeader(out: Buffer, o: number, length: number, type: number, flags: number, streamId: number): void {
  out[o] = length >>> 16;
  out[o + 1] = (length >>> 8) & 0xff;
  out[o + 2] = length & 0xff;
  out[o + 3] = type;
  out[o + 4] = flags;
  out.writeUInt32BE(streamId & MAX_WINDOW, o + 5);
}

/** A whole frame: header and a copy of `payload`. */
export function encodeFrame(type: number, flags: number, streamId: number, payload: Uint8Array = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE + payload.length);
  writeFrameHeader(b, 0, payload.length, type, flags, streamId);
  b.set(payload, FRAME_HEADER_SIZE);
  return b;
}

/**
 * The 9-byte header of a DATA frame of `length` bytes: the caller writes the payload after it as is
 * (writev / cork), so DATA is never copied to be framed. Padding is never sent.
 */
export function encodeDataHeader(streamId: number, length: number, endStream: boolean): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  writeFrameHeader(b, 0, length, FrameType.DATA, endStream ? Flags.END_STREAM : 0, streamId);
  return b;
}

/** HEADERS, plus CONTINUATION frames when the block exceeds the peer's SETTINGS_MAX_FRAME_SIZE. */
export function encodeHeaders(streamId: number, block: Buffer, endStream: boolean, maxFrameSize = DEFAULT_MAX_FRAME_SIZE): Buffer {
  const frames = Math.max(1, Math.ceil(block.length / maxFrameSize));
  const out = Buffer.allocUnsafe(frames * FRAME_HEADER_SIZE + block.length);
  let o = 0;
  for (let i = 0, p = 0; i < frames; i++) {
    const n = Math.min(maxFrameSize, block.length - p);
    const last = i === frames - 1 ? Flags.END_HEADERS : 0;
    const flags = i === 0 ? last | (endStream ? Flags.END_STREAM : 0) : last;
    writeFrameHeader(out, o, n, i === 0 ? FrameType.HEADERS : FrameType.CONTINUATION, flags, streamId);
    block.copy(out, o + FRAME_HEADER_SIZE, p, p + n);
    o += FRAME_HEADER_SIZE + n;
    p += n;
  }
  return out;
}

function priorityPayload(out: Buffer, o: number, p: Priority): void {
  out.writeUInt32BE(((p.exclusive ? 0x80000000 : 0) | (p.dependency & MAX_WINDOW)) >>> 0, o);
  out[o + 4] = p.weight;
}

export function encodePriority(streamId: number, priority: Priority): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE + 5);
  writeFrameHeader(b, 0, 5, FrameType.PRIORITY, 0, streamId);
  priorityPayload(b, FRAME_HEADER_SIZE, priority);
  return b;
}

function u32Frame(type: number, flags: number, streamId: number, value: number): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE + 4);
  writeFrameHeader(b, 0, 4, type, flags, streamId);
  b.writeUInt32BE(value >>> 0, FRAME_HEADER_SIZE);
  return b;
}

export function encodeRstStream(streamId: number, errorCode: number): Buffer {
  return u32Frame(FrameType.RST_STREAM, 0, streamId, errorCode);
}

export function encodeWindowUpdate(streamId: number, increment: number): Buffer {
  return u32Frame(FrameType.WINDOW_UPDATE, 0, streamId, increment);
}

const SETTING_FIELDS: readonly [keyof Settings, number][] = [
  ['headerTableSize', SettingId.HEADER_TABLE_SIZE],
  ['enablePush', SettingId.ENABLE_PUSH],
  ['maxConcurrentStreams', SettingId.MAX_CONCURRENT_STREAMS],
  ['initialWindowSize', SettingId.INITIAL_WINDOW_SIZE],
  ['maxFrameSize', SettingId.MAX_FRAME_SIZE],
  ['maxHeaderListSize', SettingId.MAX_HEADER_LIST_SIZE],
  ['enableConnectProtocol', SettingId.ENABLE_CONNECT_PROTOCOL],
];

/** SETTINGS with the given values (validated as the peer would: we must not send what we reject). */
export function encodeSettings(settings: Settings): Buffer {
  checkSettings(settings, 'local');
  const present = SETTING_FIELDS.filter(([k]) => settings[k] !== undefined);
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE + 6 * present.length);
  writeFrameHeader(b, 0, 6 * present.length, FrameType.SETTINGS, 0, 0);
  let o = FRAME_HEADER_SIZE;
  for (const [k, id] of present) {
    b.writeUInt16BE(id, o);
    b.writeUInt32BE(settings[k] ?? 0, o + 2);
    o += 6;
  }
  return b;
}

export function encodeSettingsAck(): Buffer {
  return encodeFrame(FrameType.SETTINGS, Flags.ACK, 0);
}

export function encodePing(opaque: Buffer, ack: boolean): Buffer {
  if (opaque.length !== 8) throw new RangeError(`PING payload must be 8 bytes, got ${opaque.length}`);
  return encodeFrame(FrameType.PING, ack ? Flags.ACK : 0, 0, opaque);
}

export function encodeGoaway(lastStreamId: number, errorCode: number, debugData: Buffer = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE + 8 + debugData.length);
  writeFrameHeader(b, 0, 8 + debugData.length, FrameType.GOAWAY, 0, 0);
  b.writeUInt32BE(lastStreamId & MAX_WINDOW, FRAME_HEADER_SIZE);
  b.writeUInt32BE(errorCode >>> 0, FRAME_HEADER_SIZE + 4);
  debugData.copy(b, FRAME_HEADER_SIZE + 8);
  return b;
}

// ---- payload parsing (non-DATA frames, payload complete) ----

/** §6.5.2 value rules; `side` names who sent them in the message. */
function checkSettings(s: Settings, side: 'peer' | 'local'): void {
  const bad = (code: H2ErrorCodeName, what: string): H2ProtocolError => connectionError(code, 0, `${side} SETTINGS ${what}`);
  if (s.enablePush !== undefined && s.enablePush > 1) throw bad('PROTOCOL_ERROR', `ENABLE_PUSH=${s.enablePush} (must be 0 or 1)`);
  if (s.enableConnectProtocol !== undefined && s.enableConnectProtocol > 1) {
    throw bad('PROTOCOL_ERROR', `ENABLE_CONNECT_PROTOCOL=${s.enableConnectProtocol} (must be 0 or 1)`);
  }
  if (s.initialWindowSize !== undefined && s.initialWindowSize > MAX_WINDOW) {
    throw bad('FLOW_CONTROL_ERROR', `INITIAL_WINDOW_SIZE=${s.initialWindowSize} (above 2^31-1)`);
  }
  if (s.maxFrameSize !== undefined && (s.maxFrameSize < DEFAULT_MAX_FRAME_SIZE || s.maxFrameSize > MAX_MAX_FRAME_SIZE)) {
    throw bad('PROTOCOL_ERROR', `MAX_FRAME_SIZE=${s.maxFrameSize} (must be 16384..16777215)`);
  }
}

function parsePriority(b: Buffer, o: number): Priority {
  const dep = b.readUInt32BE(o);
  return { exclusive: dep >= 0x80000000, dependency: dep & MAX_WINDOW, weight: b[o + 4] ?? 0 };
}

const where = (type: number, streamId: number): string => `${typeName(type)} frame on stream ${streamId}`;

function onStream(type: number, streamId: number): void {
  if (streamId === 0) throw connectionError('PROTOCOL_ERROR', 0, `${typeName(type)} frame on stream 0`);
}

function onConnection(type: number, streamId: number): void {
  if (streamId !== 0) throw connectionError('PROTOCOL_ERROR', streamId, `${where(type, streamId)} (must be stream 0)`);
}

function exactly(type: number, streamId: number, length: number, n: number, scope: 'connection' | 'stream' = 'connection'): void {
  if (length !== n) throw new H2ProtocolError('FRAME_SIZE_ERROR', scope, streamId, `${where(type, streamId)} has length ${length}, must be ${n}`);
}

/**
 * Parses the payload of a complete non-DATA frame whose header the reader already checked against
 * the size limit. Returns the frame, undefined for a frame to ignore (unknown type), or throws
 * H2ProtocolError. HEADERS is returned with its own fragment; the reader joins CONTINUATION.
 */
export function parseFrame(type: number, flags: number, streamId: number, payload: Buffer): Frame | undefined {
  const length = payload.length;
  switch (type) {
    case FrameType.HEADERS: {
      onStream(type, streamId);
      const padded = (flags & Flags.PADDED) !== 0;
      const fixed = (padded ? 1 : 0) + (flags & Flags.PRIORITY ? 5 : 0);
      if (length < fixed) {
        throw connectionError('FRAME_SIZE_ERROR', streamId, `${where(type, streamId)} has length ${length}, its PADDED/PRIORITY fields need ${fixed}`);
      }
      const pad = padded ? (payload[0] ?? 0) : 0;
      if (pad > length - fixed) {
        throw connectionError('PROTOCOL_ERROR', streamId, `${where(type, streamId)}: padding ${pad} exceeds the ${length - fixed} bytes after its fixed fields`);
      }
      let p = padded ? 1 : 0;
      let priority: Priority | undefined;
      if (flags & Flags.PRIORITY) {
        priority = parsePriority(payload, p);
        p += 5;
      }
      const end = length - pad;
      return {
        type: FrameType.HEADERS,
        streamId,
        block: payload.subarray(p, end),
        endStream: (flags & Flags.END_STREAM) !== 0,
        priority,
      };
    }
    case FrameType.PRIORITY: {
      onStream(type, streamId);
      exactly(type, streamId, length, 5, 'stream');
      return { type: FrameType.PRIORITY, streamId, priority: parsePriority(payload, 0) };
    }
    case FrameType.RST_STREAM:
      onStream(type, streamId);
      exactly(type, streamId, length, 4);
      return { type: FrameType.RST_STREAM, streamId, errorCode: payload.readUInt32BE(0) };
    case FrameType.SETTINGS: {
      onConnection(type, streamId);
      const ack = (flags & Flags.ACK) !== 0;
      if (ack) {
        if (length !== 0) throw connectionError('FRAME_SIZE_ERROR', 0, `SETTINGS ACK has length ${length}, must be 0`);
        return { type: FrameType.SETTINGS, streamId: 0, ack, settings: {} };
      }
      if (length % 6 !== 0) throw connectionError('FRAME_SIZE_ERROR', 0, `SETTINGS has length ${length}, not a multiple of 6`);
      const settings: Settings = {};
      for (let o = 0; o < length; o += 6) {
        const value = payload.readUInt32BE(o + 2);
        const field = SETTING_FIELDS.find(([, id]) => id === payload.readUInt16BE(o));
        if (field !== undefined) settings[field[0]] = value;
      }
      checkSettings(settings, 'peer');
      return { type: FrameType.SETTINGS, streamId: 0, ack, settings };
    }
    case FrameType.PUSH_PROMISE:
      // We always send ENABLE_PUSH=0 (and a server never receives one): §8.4 makes it a connection error.
      throw connectionError('PROTOCOL_ERROR', streamId, 'PUSH_PROMISE received, but push is disabled');
    case FrameType.PING:
      onConnection(type, streamId);
      exactly(type, streamId, length, 8);
      return { type: FrameType.PING, streamId: 0, ack: (flags & Flags.ACK) !== 0, opaque: payload };
    case FrameType.GOAWAY:
      onConnection(type, streamId);
      if (length < 8) throw connectionError('FRAME_SIZE_ERROR', 0, `GOAWAY has length ${length}, must be at least 8`);
      return {
        type: FrameType.GOAWAY,
        streamId: 0,
        lastStreamId: payload.readUInt32BE(0) & MAX_WINDOW,
        errorCode: payload.readUInt32BE(4),
        debugData: payload.subarray(8),
      };
    case FrameType.WINDOW_UPDATE: {
      exactly(type, streamId, length, 4);
      const increment = payload.readUInt32BE(0) & MAX_WINDOW;
      if (increment === 0) {
        throw new H2ProtocolError('PROTOCOL_ERROR', streamId === 0 ? 'connection' : 'stream', streamId, `${where(type, streamId)} has increment 0`);
      }
      return { type: FrameType.WINDOW_UPDATE, streamId, increment };
    }
    case FrameType.CONTINUATION:
      // Only valid right after HEADERS on the same stream; the reader handles that case itself.
      throw connectionError('PROTOCOL_ERROR', streamId, `CONTINUATION on stream ${streamId} without a HEADERS frame before it`);
    default:
      return undefined; // unknown types are ignored (§4.1, §5.5)
  }
}

// ---- incremental reader ----

export interface FrameReaderOptions {
  /** Our SETTINGS_MAX_FRAME_SIZE: larger frames are a FRAME_SIZE_ERROR (default 16384). */
  maxFrameSize?: number;
  /** Cap on one HEADERS + CONTINUATION field block (default 65536): a CONTINUATION flood ends here. */
  maxHeaderBlockSize?: number;
  /** Server role: the client preface must come before the first frame. */
  expectPreface?: boolean;
}

export interface FrameHandler {
  /**
   * A frame (DATA piecewise, see DataFrame). Payload buffers are never reused by the reader. Anything
   * thrown here ends the reader (push() rethrows it): handle stream-level faults (an HPACK stream
   * error, a refused stream) inside, and throw only what closes the connection.
   */
  frame(frame: Frame): void;
  /**
   * A stream error in a frame that was otherwise consumed (PRIORITY of bad length, WINDOW_UPDATE of 0
   * on a stream, a stream depending on itself): reset that stream, the connection goes on.
   */
  streamError(error: H2ProtocolError): void;
}

const enum State {
  Preface,
  Header,
  Payload,
  Data,
  Skip,
}

/**
 * Turns a byte stream into frames. push() takes chunks as they arrive (a frame may span chunks, a
 * chunk may hold many frames). A non-DATA frame inside one chunk is parsed in place; one spanning
 * chunks is gathered into a buffer of its length (at most maxFrameSize). DATA is never gathered: each
 * chunk's share of it goes out as a DataFrame piece; a field block waiting for CONTINUATION is held
 * apart, up to maxHeaderBlockSize. Connection errors are thrown from push(); after one, the reader
 * refuses further input (the connection is to be closed with GOAWAY).
 */
export class FrameReader {
  readonly #handler: FrameHandler;
  #maxFrameSize: number;
  readonly #maxBlock: number;
  #state: State;
  #failed = false;
  #failure: unknown;
  #prefaceAt = 0;
  // Frame header being read (it may span chunks).
  readonly #head = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  #headLength = 0;
  #length = 0;
  #type = 0;
  #flags = 0;
  #streamId = 0;
  // Payload being gathered (non-DATA spanning chunks) and bytes still to come.
  #payload: Buffer | undefined;
  #filled = 0;
  #left = 0;
  // DATA in progress: padding at its end, pad-length byte pending, no piece of it delivered yet.
  #padLeft = 0;
  #needPadLength = false;
  #dataFirst = false;
  // A field block waiting for CONTINUATION: its stream, fragments and first HEADERS' fields.
  #blockStream = 0;
  #blockParts: Buffer[] = [];
  #blockSize = 0;
  #blockHeaders: HeadersFrame | undefined;

  constructor(handler: FrameHandler, options: FrameReaderOptions = {}) {
    this.#handler = handler;
    this.#maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    this.#maxBlock = options.maxHeaderBlockSize ?? 65536;
    this.#state = options.expectPreface === true ? State.Preface : State.Header;
  }

  /** Raise (or lower) the largest frame accepted: call once the peer ACKed our new MAX_FRAME_SIZE. */
  setMaxFrameSize(size: number): void {
    if (size < DEFAULT_MAX_FRAME_SIZE || size > MAX_MAX_FRAME_SIZE) throw new RangeError(`MAX_FRAME_SIZE ${size} outside 16384..16777215`);
    this.#maxFrameSize = size;
  }

  push(chunk: Buffer): void {
    if (this.#failed) throw this.#failure;
    try {
      this.#push(chunk);
    } catch (err) {
      // Whatever threw (our check or the handler), the rest of the chunk is lost: the reader is done.
      this.#failed = true;
      this.#failure = err;
      throw err;
    }
  }

  #push(chunk: Buffer): void {
    let p = 0;
    const end = chunk.length;
    while (p < end) {
      switch (this.#state) {
        case State.Preface: {
          while (p < end && this.#prefaceAt < CLIENT_PREFACE.length) {
            const want = CLIENT_PREFACE[this.#prefaceAt] ?? 0;
            const got = chunk[p] ?? 0;
            if (got !== want) {
              throw connectionError('PROTOCOL_ERROR', 0, `client preface byte ${this.#prefaceAt} is 0x${got.toString(16)}, expected 0x${want.toString(16)}`);
            }
            p++;
            this.#prefaceAt++;
          }
          if (this.#prefaceAt === CLIENT_PREFACE.length) this.#state = State.Header;
          break;
        }
        case State.Header: {
          if (this.#headLength === 0 && end - p >= FRAME_HEADER_SIZE) {
            this.#header(chunk, p);
            p += FRAME_HEADER_SIZE;
          } else {
            const n = Math.min(FRAME_HEADER_SIZE - this.#headLength, end - p);
            chunk.copy(this.#head, this.#headLength, p, p + n);
            this.#headLength += n;
            p += n;
            if (this.#headLength < FRAME_HEADER_SIZE) break;
            this.#headLength = 0;
            this.#header(this.#head, 0);
          }
          // A frame with an empty payload is complete at its header (#header() set the state).
          const next = this.#state as State;
          if (this.#left > 0) break;
          if (next === State.Payload) this.#complete(EMPTY);
          else if (next === State.Data) this.#data(chunk, p, p);
          else this.#state = State.Header;
          break;
        }
        case State.Payload: {
          const n = Math.min(this.#left, end - p);
          if (this.#payload === undefined) {
            if (n === this.#left) {
              // Whole payload in this chunk: parse in place.
              p += n;
              this.#complete(chunk.subarray(p - n, p));
              break;
            }
            this.#payload = Buffer.allocUnsafe(this.#length);
            this.#filled = 0;
          }
          chunk.copy(this.#payload, this.#filled, p, p + n);
          this.#filled += n;
          this.#left -= n;
          p += n;
          if (this.#left === 0) {
            const payload = this.#payload;
            this.#payload = undefined;
            this.#complete(payload);
          }
          break;
        }
        case State.Data: {
          const n = Math.min(this.#left, end - p);
          this.#data(chunk, p, p + n);
          p += n;
          break;
        }
        case State.Skip: {
          const n = Math.min(this.#left, end - p);
          this.#left -= n;
          p += n;
          if (this.#left === 0) this.#state = State.Header;
          break;
        }
      }
    }
  }

  /** Reads and checks a frame header at b[o]; sets the state for its payload. */
  #header(b: Buffer, o: number): void {
    const length = ((b[o] ?? 0) << 16) | ((b[o + 1] ?? 0) << 8) | (b[o + 2] ?? 0);
    const type = b[o + 3] ?? 0;
    const flags = b[o + 4] ?? 0;
    const streamId = b.readUInt32BE(o + 5) & MAX_WINDOW; // the reserved bit is ignored (§4.1)
    if (length > this.#maxFrameSize) {
      throw connectionError('FRAME_SIZE_ERROR', streamId, `${typeName(type)} frame on stream ${streamId} has length ${length}, above our MAX_FRAME_SIZE ${this.#maxFrameSize}`);
    }
    if (this.#blockHeaders !== undefined && (type !== FrameType.CONTINUATION || streamId !== this.#blockStream)) {
      throw connectionError(
        'PROTOCOL_ERROR',
        streamId,
        `${typeName(type)} frame on stream ${streamId} inside the field block of stream ${this.#blockStream} (CONTINUATION expected)`,
      );
    }
    this.#length = length;
    this.#type = type;
    this.#flags = flags;
    this.#streamId = streamId;
    this.#left = length;
    if (type === FrameType.DATA) {
      if (streamId === 0) throw connectionError('PROTOCOL_ERROR', 0, 'DATA frame on stream 0');
      this.#needPadLength = (flags & Flags.PADDED) !== 0;
      if (this.#needPadLength && length === 0) throw connectionError('FRAME_SIZE_ERROR', streamId, `DATA frame on stream ${streamId} is PADDED but empty`);
      this.#padLeft = 0;
      this.#dataFirst = true;
      this.#state = State.Data;
    } else if (type > FrameType.CONTINUATION) {
      this.#state = State.Skip; // unknown type: ignored without buffering
    } else {
      this.#state = State.Payload;
    }
  }

  /** DATA bytes chunk[p, end) of the current frame (end - p ≤ #left). */
  #data(chunk: Buffer, p: number, end: number): void {
    const streamId = this.#streamId;
    if (this.#needPadLength && p < end) {
      const pad = chunk[p] ?? 0;
      if (pad >= this.#length) {
        throw connectionError('PROTOCOL_ERROR', streamId, `DATA frame on stream ${streamId}: padding ${pad} is not less than its length ${this.#length}`);
      }
      this.#needPadLength = false;
      this.#padLeft = pad;
      this.#left--;
      p++;
    }
    // The padding is the last #padLeft bytes of the frame: keep only what precedes it.
    const dataN = Math.min(end - p, Math.max(0, this.#left - this.#padLeft));
    this.#left -= end - p;
    const last = this.#left === 0;
    const piece = chunk.subarray(p, p + dataN);
    const endStream = last && (this.#flags & Flags.END_STREAM) !== 0;
    // Every frame yields at least its first piece, even when empty, so the session can count frames.
    if (piece.length > 0 || this.#dataFirst || endStream) {
      const first = this.#dataFirst;
      this.#dataFirst = false;
      this.#handler.frame({ type: FrameType.DATA, streamId, data: piece, first, flowLength: first ? this.#length : 0, endStream });
    }
    if (last) this.#state = State.Header;
  }

  /** A complete non-DATA payload. */
  #complete(payload: Buffer): void {
    this.#state = State.Header;
    const type = this.#type;
    const streamId = this.#streamId;
    if (type === FrameType.CONTINUATION && this.#blockHeaders !== undefined) {
      this.#addFragment(payload);
      return;
    }
    let frame: Frame | undefined;
    try {
      frame = parseFrame(type, this.#flags, streamId, payload);
    } catch (err) {
      if (err instanceof H2ProtocolError && err.scope === 'stream') {
        this.#handler.streamError(err);
        return;
      }
      throw err;
    }
    if (frame === undefined) return;
    if (frame.type === FrameType.HEADERS) {
      const selfDependent = frame.priority !== undefined && frame.priority.dependency === streamId;
      if ((this.#flags & Flags.END_HEADERS) === 0) {
        this.#blockHeaders = frame;
        this.#blockStream = streamId;
        this.#blockParts = [];
        this.#blockSize = 0;
        this.#addFragment(frame.block);
        return;
      }
      if (frame.block.length > this.#maxBlock) throw this.#blockTooLarge(frame.block.length);
      this.#handler.frame(frame);
      // Reported after the frame so the session still decodes its block (HPACK state), then resets.
      if (selfDependent) this.#handler.streamError(selfDependency(streamId));
      return;
    }
    if (frame.type === FrameType.PRIORITY && frame.priority.dependency === streamId) {
      this.#handler.streamError(selfDependency(streamId));
      return;
    }
    this.#handler.frame(frame);
  }

  #addFragment(fragment: Buffer): void {
    this.#blockSize += fragment.length;
    if (this.#blockSize > this.#maxBlock) throw this.#blockTooLarge(this.#blockSize);
    // Copied: a view would keep its whole chunk alive while the block waits for more CONTINUATION;
    // copies stay within maxHeaderBlockSize.
    if (fragment.length > 0) this.#blockParts.push(Buffer.from(fragment));
    if ((this.#flags & Flags.END_HEADERS) === 0) return;
    const headers = this.#blockHeaders;
    if (headers === undefined) return;
    const parts = this.#blockParts;
    this.#blockHeaders = undefined;
    this.#blockParts = [];
    headers.block = parts.length === 1 ? (parts[0] ?? EMPTY) : Buffer.concat(parts, this.#blockSize);
    this.#handler.frame(headers);
    if (headers.priority !== undefined && headers.priority.dependency === headers.streamId) {
      this.#handler.streamError(selfDependency(headers.streamId));
    }
  }

  #blockTooLarge(size: number): H2ProtocolError {
    // A block not decoded leaves the peer's HPACK table out of step with ours: connection-level.
    return connectionError('ENHANCE_YOUR_CALM', this.#streamId, `field block of stream ${this.#streamId} reaches ${size} bytes, above ${this.#maxBlock}`);
  }
}

function selfDependency(streamId: number): H2ProtocolError {
  return new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, `stream ${streamId} depends on itself (priority)`);
}
