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
