// HPACK (RFC 7541) for the h2 codec: a full decoder and a stateless encoder.
import { H2ProtocolError } from '../errors.js';
import { HUFFMAN_CODES, HUFFMAN_LENGTHS, STATIC_TABLE } from './hpack-tables.js';

const EOS = 256;
/** Per-entry overhead in table and header-list sizes (RFC 7541 §4.1, RFC 9113 §6.5.2). */
const ENTRY_OVERHEAD = 32;
/** HPACK integers here are lengths, indices and table sizes; nothing legitimate needs more. */
const MAX_INT = 0x7fffffff;

// Huffman decoding runs 4 bits at a time through a state machine built here from the code tree
// (nghttp2 does the same): a bit-by-bit tree walk cost ~3 µs per CONNECT block. States are the
// tree's 256 inner nodes; the shortest code is 5 bits, so a nibble emits at most one symbol.
// fsm[state << 4 | nibble] = next state | 0x100 if a symbol is emitted | symbol << 9; -1 if EOS is hit.
const fsm = new Int32Array(256 * 16);
// For the padding rule at the end of a string: each state's depth, and whether its path is all ones.
const stateDepth = new Uint8Array(256);
const stateOnes = new Uint8Array(256);
{
  // Code tree: node n's children are tree[2n] (bit 0) and tree[2n + 1] (bit 1); >= 0 a node, < 0 ~symbol.
  const tree = new Int32Array(2 * 256);
  stateOnes[0] = 1;
  let nodes = 1;
  for (let sym = 0; sym <= EOS; sym++) {
    const code = HUFFMAN_CODES[sym] ?? 0;
    const len = HUFFMAN_LENGTHS[sym] ?? 0;
    let n = 0;
    for (let i = len - 1; i >= 0; i--) {
      const bit = (code >>> i) & 1;
      const slot = 2 * n + bit;
      if (i === 0) tree[slot] = ~sym;
      else {
        if (tree[slot] === 0) {
          stateDepth[nodes] = (stateDepth[n] ?? 0) + 1;
          stateOnes[nodes] = bit & (stateOnes[n] ?? 0);
          tree[slot] = nodes++;
        }
        n = tree[slot] ?? 0;
      }
    }
  }
  for (let state = 0; state < nodes; state++) {
    for (let nibble = 0; nibble < 16; nibble++) {
      let n = state;
      let entry = 0;
      for (let k = 3; k >= 0; k--) {
        const child = tree[2 * n + ((nibble >>> k) & 1)] ?? 0;
        if (child >= 0) n = child;
        else if (~child === EOS) {
          entry = -1;
          break;
        } else {
          entry = 0x100 | (~child << 9);
          n = 0;
        }
      }
      fsm[(state << 4) | nibble] = entry < 0 ? -1 : entry | n;
    }
  }
}

// One scratch buffer for Huffman output and encoding, shared by every session: decode and encode are
// synchronous, so nothing else can hold it between calls, and no session keeps a buffer of its own.
let scratch = Buffer.allocUnsafe(4096);
function scratchOf(size: number): Buffer {
  if (scratch.length < size) scratch = Buffer.allocUnsafe(Math.max(size, 2 * scratch.length));
  return scratch;
}

function compressionError(streamId: number, message: string): H2ProtocolError {
  return new H2ProtocolError('COMPRESSION_ERROR', 'connection', streamId, message);
}

/**
 * Huffman-decodes b[start, end) into a latin1 string. Rejects EOS in the data and padding that is
 * longer than 7 bits or not the most significant bits of EOS (all ones), as RFC 7541 §5.2 requires.
 */
export function huffmanDecode(b: Buffer, start: number, end: number, streamId = 0): string {
  // The shortest code is 5 bits, so n bytes decode to at most 8n/5 symbols.
  const out = scratchOf(Math.ceil(((end - start) * 8) / 5));
  let o = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const byte = b[i] ?? 0;
    let e = fsm[(state << 4) | (byte >>> 4)] ?? -1;
    if (e >= 0) {
      if (e & 0x100) out[o++] = e >>> 9;
      e = fsm[((e & 0xff) << 4) | (byte & 0xf)] ?? -1;
    }
    if (e < 0) throw compressionError(streamId, `Huffman string contains EOS (byte ${i - start} of the string)`);
    if (e & 0x100) out[o++] = e >>> 9;
    state = e & 0xff;
  }
  // Ending inside a code is padding: at most 7 bits, all ones (a prefix of EOS).
  if (stateOnes[state] === 0) throw compressionError(streamId, 'Huffman padding is not all ones (not a prefix of EOS)');
  const depth = stateDepth[state] ?? 0;
  if (depth > 7) throw compressionError(streamId, `Huffman string ends in ${depth} bits of padding (at most 7 allowed)`);
  return out.toString('latin1', 0, o);
}

/** Bytes the Huffman coding of s takes (latin1 octets). */
export function huffmanLength(s: string): number {
  let bits = 0;
  for (let i = 0; i < s.length; i++) bits += HUFFMAN_LENGTHS[s.charCodeAt(i) & 0xff] ?? 0;
  return Math.ceil(bits / 8);
}

/** Writes the Huffman coding of s at out[o]; returns the offset after it. */
export function huffmanEncode(s: string, out: Buffer, o: number): number {
  // acc holds fewer than 8 pending bits between symbols; acc * 2^30 + code stays far below 2^53.
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i) & 0xff;
    const len = HUFFMAN_LENGTHS[c] ?? 0;
    acc = acc * 2 ** len + (HUFFMAN_CODES[c] ?? 0);
    bits += len;
    while (bits >= 8) {
      bits -= 8;
      const div = 2 ** bits;
      out[o++] = Math.floor(acc / div);
      acc %= div;
    }
  }
  // Pad with the most significant bits of EOS (ones).
  if (bits > 0) out[o++] = (acc << (8 - bits)) | (0xff >>> bits);
  return o;
}

/** Writes an HPACK integer (RFC 7541 §5.1) with the given prefix bits and high-bit pattern. */
function encodeInt(value: number, prefixBits: number, high: number, out: Buffer, o: number): number {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out[o++] = high | value;
    return o;
  }
  out[o++] = high | max;
  value -= max;
  while (value >= 0x80) {
    out[o++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[o++] = value;
  return o;
}

function encodeString(s: string, out: Buffer, o: number): number {
  const huff = huffmanLength(s);
  if (huff < s.length) return huffmanEncode(s, out, encodeInt(huff, 7, 0x80, out, o));
  o = encodeInt(s.length, 7, 0, out, o);
  return o + out.write(s, o, 'latin1');
}

export interface HpackDecoderOptions {
  /** Our SETTINGS_HEADER_TABLE_SIZE: the most dynamic table the peer's encoder may use (default 4096). */
  maxTableSize?: number;
  /**
   * Our SETTINGS_MAX_HEADER_LIST_SIZE: name + value + 32 per field, summed over a block (default 16384).
   * A longer list is still decoded to the end, so the dynamic table stays in step with the peer, but
   * fields past the limit are not kept, and the block then fails as a stream error.
   */
  maxHeaderListSize?: number;
}

/**
 * One per connection and direction: the dynamic table is connection state, so every header block the
 * peer sends must go through decode() in order, including blocks of streams that are then refused.
 */
export class HpackDecoder {
  #limit: number;
  #max: number;
  readonly #maxList: number;
  // Dynamic table as a ring, newest at #head, grown on demand up to #capacity() slots.
  #names: string[] = [];
  #values: string[] = [];
  #head = 0;
  #count = 0;
  #size = 0;

  constructor(options: HpackDecoderOptions = {}) {
    this.#limit = options.maxTableSize ?? 4096;
    this.#max = this.#limit;
    this.#maxList = options.maxHeaderListSize ?? 16384;
  }

  /** Octets in the dynamic table (RFC 7541 §4.1 accounting). */
  get tableSize(): number {
    return this.#size;
  }

  /** Entries in the dynamic table. */
  get tableLength(): number {
    return this.#count;
  }

  /**
   * Our SETTINGS_HEADER_TABLE_SIZE changed (call when the peer ACKs the SETTINGS carrying it). When it
   * drops below what the peer's encoder uses, the peer's next block must start with a size update
   * that fits (RFC 7541 §4.2); decode() enforces that.
   */
  setMaxTableSize(limit: number): void {
    this.#limit = limit;
    if (limit >= this.#max) this.#max = limit;
    this.#resize();
  }

  /** The most entries the table can hold: every entry costs at least 32 octets. */
  #capacity(): number {
    return Math.max(1, Math.floor(Math.max(this.#limit, this.#max) / ENTRY_OVERHEAD));
  }

  /** Shrinks the ring when the limit dropped; it grows on demand in #insert. */
  #resize(): void {
    if (this.#names.length > this.#capacity()) this.#relayout(this.#capacity());
  }

  /** Copies the ring into arrays of `length` slots, oldest first (newest entries kept if fewer fit). */
  #relayout(length: number): void {
    const names: string[] = new Array<string>(length);
    const values: string[] = new Array<string>(length);
    const keep = Math.min(this.#count, length);
    for (let k = keep - 1, j = 0; k >= 0; k--, j++) {
      const i = this.#slot(k);
      names[j] = this.#names[i] ?? '';
      values[j] = this.#values[i] ?? '';
    }
    this.#names = names;
    this.#values = values;
    this.#head = keep === 0 ? length - 1 : keep - 1;
    this.#count = keep;
  }

  /** Ring slot of dynamic entry k (0 = newest). */
  #slot(k: number): number {
    const cap = this.#names.length;
    return (this.#head - k + cap) % cap;
  }

  #evictTo(max: number): void {
    while (this.#size > max && this.#count > 0) {
      const i = this.#slot(this.#count - 1);
      this.#size -= (this.#names[i] ?? '').length + (this.#values[i] ?? '').length + ENTRY_OVERHEAD;
      this.#names[i] = '';
      this.#values[i] = '';
      this.#count--;
    }
  }

  #insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    // RFC 7541 §4.4: evict first; an entry larger than the table empties it and is not added.
    this.#evictTo(this.#max - size);
    if (size > this.#max) return;
    // Grown on demand, so a peer that never indexes costs no table: eviction above leaves
    // count + 1 <= capacity, so the new length always has room.
    if (this.#count === this.#names.length) this.#relayout(Math.min(this.#capacity(), Math.max(8, 2 * this.#names.length)));
    this.#head = (this.#head + 1) % this.#names.length;
    this.#names[this.#head] = name;
    this.#values[this.#head] = value;
    this.#count++;
    this.#size += size;
  }

  /**
   * Decodes one complete header block into [name, value, name, value, …] (latin1 strings). Throws
   * H2ProtocolError: COMPRESSION_ERROR (connection) for any HPACK fault; PROTOCOL_ERROR (stream
   * `streamId`) for a malformed field (RFC 9113 §8.2.1) or a list above maxHeaderListSize, raised only
   * after the whole block was decoded so the dynamic table stays usable for later blocks.
   */
  decode(block: Buffer, streamId: number): string[] {
    const out: string[] = [];
    const end = block.length;
    let p = 0;
    let listSize = 0;
    let fault: H2ProtocolError | undefined;
    let atStart = true;

    const int = (prefixBits: number): number => {
      const mask = (1 << prefixBits) - 1;
      let v = (block[p++] ?? 0) & mask;
      if (v < mask) return v;
      for (let m = 0; ; m += 7) {
        if (p >= end) throw compressionError(streamId, `header block ends inside an integer (byte ${p})`);
        const c = block[p++] ?? 0;
        v += (c & 0x7f) * 2 ** m;
        if (v > MAX_INT) throw compressionError(streamId, `integer at byte ${p - 1} exceeds 2^31-1`);
        if ((c & 0x80) === 0) return v;
      }
    };
    const str = (): string => {
      if (p >= end) throw compressionError(streamId, `header block ends before a string literal (byte ${p})`);
      const huff = ((block[p] ?? 0) & 0x80) !== 0;
      const at = p;
      const len = int(7);
      if (len > end - p) throw compressionError(streamId, `string literal at byte ${at} claims ${len} bytes, ${end - p} left`);
      const s = huff ? huffmanDecode(block, p, p + len, streamId) : block.toString('latin1', p, p + len);
      p += len;
      return s;
    };
    const entry = (index: number, at: number): number => {
      if (index === 0) throw compressionError(streamId, `index 0 at byte ${at}`);
      if (index < STATIC_TABLE.length) return index;
      if (index - STATIC_TABLE.length >= this.#count) {
        throw compressionError(streamId, `index ${index} at byte ${at} is beyond the dynamic table (${this.#count} entries)`);
      }
      return index;
    };
    const nameOf = (index: number): string =>
      index < STATIC_TABLE.length ? (STATIC_TABLE[index]?.[0] ?? '') : (this.#names[this.#slot(index - STATIC_TABLE.length)] ?? '');
    const valueOf = (index: number): string =>
      index < STATIC_TABLE.length ? (STATIC_TABLE[index]?.[1] ?? '') : (this.#values[this.#slot(index - STATIC_TABLE.length)] ?? '');

    while (p < end) {
      const at = p;
      const c = block[p] ?? 0;
      let name: string;
      let value: string;
      if ((c & 0xe0) === 0x20) {
        // Dynamic table size update: only before the first field (RFC 7541 §4.2).
        if (!atStart) throw compressionError(streamId, `dynamic table size update at byte ${at}, after a header field`);
        const size = int(5);
        if (size > this.#limit) throw compressionError(streamId, `dynamic table size update to ${size} at byte ${at}, above our limit ${this.#limit}`);
        this.#max = size;
        this.#evictTo(size);
        continue;
      }
      if (atStart) {
        atStart = false;
        if (this.#max > this.#limit) {
          throw compressionError(streamId, `block does not start with a table size update to at most ${this.#limit} (peer still at ${this.#max})`);
        }
        this.#resize();
      }
      if (c & 0x80) {
        const i = entry(int(7), at);
        name = nameOf(i);
        value = valueOf(i);
      } else {
        // 01xxxxxx: with incremental indexing; 0000xxxx / 0001xxxx: without / never indexed.
        const indexing = (c & 0xc0) === 0x40;
        const idx = int(indexing ? 6 : 4);
        name = idx === 0 ? str() : nameOf(entry(idx, at));
        value = str();
        if (indexing) this.#insert(name, value);
      }
      fault ??= checkField(name, value, streamId);
      listSize += name.length + value.length + ENTRY_OVERHEAD;
      if (listSize <= this.#maxList) out.push(name, value);
      else fault ??= new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, `header list exceeds ${this.#maxList} bytes at field ${JSON.stringify(name)}`);
    }
    if (atStart && this.#max > this.#limit) {
      throw compressionError(streamId, `block does not start with a table size update to at most ${this.#limit} (peer still at ${this.#max})`);
    }
    if (fault !== undefined) throw fault;
    return out;
  }
}

/** RFC 9113 §8.2.1 field validity: the first fault as a stream error, or undefined. */
function checkField(name: string, value: string, streamId: number): H2ProtocolError | undefined {
  if (name.length === 0) return new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, 'empty header name');
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    // Uppercase, controls, SP, DEL and non-ASCII are not allowed; a colon only to start a pseudo-header.
    if (c <= 0x20 || (c >= 0x41 && c <= 0x5a) || c >= 0x7f || (c === 0x3a && i > 0)) {
      return new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, `header name ${JSON.stringify(name)} has invalid byte 0x${c.toString(16)} at ${i}`);
    }
  }
  // indexOf per forbidden byte: V8 scans a flat string for one char far faster than a charCodeAt loop.
  if (value.indexOf('\0') >= 0 || value.indexOf('\n') >= 0 || value.indexOf('\r') >= 0) {
    const i = value.search(/[\0\n\r]/);
    return new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, `value of ${JSON.stringify(name)} has invalid byte 0x${value.charCodeAt(i).toString(16)} at ${i}`);
  }
  const first = value.charCodeAt(0);
  const last = value.charCodeAt(value.length - 1);
  if (first === 0x20 || first === 0x09 || last === 0x20 || last === 0x09) {
    return new H2ProtocolError('PROTOCOL_ERROR', 'stream', streamId, `value of ${JSON.stringify(name)} starts or ends with whitespace`);
  }
  return undefined;
}

// Static table lookups for the encoder: exact (name, value) → index, name → lowest index.
const staticExact = new Map<string, number>();
const staticName = new Map<string, number>();
for (let i = 1; i < STATIC_TABLE.length; i++) {
  const [name, value] = STATIC_TABLE[i] ?? ['', ''];
  if (!staticExact.has(`${name}\0${value}`)) staticExact.set(`${name}\0${value}`, i);
  if (!staticName.has(name)) staticName.set(name, i);
}

/**
 * HPACK encoder without a dynamic table: a field is a static-table index when name and value match
 * an entry, else a literal without indexing (name by static index when it has one), each string in
 * Huffman when that is shorter. HBONE sends a handful of small header blocks per tunnel, so indexing
 * would save little on the wire, while a dynamic table costs every session up to the peer's
 * SETTINGS_HEADER_TABLE_SIZE (4 KiB by default) of strings kept alive for its whole life — per-session
 * memory is what this codec exists to keep small. The first block says so with a size update to 0;
 * as the table is then 0, a later, smaller SETTINGS_HEADER_TABLE_SIZE from the peer needs no new update.
 * The caller validates fields (lowercase names, no CR/LF/NUL in values); strings are written as latin1.
 */
export class HpackEncoder {
  #started = false;

  /** Encodes [name, value, name, value, …] as one header block. */
  encode(fields: readonly string[]): Buffer {
    let bound = 1;
    for (let i = 0; i < fields.length; i++) bound += (fields[i] ?? '').length + 6;
    const out = scratchOf(bound);
    let o = 0;
    if (!this.#started) {
      out[o++] = 0x20; // dynamic table size update to 0
      this.#started = true;
    }
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const name = fields[i] ?? '';
      const value = fields[i + 1] ?? '';
      const exact = staticExact.get(`${name}\0${value}`);
      if (exact !== undefined) {
        o = encodeInt(exact, 7, 0x80, out, o);
        continue;
      }
      const nameIndex = staticName.get(name);
      if (nameIndex !== undefined) o = encodeInt(nameIndex, 4, 0, out, o);
      else {
        out[o++] = 0;
        o = encodeString(name, out, o);
      }
      o = encodeString(value, out, o);
    }
    return Buffer.from(out.subarray(0, o));
  }
}
