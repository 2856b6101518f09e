// Test support for src/h2: a hand-driven HTTP/2 peer on a raw socket, and a seeded PRNG for fuzzing.
import type * as net from 'node:net';
import { FrameReader, FrameType, encodeHeaders, encodePing, encodeSettingsAck } from '../src/h2/frames.js';
import type { Frame, GoawayFrame, RstStreamFrame } from '../src/h2/frames.js';
import { HpackDecoder, HpackEncoder } from '../src/h2/hpack.js';

export interface RawPeerOptions {
  /** Reads the client preface first (this peer is a server). */
  expectPreface: boolean;
  /** Answers every SETTINGS with an ACK (else the test does, when it wants to). */
  ackSettings?: boolean;
  /** Answers every PING with a PING ACK. */
  answerPings?: boolean;
}

/** One side of a connection driven by hand: raw frames out; frames in, HEADERS decoded, DATA kept per stream. */
export class RawPeer {
  readonly frames: Frame[] = [];
  readonly headers = new Map<number, string[][]>();
  readonly data = new Map<number, Buffer[]>();
  /** Every HEADERS block as received (to compare sizes: dynamic-table hits shrink them). */
  readonly blocks: Buffer[] = [];
  readonly decoder = new HpackDecoder();
  readonly encoder = new HpackEncoder();
  readonly closed: Promise<unknown>;
  #waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];

  constructor(
    readonly socket: net.Socket,
    o: RawPeerOptions,
  ) {
    const reader = new FrameReader(
      {
        frame: (f) => {
          if (f.type === FrameType.HEADERS) {
            this.blocks.push(Buffer.from(f.block));
            const list = this.headers.get(f.streamId) ?? [];
            list.push(this.decoder.decode(f.block, f.streamId));
            this.headers.set(f.streamId, list);
          } else if (f.type === FrameType.DATA) {
            const list = this.data.get(f.streamId) ?? [];
            list.push(Buffer.from(f.data));
            this.data.set(f.streamId, list);
          } else if (f.type === FrameType.SETTINGS && !f.ack && o.ackSettings === true) {
            socket.write(encodeSettingsAck());
          } else if (f.type === FrameType.PING && !f.ack && o.answerPings === true) {
            socket.write(encodePing(Buffer.from(f.opaque), true));
          }
          this.frames.push(f);
          for (const w of this.#waiters.splice(0)) {
            if (w.match(f)) w.resolve(f);
            else this.#waiters.push(w);
          }
        },
        streamError: (e) => {
          throw e;
        },
      },
      { expectPreface: o.expectPreface },
    );
    socket.on('data', (c: Buffer) => reader.push(c));
    socket.on('error', () => {});
    this.closed = new Promise((r) => socket.once('close', r));
  }

  /** The first frame (seen or to come) that matches. */
  next(match: (f: Frame) => boolean): Promise<Frame> {
    const seen = this.frames.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  goaway(): Promise<GoawayFrame> {
    return this.next((f) => f.type === FrameType.GOAWAY) as Promise<GoawayFrame>;
  }

  rst(id: number): Promise<RstStreamFrame> {
    return this.next((f) => f.type === FrameType.RST_STREAM && f.streamId === id) as Promise<RstStreamFrame>;
  }

  /** Sends a CONNECT (or the given fields) on stream `id`. */
  connect(id: number, fields: string[] = [':method', 'CONNECT', ':authority', '10.0.0.1:80'], endStream = false): void {
    this.socket.write(encodeHeaders(id, this.encoder.encode(fields), endStream));
  }

  /** The DATA received on a stream, as text. */
  body(streamId: number): string {
    return Buffer.concat(this.data.get(streamId) ?? []).toString();
  }
}

/** mulberry32: a seeded PRNG, so a failing fuzz case is reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
