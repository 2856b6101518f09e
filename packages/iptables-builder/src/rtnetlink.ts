import { IptablesError } from './errors.js';
import { attributes as attributesOf, concat, F_ACK, F_CREATE, F_DUMP, F_EXCL, F_REPLACE, LE, message, NETLINK_NETFILTER, NLMSG_ERROR, replies as netlinkReplies } from './netlink-codec.js';
import type { Family } from './model.js';
import { Ipv6LoopbackDisabledError, type FwmarkRule, type LocalRoute, type PolicyRouting } from './routing.js';

/**
 * Sends netlink messages in the netns being applied to and returns the raw replies, e.g.
 * `(req, n, protocol = NETLINK_ROUTE) => netlinkExchange(netns, protocol, req, n)` from
 * @weir/netns. `replies` is how many terminal replies (ACK/error or end of dump) to wait for: one
 * per message sent. `protocol`: NETLINK_ROUTE (0) when absent, NETLINK_NETFILTER (12) for nftables.
 */
export type NetlinkExchange = (request: Uint8Array, replies: number, protocol?: number) => Uint8Array | Promise<Uint8Array>;

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
/** The replies of an exchange (a cut message throws, naming rtnetlink). */
const parse = (bytes: Uint8Array) => netlinkReplies(bytes, 'ERR_IPTABLES_ROUTING_FAILED', 'rtnetlink');

const NFT_MSG_GETGEN = (10 << 8) | 16;
const NFT_MSG_NEWGEN = (10 << 8) | 15;
const NFTA_GEN_ID = 1;

// <linux/netlink.h>, <linux/rtnetlink.h>, <linux/fib_rules.h>
const RTM_NEWLINK = 16;
const RTM_GETLINK = 18;
const RTM_NEWROUTE = 24;
const RTM_DELROUTE = 25;
const RTM_GETROUTE = 26;
const RTM_NEWRULE = 32;
const RTM_DELRULE = 33;
const RTM_GETRULE = 34;
const RTA_OIF = 4;
const RTA_TABLE = 15;
const FRA_PRIORITY = 6;
const FRA_FWMARK = 10;
const FRA_TABLE = 15;
const FRA_FWMASK = 16;
const FRA_SUPPRESS_IFGROUP = 13;
const FRA_SUPPRESS_PREFIXLEN = 14;
/** Selectors a plain `fwmark … lookup …` rule lacks: iif, flow, tun_id, oif, l3mdev, uidrange, ipproto, sport, dport. */
const RULE_SELECTORS = new Set([3, 11, 12, 17, 19, 20, 22, 23, 24]);
/** FRA_SUPPRESS_* as the kernel reports them when unset (-1). */
const NONE = 0xffffffff;
const FIB_RULE_INVERT = 0x2;
const FR_ACT_TO_TBL = 1;
const RTN_LOCAL = 2;
const RTPROT_BOOT = 3;
const RT_SCOPE_HOST = 254;
const RT_SCOPE_NOWHERE = 255;
/** The loopback device's index in every netns (LOOPBACK_IFINDEX). */
const LO_IFINDEX = 1;
const EEXIST = 17;
const EACCES = 13;
// <linux/if_link.h>, <linux/ipv6.h>: a link's name, and its IPv6 devconf array (one s32 per DEVCONF_*).
const IFLA_IFNAME = 3;
const IFLA_AF_SPEC = 26;
const IFLA_INET6_CONF = 2;
const DEVCONF_DISABLE_IPV6 = 26;

const AF = { ipv4: 2, ipv6: 10 } as const;

/** Policy routing of one netns as rtnetlink reports it (what the diff needs of it). */
export interface RoutingState {
  readonly rules: readonly FwmarkRule[];
  /** Local routes through `lo`, by family and table (the only kind Weir installs). */
  readonly routes: readonly LocalRoute[];
}

/** A 12-byte family header (fib_rule_hdr and rtmsg have the same shape) plus u32 attributes. */
function body(header: readonly number[], attrs: readonly [number, number][]): Uint8Array {
  const out = new Uint8Array(12 + attrs.length * 8);
  out.set(header, 0);
  const v = new DataView(out.buffer);
  attrs.forEach(([type, value], i) => {
    v.setUint16(12 + i * 8, 8, LE);
    v.setUint16(14 + i * 8, type, LE);
    v.setUint32(16 + i * 8, value >>> 0, LE);
  });
  return out;
}

function ruleBody(rule: FwmarkRule): Uint8Array {
  // family, dst_len, src_len, tos, table, res1, res2, action; flags (u32) stays 0.
  const header = [AF[rule.family], 0, 0, 0, rule.table < 256 ? rule.table : 0, 0, 0, FR_ACT_TO_TBL];
  return body(header, [
    [FRA_PRIORITY, rule.priority],
    [FRA_FWMARK, rule.fwmark],
    [FRA_FWMASK, rule.mask],
    [FRA_TABLE, rule.table],
  ]);
}

function checkRoute(route: LocalRoute): void {
  const any = route.family === 'ipv4' ? '0.0.0.0/0' : '::/0';
  if (route.destination !== any || route.device !== 'lo') {
    throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `rtnetlink routing handles only "local ${any} dev lo", got local ${route.destination} dev ${route.device}`);
  }
}

function routeBody(route: LocalRoute, op: 'replace' | 'del'): Uint8Array {
  checkRoute(route);
  // As `ip route`: a delete matches any protocol and scope.
  const header = [AF[route.family], 0, 0, 0, route.table < 256 ? route.table : 0, op === 'del' ? 0 : RTPROT_BOOT, op === 'del' ? RT_SCOPE_NOWHERE : RT_SCOPE_HOST, RTN_LOCAL];
  return body(header, [
    [RTA_TABLE, route.table],
    [RTA_OIF, LO_IFINDEX],
  ]);
}

/** A change to make: `ip rule add/del` or `ip route replace/del`, as one message. */
export type RoutingChange =
  | { readonly op: 'add' | 'del'; readonly rule: FwmarkRule }
  | { readonly op: 'replace' | 'del'; readonly route: LocalRoute };

/**
 * Sends `changes` in one exchange. The kernel handles each message on its own, so a refused one
 * (e.g. EEXIST for a rule already there) does not stop the rest: returns the refused ones.
 */
export async function sendRouting(exchange: NetlinkExchange, changes: readonly RoutingChange[]): Promise<{ change: RoutingChange; errno: number }[]> {
  if (!changes.length) return [];
  const parts = changes.map((c, i) => {
    if ('rule' in c) return message(c.op === 'add' ? RTM_NEWRULE : RTM_DELRULE, F_ACK | (c.op === 'add' ? F_CREATE | F_EXCL : 0), i + 1, ruleBody(c.rule));
    return message(c.op === 'replace' ? RTM_NEWROUTE : RTM_DELROUTE, F_ACK | (c.op === 'replace' ? F_CREATE | F_REPLACE : 0), i + 1, routeBody(c.route, c.op));
  });
  const refused: { change: RoutingChange; errno: number }[] = [];
  const acked = new Set<number>();
  for (const r of parse(await exchange(concat(parts), parts.length))) {
    if (r.type !== NLMSG_ERROR) continue;
    const change = changes[r.seq - 1];
    if (change === undefined) throw new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `rtnetlink answered a message never sent (sequence ${r.seq})`);
    acked.add(r.seq);
    const errno = -new DataView(r.payload.buffer, r.payload.byteOffset, 4).getInt32(0, LE);
    if (errno !== 0) refused.push({ change, errno });
  }
  if (acked.size !== changes.length) throw new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `rtnetlink acknowledged ${acked.size} of ${changes.length} routing changes`);
  return refused;
}

/**
 * Sends `changes` in one exchange; throws naming the first the kernel refused (`errno` on the
 * error). An IPv6 route through `lo` refused because IPv6 is off on `lo` (EACCES) throws
 * Ipv6LoopbackDisabledError (`ERR_IPTABLES_IPV6_LO_DISABLED`), naming the interfaces with IPv6 on.
 */
export async function applyRouting(exchange: NetlinkExchange, changes: readonly RoutingChange[]): Promise<void> {
  const refused = await sendRouting(exchange, changes);
  const lo = refused.find((r) => r.errno === EACCES && 'route' in r.change && r.change.route.family === 'ipv6' && r.change.route.device === 'lo');
  if (lo) {
    const error = Object.assign(new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `rtnetlink refused ${describeChange(lo.change)}: errno ${EACCES} (EACCES)`), { errno: EACCES });
    const links = await readLinks(exchange).catch(() => undefined);
    if (links && links.find((l) => l.index === LO_IFINDEX)?.ipv6 === false) {
      throw new Ipv6LoopbackDisabledError(describeChange(lo.change), links.filter((l) => l.ipv6).map((l) => l.name), { cause: error });
    }
    throw error;
  }
  const [first] = refused;
  if (!first) return;
  const { change, errno } = first;
  throw Object.assign(
    new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `rtnetlink refused ${describeChange(change)}: errno ${errno}${errno === EEXIST ? ' (EEXIST, already there)' : ''}`),
    { errno },
  );
}

/** One network interface of the netns: index, name, and whether IPv6 is on on it (`disable_ipv6` = 0). */
export interface LinkIpv6 {
  readonly index: number;
  readonly name: string;
  readonly ipv6: boolean;
}

/**
 * Every interface of the netns (an RTM_GETLINK dump, one exchange) with its IPv6 state, as
 * `net.ipv6.conf.<name>.disable_ipv6` says; an interface without IPv6 data (no IPv6 in the
 * kernel, or an MTU below 1280) counts as IPv6 off.
 */
export async function readLinks(exchange: NetlinkExchange): Promise<LinkIpv6[]> {
  // ifinfomsg: family AF_UNSPEC, type, index, flags, change: all 0.
  const replies = parse(await exchange(message(RTM_GETLINK, F_DUMP, 1, new Uint8Array(16)), 1));
  const out: LinkIpv6[] = [];
  for (const r of replies) {
    if (r.type === NLMSG_ERROR) {
      const errno = -new DataView(r.payload.buffer, r.payload.byteOffset, 4).getInt32(0, LE);
      if (errno !== 0) throw Object.assign(new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `rtnetlink link dump failed: errno ${errno}`), { errno });
      continue;
    }
    if (r.type !== RTM_NEWLINK || r.payload.length < 16) continue;
    const index = new DataView(r.payload.buffer, r.payload.byteOffset + 4, 4).getInt32(0, LE);
    let name = '';
    let ipv6 = false;
    for (const a of attributesOf(r.payload.subarray(16))) {
      if (a.type === IFLA_IFNAME) name = new TextDecoder().decode(a.data.subarray(0, a.data.indexOf(0) === -1 ? a.data.length : a.data.indexOf(0)));
      if (a.type !== IFLA_AF_SPEC) continue;
      for (const fam of attributesOf(a.data)) {
        if (fam.type !== AF.ipv6) continue;
        for (const c of attributesOf(fam.data)) {
          if (c.type !== IFLA_INET6_CONF || c.data.length < (DEVCONF_DISABLE_IPV6 + 1) * 4) continue;
          ipv6 = new DataView(c.data.buffer, c.data.byteOffset + DEVCONF_DISABLE_IPV6 * 4, 4).getInt32(0, LE) === 0;
        }
      }
    }
    out.push({ index, name, ipv6 });
  }
  return out;
}

/** `ip -4 rule add fwmark 0x111/0xfff pref 32764 lookup 133`: how changes are reported. */
export function describeChange(c: RoutingChange): string {
  const flag = (f: Family): string => (f === 'ipv4' ? '-4' : '-6');
  if ('rule' in c) return `ip ${flag(c.rule.family)} rule ${c.op} fwmark 0x${c.rule.fwmark.toString(16)}/0x${c.rule.mask.toString(16)} pref ${c.rule.priority} lookup ${c.rule.table}`;
  return `ip ${flag(c.route.family)} route ${c.op} local ${c.route.destination} dev ${c.route.device} table ${c.route.table}`;
}

/**
 * Dumps the rules and routes of every family (two exchanges: a netlink socket runs one dump at a
 * time) and keeps those of `families` that the diff compares.
 */
export async function readRouting(exchange: NetlinkExchange, families: readonly Family[]): Promise<RoutingState> {
  if (!families.length) return { rules: [], routes: [] };
  const rules: FwmarkRule[] = [];
  const routes: LocalRoute[] = [];
  const all = body([0, 0, 0, 0, 0, 0, 0, 0], []);
  const replies = [...parse(await exchange(message(RTM_GETRULE, F_DUMP, 1, all), 1)), ...parse(await exchange(message(RTM_GETROUTE, F_DUMP, 2, all), 1))];
  for (const r of replies) {
    if (r.type === NLMSG_ERROR) {
      const errno = -new DataView(r.payload.buffer, r.payload.byteOffset, 4).getInt32(0, LE);
      if (errno !== 0) throw Object.assign(new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `rtnetlink ${r.seq === 1 ? 'rule' : 'route'} dump failed: errno ${errno}`), { errno });
      continue;
    }
    const p = r.payload;
    if (p.length < 12) continue;
    const family: Family | undefined = p[0] === AF.ipv4 ? 'ipv4' : p[0] === AF.ipv6 ? 'ipv6' : undefined;
    if (!family || !families.includes(family)) continue;
    const attrs = attributes(p.subarray(12));
    if (r.type === RTM_NEWRULE) {
      // Only a plain fwmark rule counts: no source, destination, tos or other selector besides the
      // mark, not inverted (`not fwmark`), not suppressing the table's default route. Anything else
      // would pass for Weir's rule while marked packets are not routed to the local stack.
      if (p[1] !== 0 || p[2] !== 0 || p[3] !== 0 || p[7] !== FR_ACT_TO_TBL) continue;
      if ((new DataView(p.buffer, p.byteOffset + 8, 4).getUint32(0, LE) & FIB_RULE_INVERT) !== 0) continue;
      if (attributeTypes(p.subarray(12)).some((t) => RULE_SELECTORS.has(t))) continue;
      if ((attrs.get(FRA_SUPPRESS_PREFIXLEN) ?? NONE) !== NONE || (attrs.get(FRA_SUPPRESS_IFGROUP) ?? NONE) !== NONE) continue;
      const fwmark = attrs.get(FRA_FWMARK);
      if (fwmark === undefined) continue;
      rules.push({ family, fwmark, mask: attrs.get(FRA_FWMASK) ?? 0xffffffff, priority: attrs.get(FRA_PRIORITY) ?? 0, table: attrs.get(FRA_TABLE) ?? (p[4] as number) });
    } else if (r.type === RTM_NEWROUTE) {
      if (p[1] !== 0 || p[7] !== RTN_LOCAL || attrs.get(RTA_OIF) !== LO_IFINDEX) continue;
      routes.push({ family, destination: family === 'ipv4' ? '0.0.0.0/0' : '::/0', device: 'lo', table: attrs.get(RTA_TABLE) ?? (p[4] as number) });
    }
  }
  return { rules, routes };
}

/**
 * The netns's nftables generation: a counter every committed nftables transaction (any rule change
 * by iptables-nft, nft, …) bumps, and nothing else does. Equal to an earlier reading means that no
 * nftables rule changed in between.
 */
export async function readNftGeneration(exchange: NetlinkExchange): Promise<number> {
  // nfgenmsg: family AF_UNSPEC, version 0, res_id 0
  const bytes = await exchange(message(NFT_MSG_GETGEN, F_ACK, 1, new Uint8Array(4)), 1, NETLINK_NETFILTER);
  for (const r of parse(bytes)) {
    if (r.type === NLMSG_ERROR) {
      const errno = -new DataView(r.payload.buffer, r.payload.byteOffset, 4).getInt32(0, LE);
      if (errno !== 0) throw Object.assign(new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `reading the nftables generation failed: errno ${errno}`), { errno });
    }
    if (r.type !== NFT_MSG_NEWGEN || r.payload.length < 4) continue;
    const v = new DataView(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
    for (let at = 4; at + 8 <= r.payload.length; ) {
      const len = v.getUint16(at, LE);
      if (len < 4) break;
      // Netfilter attributes are big-endian.
      if ((v.getUint16(at + 2, LE) & 0x3fff) === NFTA_GEN_ID && len === 8) return v.getUint32(at + 4, false);
      at += (len + 3) & ~3;
    }
  }
  throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', 'reading the nftables generation: no NFTA_GEN_ID in the reply');
}

/** How many copies of `rule` the netns holds. */
export function countRuleIn(state: RoutingState, rule: FwmarkRule): number {
  return state.rules.filter((r) => r.family === rule.family && r.fwmark === rule.fwmark && r.mask === rule.mask && r.priority === rule.priority && r.table === rule.table).length;
}

export function hasRouteIn(state: RoutingState, route: LocalRoute): boolean {
  return state.routes.some((r) => r.family === route.family && r.table === route.table && r.destination === route.destination && r.device === route.device);
}

/** The changes that add what `want` lacks in `state`. */
export function missingRouting(state: RoutingState, want: PolicyRouting): RoutingChange[] {
  return (['ipv4', 'ipv6'] as const).flatMap((f) => [
    ...want.rules.filter((r) => r.family === f && countRuleIn(state, r) === 0).map((rule) => ({ op: 'add' as const, rule })),
    ...want.routes.filter((r) => r.family === f && !hasRouteIn(state, r)).map((route) => ({ op: 'replace' as const, route })),
  ]);
}

/** The type of every attribute. */
function attributeTypes(bytes: Uint8Array): number[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let at = 0; at + 4 <= bytes.length; ) {
    const len = v.getUint16(at, LE);
    if (len < 4) break;
    out.push(v.getUint16(at + 2, LE) & 0x3fff);
    at += (len + 3) & ~3;
  }
  return out;
}

/** u32 attributes by type (others are skipped; a later duplicate wins). */
function attributes(bytes: Uint8Array): Map<number, number> {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Map<number, number>();
  for (let at = 0; at + 4 <= bytes.length; ) {
    const len = v.getUint16(at, LE);
    if (len < 4) break;
    const type = v.getUint16(at + 2, LE) & 0x3fff;
    if (len === 8) out.set(type, v.getUint32(at + 4, LE));
    at += (len + 3) & ~3;
  }
  return out;
}
