/**
 * Just enough of pcap, IPv4/IPv6, TCP and the TLS record layer to assert what crossed a wire:
 * which flows there were, and whether each one's bytes are TLS 1.3 records and nothing else.
 */

export interface TcpSegment {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  seq: number;
  syn: boolean;
  payload: Buffer;
}

const LINKTYPE_ETHERNET = 1;
const LINKTYPE_LINUX_SLL = 113;
const LINKTYPE_LINUX_SLL2 = 276;

/** Every TCP segment in a classic pcap file (either byte order, µs or ns timestamps). */
export function parsePcap(file: Buffer): TcpSegment[] {
  if (file.length < 24) throw new Error(`pcap file is ${file.length} bytes: no global header`);
  const magic = file.readUInt32LE(0);
  let le: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true;
  else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false;
  else throw new Error(`not a pcap file (magic 0x${magic.toString(16)})`);
  const u32 = (off: number): number => (le ? file.readUInt32LE(off) : file.readUInt32BE(off));
  const linktype = u32(20) & 0xffff;
  const segments: TcpSegment[] = [];
  let off = 24;
  while (off + 16 <= file.length) {
    const caplen = u32(off + 8);
    const frame = file.subarray(off + 16, off + 16 + caplen);
    off += 16 + caplen;
    const ip = networkLayer(frame, linktype);
    const seg = ip === undefined ? undefined : tcpOf(ip.packet, ip.version);
    if (seg) segments.push(seg);
  }
  return segments;
}

function networkLayer(frame: Buffer, linktype: number): { packet: Buffer; version: 4 | 6 } | undefined {
  let etherType: number;
  let start: number;
  if (linktype === LINKTYPE_ETHERNET) {
    if (frame.length < 14) return undefined;
    etherType = frame.readUInt16BE(12);
    start = 14;
    if (etherType === 0x8100 && frame.length >= 18) {
      etherType = frame.readUInt16BE(16);
      start = 18;
    }
  } else if (linktype === LINKTYPE_LINUX_SLL) {
    if (frame.length < 16) return undefined;
    etherType = frame.readUInt16BE(14);
    start = 16;
  } else if (linktype === LINKTYPE_LINUX_SLL2) {
    if (frame.length < 20) return undefined;
    etherType = frame.readUInt16BE(0);
    start = 20;
  } else {
    throw new Error(`pcap link type ${linktype} is not supported (Ethernet, Linux SLL, SLL2 are)`);
  }
  if (etherType === 0x0800) return { packet: frame.subarray(start), version: 4 };
  if (etherType === 0x86dd) return { packet: frame.subarray(start), version: 6 };
  return undefined;
}

function tcpOf(packet: Buffer, version: 4 | 6): TcpSegment | undefined {
  let src: string;
  let dst: string;
  let tcp: Buffer;
  if (version === 4) {
    if (packet.length < 20 || packet[9] !== 6) return undefined;
    const ihl = ((packet[0] ?? 0) & 0x0f) * 4;
    const total = packet.readUInt16BE(2);
    src = [...packet.subarray(12, 16)].join('.');
    dst = [...packet.subarray(16, 20)].join('.');
    tcp = packet.subarray(ihl, Math.min(total, packet.length));
  } else {
    // No extension headers between IPv6 and TCP in this traffic.
    if (packet.length < 40 || packet[6] !== 6) return undefined;
    const v6 = (b: Buffer): string => Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16)).join(':');
    src = v6(packet.subarray(8, 24));
    dst = v6(packet.subarray(24, 40));
    tcp = packet.subarray(40, 40 + packet.readUInt16BE(4));
  }
  if (tcp.length < 20) return undefined;
  const dataOffset = ((tcp[12] ?? 0) >> 4) * 4;
  return {
    src,
    dst,
    sport: tcp.readUInt16BE(0),
    dport: tcp.readUInt16BE(2),
    seq: tcp.readUInt32BE(4),
    syn: ((tcp[13] ?? 0) & 0x02) !== 0,
    payload: tcp.subarray(dataOffset),
  };
}

export interface TcpStream {
  /** `src:sport>dst:dport` of this direction. */
  key: string;
  src: string;
  dst: string;
  sport: number;
  dport: number;
  /** The payload in sequence order, retransmissions dropped. */
  bytes: Buffer;
  /** The SYN was captured: `bytes` starts at the first byte of the connection (record boundaries hold). */
  fromStart: boolean;
}

/** One stream per direction of each connection, reassembled by sequence number. */
export function tcpStreams(segments: readonly TcpSegment[]): TcpStream[] {
  const byKey = new Map<string, { first: TcpSegment; isn?: number; parts: Map<number, Buffer> }>();
  for (const seg of segments) {
    const key = `${seg.src}:${seg.sport}>${seg.dst}:${seg.dport}`;
    let entry = byKey.get(key);
    if (!entry) byKey.set(key, (entry = { first: seg, parts: new Map() }));
    if (seg.syn) entry.isn = seg.seq;
    if (seg.payload.length > 0 && !entry.parts.has(seg.seq)) entry.parts.set(seg.seq, Buffer.from(seg.payload));
  }
  const streams: TcpStream[] = [];
  for (const [key, { first, isn, parts }] of byKey) {
    const base = isn !== undefined ? (isn + 1) >>> 0 : Math.min(...parts.keys());
    const ordered = [...parts].map(([seq, data]) => ({ rel: (seq - base) >>> 0, data })).sort((a, b) => a.rel - b.rel);
    const chunks: Buffer[] = [];
    let next = 0;
    for (const { rel, data } of ordered) {
      if (rel + data.length <= next) continue;
      chunks.push(data.subarray(Math.max(0, next - rel)));
      next = rel + data.length;
    }
    streams.push({ key, src: first.src, dst: first.dst, sport: first.sport, dport: first.dport, bytes: Buffer.concat(chunks), fromStart: isn !== undefined });
  }
  return streams;
}

export interface TlsRecord {
  /** 20 change_cipher_spec, 21 alert, 22 handshake, 23 application_data. */
  type: number;
  version: number;
  length: number;
  /** First handshake message type when type is 22 (1 ClientHello, 2 ServerHello). */
  handshakeType?: number;
  /** For a ServerHello: the version chosen in supported_versions (0x0304 = TLS 1.3). */
  selectedVersion?: number;
}

export interface TlsParse {
  records: TlsRecord[];
  /** Bytes after the last whole record (a capture may end mid-record); never junk in between. */
  trailing: number;
  /** Where parsing stopped on something that is not a TLS record, if it did. */
  error?: string;
}

/** Split one direction of a connection into TLS records; stops at the first byte that is not one. */
export function parseTlsRecords(bytes: Buffer): TlsParse {
  const records: TlsRecord[] = [];
  let off = 0;
  while (off + 5 <= bytes.length) {
    const type = bytes[off] ?? 0;
    const version = bytes.readUInt16BE(off + 1);
    const length = bytes.readUInt16BE(off + 3);
    if (type < 20 || type > 23 || (version !== 0x0301 && version !== 0x0303) || length > 16384 + 256) {
      return { records, trailing: bytes.length - off, error: `offset ${off}: bytes ${bytes.subarray(off, off + 8).toString('hex')} are not a TLS record header` };
    }
    if (off + 5 + length > bytes.length) break;
    const body = bytes.subarray(off + 5, off + 5 + length);
    const record: TlsRecord = { type, version, length };
    if (type === 22 && body.length > 0) {
      record.handshakeType = body[0];
      if (body[0] === 2) {
        const selected = serverHelloSelectedVersion(body);
        if (selected !== undefined) record.selectedVersion = selected;
      }
    }
    records.push(record);
    off += 5 + length;
  }
  return { records, trailing: bytes.length - off };
}

/** The supported_versions (43) extension of a ServerHello handshake message. */
function serverHelloSelectedVersion(msg: Buffer): number | undefined {
  // type(1) length(3) legacy_version(2) random(32) session_id<1> cipher(2) compression(1) extensions<2>
  let off = 4 + 2 + 32;
  if (off >= msg.length) return undefined;
  off += 1 + (msg[off] ?? 0);
  off += 2 + 1;
  if (off + 2 > msg.length) return undefined;
  const end = Math.min(msg.length, off + 2 + msg.readUInt16BE(off));
  off += 2;
  while (off + 4 <= end) {
    const ext = msg.readUInt16BE(off);
    const len = msg.readUInt16BE(off + 2);
    if (ext === 43 && len === 2) return msg.readUInt16BE(off + 4);
    off += 4 + len;
  }
  return undefined;
}
