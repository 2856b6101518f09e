import { IptablesError, type IptablesErrorCode } from './errors.js';

// <linux/netlink.h>: what every netlink family here (rtnetlink, ipset, nftables) shares.
export const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const F_REQUEST = 0x1;
export const F_ACK = 0x4;
export const F_REPLACE = 0x100;
export const F_EXCL = 0x200;
export const F_CREATE = 0x400;
export const F_APPEND = 0x800;
export const F_DUMP = 0x300;
export const NLA_F_NESTED = 0x8000;
export const NLA_TYPE_MASK = 0x3fff;
export const NETLINK_NETFILTER = 12;

/** Netlink messages or attributes laid end to end. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One request message; `body` is the family header followed by attributes. */
export function message(type: number, flags: number, seq: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length, LE);
  v.setUint16(4, type, LE);
  v.setUint16(6, flags | F_REQUEST, LE);
  v.setUint32(8, seq, LE);
  out.set(body, 16);
  return out;
}

export interface NetlinkReply {
  readonly type: number;
  readonly seq: number;
  readonly payload: Uint8Array;
}

/** The messages of a reply buffer, NLMSG_DONE left out; a cut message throws `code` naming `what`. */
export function replies(bytes: Uint8Array, code: IptablesErrorCode, what: string): NetlinkReply[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: NetlinkReply[] = [];
  for (let at = 0; at + 16 <= bytes.length; ) {
    const len = v.getUint32(at, LE);
    if (len < 16 || at + len > bytes.length) throw new IptablesError(code, `malformed ${what} reply (message length ${len} at ${at} of ${bytes.length})`);
    const type = v.getUint16(at + 4, LE);
    if (type !== NLMSG_DONE) out.push({ type, seq: v.getUint32(at + 8, LE), payload: bytes.subarray(at + 16, at + len) });
    at += (len + 3) & ~3;
  }
  return out;
}

/** The errno an NLMSG_ERROR reply carries (0: the ACK). */
export function errnoOf(reply: NetlinkReply): number {
  return -new DataView(reply.payload.buffer, reply.payload.byteOffset, 4).getInt32(0, LE);
}

export interface NetlinkAttribute {
  /** Type without the NESTED/NET_BYTEORDER flags. */
  readonly type: number;
  readonly data: Uint8Array;
  /** The whole attribute as received (header with its flags, unpadded): re-sent as is. */
  readonly raw: Uint8Array;
}

/** Every attribute of `bytes`; stops at a cut one. */
export function attributes(bytes: Uint8Array): NetlinkAttribute[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: NetlinkAttribute[] = [];
  for (let at = 0; at + 4 <= bytes.length; ) {
    const len = v.getUint16(at, LE);
    if (len < 4 || at + len > bytes.length) break;
    out.push({ type: v.getUint16(at + 2, LE) & NLA_TYPE_MASK, data: bytes.subarray(at + 4, at + len), raw: bytes.subarray(at, at + len) });
    at += (len + 3) & ~3;
  }
  return out;
}

/** One attribute, padded to 4 bytes. */
export function attr(type: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + data.length + ((4 - (data.length % 4)) % 4));
  const v = new DataView(out.buffer);
  v.setUint16(0, 4 + data.length, LE);
  v.setUint16(2, type, LE);
  out.set(data, 4);
  return out;
}

/** A received attribute padded to 4 bytes, to lay beside others. */
export function padded(a: NetlinkAttribute): Uint8Array {
  return a.raw.length % 4 === 0 ? a.raw : concat([a.raw, new Uint8Array(4 - (a.raw.length % 4))]);
}

/** A nested attribute holding `parts`. */
export function nest(type: number, parts: readonly Uint8Array[]): Uint8Array {
  return attr(type | NLA_F_NESTED, concat(parts));
}
