import { netlinkExchange, type Netns } from '@weir/netns';

// <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
const NETLINK_NETFILTER = 12;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const NFT_MSG_NEWRULE = (10 << 8) | 6;
const NFT_MSG_GETRULE = (10 << 8) | 7;
const NFTA_RULE_EXPRESSIONS = 4;
const NFTA_LIST_ELEM = 1;
const NFTA_EXPR_NAME = 1;
const NFTA_EXPR_DATA = 2;
const NFTA_TARGET_NAME = 1;
/** The nested and byte-order flags of an attribute type (NLA_F_NESTED, NLA_F_NET_BYTEORDER). */
const NLA_TYPE_MASK = 0x3fff;
const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Attributes in `buf[start, end)`: type (flags masked) → value, the first of each type. */
function attrs(buf: Buffer, start: number, end: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let at = start; at + 4 <= end; ) {
    const len = LE ? buf.readUInt16LE(at) : buf.readUInt16BE(at);
    const type = (LE ? buf.readUInt16LE(at + 2) : buf.readUInt16BE(at + 2)) & NLA_TYPE_MASK;
    if (len < 4 || at + len > end) break;
    if (!out.has(type)) out.set(type, buf.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
  return out;
}

/** The NFTA_LIST_ELEM values of a nested list (every one, unlike attrs()). */
function listElems(list: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at + 4 <= list.length; ) {
    const len = LE ? list.readUInt16LE(at) : list.readUInt16BE(at);
    const type = (LE ? list.readUInt16LE(at + 2) : list.readUInt16BE(at + 2)) & NLA_TYPE_MASK;
    if (len < 4 || at + len > list.length) break;
    if (type === NFTA_LIST_ELEM) out.push(list.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
  return out;
}

const cstr = (b: Buffer | undefined): string | undefined => (b === undefined ? undefined : b.toString('latin1').replace(/\0.*$/s, ''));

/**
 * Whether the netns' nftables rules (native nft, or iptables-nft's compat targets) hold a TPROXY
 * target: the seed's inbound capture, which delivers only to transparent listeners. Rules loaded
 * through legacy iptables are not seen (false). Throws the netlink error when the dump fails
 * (no CAP_NET_ADMIN in the netns: EPERM).
 */
export function netnsHasTproxyRules(netns: Netns): boolean {
  const req = Buffer.alloc(20);
  const u32 = (v: number, at: number): number => (LE ? req.writeUInt32LE(v, at) : req.writeUInt32BE(v, at));
  const u16 = (v: number, at: number): number => (LE ? req.writeUInt16LE(v, at) : req.writeUInt16BE(v, at));
  u32(req.length, 0);
  u16(NFT_MSG_GETRULE, 4);
  u16(NLM_F_REQUEST | NLM_F_DUMP, 6);
  u32(1, 8);
  // nfgenmsg: NFPROTO_UNSPEC (every family), NFNETLINK_V0, res_id 0.
  const reply = netlinkExchange(netns, NETLINK_NETFILTER, req, 1);
  for (let at = 0; at + 16 <= reply.length; ) {
    const len = LE ? reply.readUInt32LE(at) : reply.readUInt32BE(at);
    const type = LE ? reply.readUInt16LE(at + 4) : reply.readUInt16BE(at + 4);
    if (len < 16 || at + len > reply.length) break;
    if (type === NLMSG_ERROR) {
      const errno = -(LE ? reply.readInt32LE(at + 16) : reply.readInt32BE(at + 16));
      if (errno !== 0) throw Object.assign(new Error(`nftables rule dump failed: errno ${errno}`), { errno });
    } else if (type === NLMSG_DONE) {
      break;
    } else if (type === NFT_MSG_NEWRULE) {
      // After the 16-byte header and the 4-byte nfgenmsg.
      const exprs = attrs(reply, at + 20, at + len).get(NFTA_RULE_EXPRESSIONS);
      for (const e of exprs ? listElems(exprs) : []) {
        const a = attrs(e, 0, e.length);
        const name = cstr(a.get(NFTA_EXPR_NAME));
        if (name === 'tproxy') return true;
        const data = a.get(NFTA_EXPR_DATA);
        if (name === 'target' && data && cstr(attrs(data, 0, data.length).get(NFTA_TARGET_NAME)) === 'TPROXY') return true;
      }
    }
    at += (len + 3) & ~3;
  }
  return false;
}
