import * as dnsPacket from 'dns-packet';
import type { Answer, DecodedPacket, OptAnswer, Question } from 'dns-packet';

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export type Rcode = keyof typeof RCODE;
const RCODE_NAMES = new Map<number, Rcode>(Object.entries(RCODE).map(([k, v]) => [v, k as Rcode]));

const HEADER = 12;
const QR = 0x8000;
const TC = 0x0200;
/** Our EDNS UDP payload size (the DNS flag day 2020 value, safe from fragmentation). */
export const EDNS_UDP_SIZE = 1232;

const OPT: OptAnswer = { type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_SIZE, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] };

/** A query the proxy can work on, or why not. */
export type ParsedQuery =
  | { kind: 'query'; packet: DecodedPacket; question: Question; udpLimit: number; edns: boolean }
  /** Not a query at all (too short, or a response): dropped without an answer. */
  | { kind: 'drop'; reason: string }
  /** A query we refuse to work on: answered with `rcode` and no question. */
  | { kind: 'error'; rcode: Rcode; reason: string };

/** Decodes a client's message; never throws. */
export function parseQuery(buf: Buffer): ParsedQuery {
  if (buf.length < HEADER) return { kind: 'drop', reason: `message of ${buf.length} bytes is shorter than a DNS header` };
  const flags = buf.readUInt16BE(2);
  if (flags & QR) return { kind: 'drop', reason: 'message is a response, not a query' };
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { kind: 'error', rcode: 'NOTIMP', reason: `opcode ${opcode} is not supported` };
  let packet: DecodedPacket;
  try {
    packet = dnsPacket.decode(buf);
  } catch (err) {
    return { kind: 'error', rcode: 'FORMERR', reason: `undecodable query: ${(err as Error).message}` };
  }
  const qs = packet.questions ?? [];
  if (qs.length !== 1) return { kind: 'error', rcode: 'FORMERR', reason: `query has ${qs.length} questions, expected 1` };
  const opt = (packet.additionals ?? []).find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
  const udpLimit = opt ? Math.min(4096, Math.max(512, opt.udpPayloadSize ?? 512)) : 512;
  return { kind: 'query', packet, question: qs[0]!, udpLimit, edns: opt !== undefined };
}

/** An answer with no question section, for queries we could not decode: header only. */
export function headerOnlyResponse(query: Buffer, rcode: Rcode): Buffer {
  const out = Buffer.alloc(HEADER);
  out.writeUInt16BE(query.readUInt16BE(0), 0);
  // Keep opcode and RD from the query; set QR and RA.
  out.writeUInt16BE(QR | (query.readUInt16BE(2) & 0x7900) | 0x0080 | RCODE[rcode], 2);
  return out;
}

/**
 * A response to `q`: the question echoed, `answers`, AA when we are the authority for the name, and
 * an OPT record when the client sent one. Over UDP a response that does not fit the client's limit
 * goes out truncated (TC, no answers), so the client repeats the query over TCP.
 */
export function buildResponse(
  q: Extract<ParsedQuery, { kind: 'query' }>,
  rcode: Rcode,
  answers: Answer[],
  o: { authoritative: boolean; transport: 'udp' | 'tcp' },
): Buffer {
  const rd = q.packet.flag_rd ? dnsPacket.RECURSION_DESIRED : 0;
  const base = {
    type: 'response' as const,
    id: q.packet.id ?? 0,
    flags: rd | dnsPacket.RECURSION_AVAILABLE | (o.authoritative ? dnsPacket.AUTHORITATIVE_ANSWER : 0) | RCODE[rcode],
    questions: [q.question],
    additionals: q.edns ? [OPT] : [],
  };
  const full = dnsPacket.encode({ ...base, answers });
  if (o.transport === 'tcp' || full.length <= q.udpLimit) return full;
  return dnsPacket.encode({ ...base, flags: base.flags | dnsPacket.TRUNCATED_RESPONSE, answers: [] });
}

/** The rcode of a raw response (for metrics and logs); undefined when too short. */
export function responseRcode(buf: Buffer): Rcode | undefined {
  if (buf.length < HEADER) return undefined;
  const code = buf.readUInt16BE(2) & 0xf;
  return RCODE_NAMES.get(code);
}

export function isTruncated(buf: Buffer): boolean {
  return buf.length >= HEADER && (buf.readUInt16BE(2) & TC) !== 0;
}

export function isResponse(buf: Buffer): boolean {
  return buf.length >= HEADER && (buf.readUInt16BE(2) & QR) !== 0;
}

/** A copy of `buf` with its 16-bit message id replaced. */
export function withId(buf: Buffer, id: number): Buffer {
  const out = Buffer.from(buf);
  out.writeUInt16BE(id, 0);
  return out;
}
