import { NetnsError, sys } from './errors.js';
import type { Netns } from './netns.js';
import { native } from './native.js';

/** `NETLINK_ROUTE`: links, addresses, routes and policy-routing rules. */
export const NETLINK_ROUTE = 0;

/**
 * One netlink exchange inside `netns`, without running a process: a socket of `protocol` is made in
 * the netns (the calling thread enters it and comes back within this call; failing to come back
 * aborts the process), `request` — one or more netlink messages, each asking for an ACK or a dump —
 * is sent, and replies are read until `replies` of them were terminal (NLMSG_ERROR, which carries
 * the ACK, or NLMSG_DONE). Returns the bytes received, for the caller to parse. Acks come without
 * the echoed request (NETLINK_CAP_ACK; their header still carries the request's sequence number) and
 * the socket's receive buffer is sized for `replies`, so thousands of acked messages fit one call.
 * Synchronous on the calling thread: the kernel answers while handling the send; receiving stops
 * with ERR_NETNS_TIMEOUT once 2 s in total have passed without `replies` terminal messages, and a
 * reply datagram over 64 KiB (the kernel splits dumps into datagrams of at most 32 KiB) fails with
 * errno EMSGSIZE rather than being cut.
 */
export function netlinkExchange(netns: Netns, protocol: number, request: Uint8Array, replies: number): Buffer {
  if (!Number.isInteger(protocol) || protocol < 0) throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `netlink protocol must be a non-negative integer, got ${String(protocol)}`);
  if (!Number.isInteger(replies) || replies < 1) throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', `netlink replies must be a positive integer, got ${String(replies)}`);
  if (!(request instanceof Uint8Array) || request.byteLength < 16) throw new NetnsError('ERR_NETNS_INVALID_ARGUMENT', 'netlink request must hold at least one 16-byte message header');
  const nsFd = netns.checkedFd();
  return sys(`netlinkExchange (protocol ${protocol}) in netns ${netns.describe()}`, () => native.netlinkExchange(nsFd, protocol, request, replies, netns.id));
}

/** An address on one of a netns's interfaces, as an RTM_GETADDR dump gives it. */
export interface NetnsAddress {
  family: 4 | 6;
  /** IPv4: the local address (IFA_LOCAL, which IFA_ADDRESS is not on a point-to-point link); IPv6: IFA_ADDRESS, RFC 5952 text. */
  address: string;
  prefixLength: number;
  /** rtnetlink scope: 0 global (a pod IP), 253 link, 254 host (loopback). */
  scope: number;
  ifindex: number;
}

const RTM_NEWADDR = 20;
const RTM_GETADDR = 22;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const AF_INET = 2;
const AF_INET6 = 10;

/**
 * The addresses of `netns`'s interfaces, both families, from one RTM_GETADDR dump made inside it
 * (netlinkExchange: no process needed in the netns). Throws NetnsError when the kernel answers the
 * dump with an error.
 */
export function listAddresses(netns: Netns): NetnsAddress[] {
  // nlmsghdr + ifaddrmsg (family AF_UNSPEC: every family), host byte order as netlink wants.
  const req = new Uint8Array(24);
  const w = new DataView(req.buffer);
  const le = littleEndian;
  w.setUint32(0, req.length, le);
  w.setUint16(4, RTM_GETADDR, le);
  w.setUint16(6, 0x301, le); // NLM_F_REQUEST | NLM_F_DUMP
  w.setUint32(8, 1, le);
  const reply = netlinkExchange(netns, NETLINK_ROUTE, req, 1);
  const r = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  const out: NetnsAddress[] = [];
  for (let at = 0; at + 16 <= reply.length; ) {
    const len = r.getUint32(at, le);
    const type = r.getUint16(at + 4, le);
    if (len < 16 || at + len > reply.length) break;
    if (type === NLMSG_ERROR && len >= 20) {
      const errno = -r.getInt32(at + 16, le);
      if (errno !== 0) throw new NetnsError('ERR_NETNS_SYSCALL', `address dump (RTM_GETADDR) in netns ${netns.describe()} failed: errno ${errno}`, { errno, syscall: 'netlink' });
    }
    if (type === NLMSG_DONE) break;
    if (type === RTM_NEWADDR && len >= 24) {
      const family = reply[at + 16];
      let local: string | undefined;
      let address: string | undefined;
      // rtattrs after the 8-byte ifaddrmsg.
      for (let a = at + 24; a + 4 <= at + len; ) {
        const alen = r.getUint16(a, le);
        if (alen < 4 || a + alen > at + len) break;
        const ip = ipText(family, reply.subarray(a + 4, a + alen));
        const atype = r.getUint16(a + 2, le);
        if (atype === IFA_LOCAL) local = ip;
        if (atype === IFA_ADDRESS) address = ip;
        a += (alen + 3) & ~3;
      }
      const ip = family === AF_INET ? (local ?? address) : address;
      if (ip !== undefined) {
        out.push({ family: family === AF_INET ? 4 : 6, address: ip, prefixLength: reply[at + 17]!, scope: reply[at + 19]!, ifindex: r.getUint32(at + 20, le) });
      }
    }
    at += (len + 3) & ~3;
  }
  return out;
}

const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function ipText(family: number | undefined, data: Buffer): string | undefined {
  if (family === AF_INET && data.length === 4) return `${data[0]}.${data[1]}.${data[2]}.${data[3]}`;
  if (family !== AF_INET6 || data.length !== 16) return undefined;
  // The WHATWG URL serializer writes IPv6 as RFC 5952 does: lowercase, longest zero run compressed.
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(data.readUInt16BE(i).toString(16));
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}
