import { canonicalAddress } from './address.js';
import { IptablesError } from './errors.js';
import { attr, concat as cat, F_ACK, F_DUMP, F_REQUEST, LE, NETLINK_NETFILTER, NLA_F_NESTED, NLMSG_DONE, NLMSG_ERROR } from './netlink-codec.js';
import type { NetlinkExchange } from './rtnetlink.js';

/** One ipset entry: `add <set> <ip> comment "<comment>"`. */
export interface IpsetEntry {
  readonly set: string;
  readonly ip: string;
  readonly comment?: string;
}

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/ipset/ip_set.h>
const NFNL_SUBSYS_IPSET = 6;
const IPSET_CMD_LIST = 7;
const IPSET_CMD_ADD = 9;
const IPSET_CMD_DEL = 10;
const IPSET_PROTOCOL = 6;
const IPSET_ATTR_PROTOCOL = 1;
const IPSET_ATTR_SETNAME = 2;
const IPSET_ATTR_DATA = 7;
const IPSET_ATTR_ADT = 8;
const IPSET_ATTR_IP = 1;
const IPSET_ATTR_COMMENT = 26;
const IPSET_ATTR_IPADDR_IPV4 = 1;
const IPSET_ATTR_IPADDR_IPV6 = 2;
const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = 0x3fff;
/**
 * IPSET_ERR_EXIST: "element already added" to an add, "element is missing" to a del (4105 is
 * IPSET_ERR_INVALID_NETMASK). Without NLM_F_EXCL the kernel already treats both as `-exist` and
 * answers 0 (an add then overwrites the comment); accepted anyway, as `ipset -exist` does.
 */
const IPSET_ERR_EXIST = 4103;
const ENOENT = 2;

const cstr = (s: string): Uint8Array => new TextEncoder().encode(`${s}\0`);

function checkSetName(set: string): void {
  if (!/^[\w.:-]{1,31}$/.test(set)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid ipset name ${JSON.stringify(set)}`);
}

function addressBytes(ip: string): { type: number; bytes: Uint8Array } {
  const canon = canonicalAddress(ip, ip.includes(':') ? 'ipv6' : 'ipv4');
  if (canon === undefined) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid ipset entry address ${JSON.stringify(ip)}`);
  if (!canon.includes(':')) return { type: IPSET_ATTR_IPADDR_IPV4, bytes: Uint8Array.from(canon.split('.').map(Number)) };
  const [head = '', tail = ''] = canon.split('::');
  const groups = (s: string): number[] => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const h = groups(head);
  const t = groups(tail);
  const all = canon.includes('::') ? [...h, ...Array<number>(8 - h.length - t.length).fill(0), ...t] : h;
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => {
    bytes[i * 2] = g >> 8;
    bytes[i * 2 + 1] = g & 0xff;
  });
  return { type: IPSET_ATTR_IPADDR_IPV6, bytes };
}

/** An address attribute's bytes as text, as `ipset save` prints it (RFC 5952 for IPv6). */
function addressText(bytes: Uint8Array): string | undefined {
  if (bytes.length === 4) return Array.from(bytes).join('.');
  if (bytes.length !== 16) return undefined;
  const groups = Array.from({ length: 8 }, (_, i) => (((bytes[i * 2] ?? 0) << 8) | (bytes[i * 2 + 1] ?? 0)).toString(16));
  return canonicalAddress(groups.join(':'), 'ipv6');
}

/** One request message of the ipset subsystem (nfgenmsg: AF_INET, the set decides the family). */
function request(cmd: number, flags: number, seq: number, attrs: readonly Uint8Array[]): Uint8Array {
  const body = cat([Uint8Array.from([2, 0, 0, 0]), attr(IPSET_ATTR_PROTOCOL, Uint8Array.of(IPSET_PROTOCOL)), ...attrs]);
  const msg = new Uint8Array(16 + body.length);
  const v = new DataView(msg.buffer);
  v.setUint32(0, msg.length, LE);
  v.setUint16(4, (NFNL_SUBSYS_IPSET << 8) | cmd, LE);
  v.setUint16(6, F_REQUEST | flags, LE);
  v.setUint32(8, seq, LE);
  msg.set(body, 16);
  return msg;
}

/** Attributes of a netlink attribute stream, type without the NESTED/NET_BYTEORDER flags. */
function* attributes(bytes: Uint8Array): Generator<{ type: number; data: Uint8Array }> {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at + 4 <= bytes.length; ) {
    const len = v.getUint16(at, LE);
    if (len < 4 || at + len > bytes.length) return;
    yield { type: v.getUint16(at + 2, LE) & NLA_TYPE_MASK, data: bytes.subarray(at + 4, at + len) };
    at += (len + 3) & ~3;
  }
}

/** Netlink messages of a reply: type, sequence and payload. */
function* messages(reply: Uint8Array): Generator<{ type: number; seq: number; payload: Uint8Array }> {
  const v = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  for (let at = 0; at + 16 <= reply.length; ) {
    const len = v.getUint32(at, LE);
    if (len < 16 || at + len > reply.length) {
      throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `malformed ipset netlink reply (message length ${len} at ${at} of ${reply.length})`);
    }
    yield { type: v.getUint16(at + 4, LE), seq: v.getUint32(at + 8, LE), payload: reply.subarray(at + 16, at + len) };
    at += (len + 3) & ~3;
  }
}

const errnoOf = (payload: Uint8Array): number => (payload.length >= 4 ? -new DataView(payload.buffer, payload.byteOffset, 4).getInt32(0, LE) : 0);

/** The set named does not exist (code `ERR_IPTABLES_IPSET_NOT_FOUND`). */
export class IpsetNotFoundError extends IptablesError {
  constructor(readonly set: string) {
    super('ERR_IPTABLES_IPSET_NOT_FOUND', `ipset ${set} does not exist (listing it over netlink: errno ${ENOENT}, ENOENT)`);
    this.name = 'IpsetNotFoundError';
  }
}

/**
 * `ipset save <set>` without a process: every entry of `set` with its comment, in ONE netlink exchange (IPSET_CMD_LIST dump on
 * NETLINK_NETFILTER, the kernel splitting it into as many messages as it needs), IPv4 or IPv6
 * as the set is. A set that does not exist throws IpsetNotFoundError (code
 * `ERR_IPTABLES_IPSET_NOT_FOUND`); any other refusal throws naming the set and the errno.
 */
export async function ipsetList(exchange: NetlinkExchange, set: string): Promise<IpsetEntry[]> {
  checkSetName(set);
  const reply = await exchange(request(IPSET_CMD_LIST, F_DUMP, 1, [attr(IPSET_ATTR_SETNAME, cstr(set))]), 1, NETLINK_NETFILTER);
  const out: IpsetEntry[] = [];
  let done = false;
  for (const m of messages(reply)) {
    if (m.type === NLMSG_ERROR || m.type === NLMSG_DONE) {
      // A refused dump is an error message; a dump that failed midway ends with a negative DONE.
      const errno = errnoOf(m.payload);
      if (errno === ENOENT) throw new IpsetNotFoundError(set);
      if (errno > 0) throw Object.assign(new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset list ${set} refused over netlink: error ${errno}`), { errno });
      done = true;
      continue;
    }
    if (m.type !== ((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST)) continue;
    for (const top of attributes(m.payload.subarray(4))) {
      if (top.type !== IPSET_ATTR_ADT) continue;
      for (const data of attributes(top.data)) {
        if (data.type !== IPSET_ATTR_DATA) continue;
        let ip: string | undefined;
        let comment: string | undefined;
        for (const a of attributes(data.data)) {
          if (a.type === IPSET_ATTR_IP) {
            for (const addr of attributes(a.data)) if (addr.type === IPSET_ATTR_IPADDR_IPV4 || addr.type === IPSET_ATTR_IPADDR_IPV6) ip = addressText(addr.data);
          } else if (a.type === IPSET_ATTR_COMMENT) {
            const end = a.data.indexOf(0);
            comment = new TextDecoder().decode(end === -1 ? a.data : a.data.subarray(0, end));
          }
        }
        if (ip === undefined) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset list ${set}: an entry without an IPv4/IPv6 address (not a hash:ip set?)`);
        out.push(comment === undefined ? { set, ip } : { set, ip, comment });
      }
    }
  }
  if (!done) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset list ${set}: the netlink dump did not end (no NLMSG_DONE)`);
  return out;
}

/**
 * `ipset -exist add` of every entry in ONE netlink exchange (NETLINK_NETFILTER), no process: the
 * node agent's probe-ipset entry per pod. An entry already there is no error and takes the new
 * comment (`-exist`); any other refusal (no such set, wrong family) throws naming the entry and the
 * kernel's error number.
 */
export function ipsetAdd(exchange: NetlinkExchange, entries: readonly IpsetEntry[]): Promise<void> {
  return adt(exchange, IPSET_CMD_ADD, entries);
}

/**
 * `ipset -exist del` of every entry (its comment is ignored) in one netlink exchange: an entry not
 * in the set is no error; any other refusal (no such set, wrong family) throws naming the entry
 * and the kernel's error number.
 */
export function ipsetDel(exchange: NetlinkExchange, entries: readonly Pick<IpsetEntry, 'set' | 'ip'>[]): Promise<void> {
  return adt(exchange, IPSET_CMD_DEL, entries);
}

async function adt(exchange: NetlinkExchange, cmd: number, entries: readonly IpsetEntry[]): Promise<void> {
  // The kernel queues every ack before the first receive: ~200 of them fill a default receive
  // buffer (ENOBUFS, acks lost although the changes went in), so larger batches go in several exchanges.
  for (let at = 0; at < entries.length; at += MAX_PER_EXCHANGE) await adtChunk(exchange, cmd, entries.slice(at, at + MAX_PER_EXCHANGE));
}

/** Entries per exchange: their acks stay well inside a default 208 KiB netlink receive buffer. */
const MAX_PER_EXCHANGE = 64;

async function adtChunk(exchange: NetlinkExchange, cmd: number, entries: readonly IpsetEntry[]): Promise<void> {
  const what = cmd === IPSET_CMD_ADD ? 'add' : 'del';
  const parts = entries.map((e, i) => {
    checkSetName(e.set);
    const ip = addressBytes(e.ip);
    const data = cat([
      attr(IPSET_ATTR_IP | NLA_F_NESTED, attr(ip.type | NLA_F_NET_BYTEORDER, ip.bytes)),
      ...(e.comment === undefined || cmd !== IPSET_CMD_ADD ? [] : [attr(IPSET_ATTR_COMMENT, cstr(e.comment))]),
    ]);
    // No NLM_F_EXCL: the kernel's IPSET_FLAG_EXIST, i.e. `ipset -exist`.
    return request(cmd, F_ACK, i + 1, [attr(IPSET_ATTR_SETNAME, cstr(e.set)), attr(IPSET_ATTR_DATA | NLA_F_NESTED, data)]);
  });
  const reply = await exchange(cat(parts), parts.length, NETLINK_NETFILTER);
  let acked = 0;
  for (const m of messages(reply)) {
    if (m.type !== NLMSG_ERROR || m.payload.length < 4) continue;
    acked++;
    const errno = errnoOf(m.payload);
    const entry = entries[m.seq - 1];
    if (errno !== 0 && errno !== IPSET_ERR_EXIST) {
      throw Object.assign(new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset ${what} ${entry?.set} ${entry?.ip} refused over netlink: error ${errno}${describeErrno(errno)}`), { errno });
    }
  }
  if (acked !== entries.length) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset ${what}: ${acked} of ${entries.length} entries acknowledged`);
}

/** The kernel's names for the errors an entry change meets most. */
function describeErrno(errno: number): string {
  const names: Record<number, string> = {
    2: 'ENOENT, no such set',
    4097: 'IPSET_ERR_PROTOCOL, e.g. an address of the other family than the set',
    4102: 'IPSET_ERR_TYPE_MISMATCH',
    4106: 'IPSET_ERR_INVALID_FAMILY',
  };
  const name = names[errno];
  return name ? ` (${name})` : '';
}
