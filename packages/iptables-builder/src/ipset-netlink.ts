import { canonicalAddress } from './address.js';
import { IptablesError } from './errors.js';
import { concat as cat, type NetlinkExchange } from './rtnetlink.js';

/** One ipset entry: `add <set> <ip> comment "<comment>"`. */
export interface IpsetEntry {
  readonly set: string;
  readonly ip: string;
  readonly comment?: string;
}

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/ipset/ip_set.h>
const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_IPSET = 6;
const IPSET_CMD_ADD = 9;
const IPSET_PROTOCOL = 6;
const IPSET_ATTR_PROTOCOL = 1;
const IPSET_ATTR_SETNAME = 2;
const IPSET_ATTR_DATA = 7;
const IPSET_ATTR_IP = 1;
const IPSET_ATTR_COMMENT = 26;
const IPSET_ATTR_IPADDR_IPV4 = 1;
const IPSET_ATTR_IPADDR_IPV6 = 2;
const NLA_F_NESTED = 0x8000;
const NLA_F_NET_BYTEORDER = 0x4000;
const NLMSG_ERROR = 2;
const F_REQUEST = 0x1;
const F_ACK = 0x4;
/** IPSET_ERR_EXIST, "element already added" (4105 is IPSET_ERR_INVALID_NETMASK): `-exist` ignores it. */
const IPSET_ERR_EXIST = 4103;
const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function attr(type: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + data.length + ((4 - (data.length % 4)) % 4));
  const v = new DataView(out.buffer);
  v.setUint16(0, 4 + data.length, LE);
  v.setUint16(2, type, LE);
  out.set(data, 4);
  return out;
}
const cstr = (s: string): Uint8Array => new TextEncoder().encode(`${s}\0`);

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

/**
 * `ipset -exist add` of every entry in ONE netlink exchange (NETLINK_NETFILTER), no process: the
 * node agent's probe-ipset entry per pod. An entry already there is no error (`-exist`); any other
 * refusal (no such set, wrong family) throws naming the entry and the kernel's error number.
 */
export async function ipsetAdd(exchange: NetlinkExchange, entries: readonly IpsetEntry[]): Promise<void> {
  // The kernel queues every ack before the first receive: ~200 of them fill a default receive
  // buffer (ENOBUFS, acks lost although the adds went in), so larger batches go in several exchanges.
  for (let at = 0; at < entries.length; at += MAX_PER_EXCHANGE) await addChunk(exchange, entries.slice(at, at + MAX_PER_EXCHANGE));
}

/** Entries per exchange: their acks stay well inside a default 208 KiB netlink receive buffer. */
const MAX_PER_EXCHANGE = 64;

async function addChunk(exchange: NetlinkExchange, entries: readonly IpsetEntry[]): Promise<void> {
  const messages = entries.map((e, i) => {
    if (!/^[\w.:-]{1,31}$/.test(e.set)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid ipset name ${JSON.stringify(e.set)}`);
    const ip = addressBytes(e.ip);
    const data = cat([
      attr(IPSET_ATTR_IP | NLA_F_NESTED, attr(ip.type | NLA_F_NET_BYTEORDER, ip.bytes)),
      ...(e.comment === undefined ? [] : [attr(IPSET_ATTR_COMMENT, cstr(e.comment))]),
    ]);
    // nfgenmsg: family AF_INET (the set decides), version 0, res_id 0.
    const body = cat([Uint8Array.from([2, 0, 0, 0]), attr(IPSET_ATTR_PROTOCOL, Uint8Array.of(IPSET_PROTOCOL)), attr(IPSET_ATTR_SETNAME, cstr(e.set)), attr(IPSET_ATTR_DATA | NLA_F_NESTED, data)]);
    const msg = new Uint8Array(16 + body.length);
    const v = new DataView(msg.buffer);
    v.setUint32(0, msg.length, LE);
    v.setUint16(4, (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD, LE);
    v.setUint16(6, F_REQUEST | F_ACK, LE);
    v.setUint32(8, i + 1, LE);
    msg.set(body, 16);
    return msg;
  });
  const reply = await exchange(cat(messages), messages.length, NETLINK_NETFILTER);
  const v = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  let acked = 0;
  for (let at = 0; at + 16 <= reply.length; ) {
    const len = v.getUint32(at, LE);
    if (len < 16 || at + len > reply.length) break;
    if (v.getUint16(at + 4, LE) === NLMSG_ERROR && len >= 20) {
      acked++;
      const errno = -v.getInt32(at + 16, LE);
      const entry = entries[v.getUint32(at + 8, LE) - 1];
      if (errno !== 0 && errno !== IPSET_ERR_EXIST) {
        throw Object.assign(new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset add ${entry?.set} ${entry?.ip} refused over netlink: error ${errno}`), { errno });
      }
    }
    at += (len + 3) & ~3;
  }
  if (acked !== entries.length) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `ipset add: ${acked} of ${entries.length} entries acknowledged`);
}
