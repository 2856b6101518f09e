import { createHash } from 'node:crypto';

import { InvalidRuleError } from './errors.js';
import { isBuiltinChain, type Family, type Match, type PortSpec, type Rule, type RuleSet, type TableName, type Target } from './model.js';
import { hex, renderRuleSpec } from './render-iptables.js';

/** Default nft table names: `inet istio-ambient-<table>`, as Istio's nftables mode. */
export const DEFAULT_NFT_TABLE_PREFIX = 'istio-ambient';

const BASE_CHAINS: Record<TableName, Record<string, string>> = {
  nat: {
    PREROUTING: 'type nat hook prerouting priority -100 ;',
    INPUT: 'type nat hook input priority 100 ;',
    OUTPUT: 'type nat hook output priority -100 ;',
    POSTROUTING: 'type nat hook postrouting priority 100 ;',
  },
  mangle: {
    PREROUTING: 'type filter hook prerouting priority -150 ;',
    INPUT: 'type filter hook input priority -150 ;',
    FORWARD: 'type filter hook forward priority -150 ;',
    OUTPUT: 'type route hook output priority -150 ;',
    POSTROUTING: 'type filter hook postrouting priority -150 ;',
  },
  raw: {
    PREROUTING: 'type filter hook prerouting priority -300 ;',
    OUTPUT: 'type filter hook output priority -300 ;',
  },
  filter: {
    INPUT: 'type filter hook input priority 0 ;',
    FORWARD: 'type filter hook forward priority 0 ;',
    OUTPUT: 'type filter hook output priority 0 ;',
  },
};

export interface NftRenderOptions {
  /** Table name prefix; tables are `inet <prefix>-<raw|mangle|nat|filter>`. */
  readonly tablePrefix?: string;
  /**
   * Add `comment "weir:<hash>"` to each rule so a later `nft list` can be compared with the rule
   * set without re-implementing nft's expression printer (the applier uses this for diffs).
   */
  readonly tag?: boolean;
}

/** nft chain name for an iptables chain: `PREROUTING` → `prerouting`, `ISTIO_PRERT` → `istio-prerouting`. */
export function nftChainName(chain: string): string {
  return chain
    .toLowerCase()
    .replace(/_/g, '-')
    .replace(/-prert$/, '-prerouting')
    .replace(/-postrt$/, '-postrouting');
}

export function nftTableName(table: TableName, prefix = DEFAULT_NFT_TABLE_PREFIX): string {
  return `${prefix}-${table}`;
}

/** One rule of an nft table, as rendered, with the tag a listing must show. */
export interface NftRule {
  readonly family: Family;
  readonly table: TableName;
  /** iptables chain name (for RuleRef) and its nft name. */
  readonly chain: string;
  readonly nftChain: string;
  readonly spec: string;
  readonly tag: string;
  readonly text: string;
}

export interface NftTablePlan {
  readonly table: TableName;
  readonly name: string;
  /** nft chain name → base-chain declaration ('' for regular chains), in creation order. */
  readonly chains: ReadonlyMap<string, string>;
  readonly rules: readonly NftRule[];
}

/** The nft tables a rule set becomes (both families merged into `inet` tables). */
export function planNft(ruleSet: RuleSet, options: NftRenderOptions = {}): NftTablePlan[] {
  const prefix = options.tablePrefix ?? DEFAULT_NFT_TABLE_PREFIX;
  const dual = ruleSet.families.length > 1;
  const plans = new Map<TableName, { chains: Map<string, string>; rules: NftRule[]; seen: Set<string> }>();
  for (const fam of ruleSet.families) {
    for (const table of fam.tables) {
      let plan = plans.get(table.name);
      if (!plan) {
        plan = { chains: new Map(), rules: [], seen: new Set() };
        plans.set(table.name, plan);
      }
      for (const chain of table.chains) {
        const nftChain = nftChainName(chain.name);
        const builtin = isBuiltinChain(table.name, chain.name);
        if (!plan.chains.has(nftChain)) plan.chains.set(nftChain, builtin ? (BASE_CHAINS[table.name][chain.name] ?? '') : '');
        chain.rules.forEach((rule, i) => {
          const path = `${fam.family}.${table.name}.${chain.name}[${i}]`;
          const body = nftRuleBody(fam.family, rule, path, dual);
          // The same jump from a base chain serves both families once.
          if (plan.seen.has(`${nftChain} ${body}`)) return;
          plan.seen.add(`${nftChain} ${body}`);
          const spec = renderRuleSpec(rule);
          const tag = `weir:${createHash('sha256').update(`${nftChain} ${body}`).digest('hex').slice(0, 12)}`;
          plan.rules.push({ family: fam.family, table: table.name, chain: chain.name, nftChain, spec, tag, text: body });
        });
      }
    }
  }
  return [...plans].map(([table, p]) => ({ table, name: nftTableName(table, prefix), chains: p.chains, rules: p.rules }));
}

/**
 * One atomic `nft -f` transaction installing the rule set: each table is added and flushed, then
 * its chains and rules added, so applying it twice gives the same ruleset.
 */
export function renderNft(ruleSet: RuleSet, options: NftRenderOptions = {}): string {
  return renderNftPlans(planNft(ruleSet, options), options.tag ?? false);
}

export function renderNftPlans(plans: readonly NftTablePlan[], tag: boolean, extra: readonly string[] = []): string {
  const lines: string[] = [];
  for (const p of plans) {
    lines.push(`add table inet ${p.name}`, `flush table inet ${p.name}`);
    for (const [chain, decl] of p.chains) {
      lines.push(decl ? `add chain inet ${p.name} ${chain} { ${decl} }` : `add chain inet ${p.name} ${chain}`);
    }
    for (const r of p.rules) {
      lines.push(`add rule inet ${p.name} ${r.nftChain} ${r.text}${tag ? ` comment "${r.tag}"` : ''}`);
    }
  }
  lines.push(...extra);
  return `${lines.join('\n')}\n`;
}

function nftRuleBody(family: Family, rule: Rule, path: string, dual: boolean): string {
  const ip = family === 'ipv4' ? 'ip' : 'ip6';
  const parts: string[] = [];
  const ne = (m: { invert?: boolean }): string => (m.invert === true ? '!= ' : '');
  const hasPorts = rule.matches.some((m) => (m.kind === 'tcp' || m.kind === 'udp') && (m.sport || m.dport));
  const familySpecific = rule.matches.some((m) => m.kind === 'source' || m.kind === 'destination');
  if (dual && !familySpecific && !(rule.matches.length === 0 && rule.target.kind === 'jump')) {
    parts.push(`meta nfproto ${family}`);
  }
  let comment: string | undefined;
  rule.matches.forEach((m: Match, i) => {
    const mp = `${path}.matches[${i}]`;
    switch (m.kind) {
      case 'protocol':
        if (!hasPorts || m.invert === true) parts.push(`meta l4proto ${ne(m)}${m.protocol === 'ipv6-icmp' ? 'ipv6-icmp' : m.protocol}`);
        return;
      case 'source':
        parts.push(`${ip} saddr ${ne(m)}${m.cidr}`);
        return;
      case 'destination':
        parts.push(`${ip} daddr ${ne(m)}${m.cidr}`);
        return;
      case 'inInterface':
        parts.push(`iifname ${ne(m)}${m.name.replace(/\+$/, '*')}`);
        return;
      case 'outInterface':
        parts.push(`oifname ${ne(m)}${m.name.replace(/\+$/, '*')}`);
        return;
      case 'tcp':
      case 'udp':
        if (m.sport) parts.push(`${m.kind} sport ${portText(m.sport)}`);
        if (m.dport) parts.push(`${m.kind} dport ${portText(m.dport)}`);
        return;
      case 'mark':
        parts.push(`meta mark${maskText(m.mask)} ${m.invert === true ? '!=' : '=='} ${hex(m.value)}`);
        return;
      case 'connmark':
        parts.push(`ct mark${maskText(m.mask)} ${m.invert === true ? '!=' : '=='} ${hex(m.value)}`);
        return;
      case 'conntrack': {
        if (m.invert === true || m.ctstate.some((s) => s === 'SNAT' || s === 'DNAT')) {
          throw new InvalidRuleError(mp, m, 'inverted or SNAT/DNAT ctstate has no nft rendering here');
        }
        parts.push(`ct state ${m.ctstate.map((s) => s.toLowerCase()).join(',')}`);
        return;
      }
      case 'comment':
        comment = m.text;
        return;
      case 'owner':
      case 'set':
        throw new InvalidRuleError(`${mp}.kind`, m.kind, `-m ${m.kind} has no nft rendering here (iptables backends only)`);
    }
  });
  // Jumps from base chains carry no counter, as in Istio's rendering; the chains they enter count.
  if (rule.target.kind !== 'jump' || rule.matches.length > 0) parts.push('counter');
  parts.push(...targetText(family, rule.target, `${path}.target`));
  if (comment !== undefined) parts.push(`comment "${comment}"`);
  return parts.join(' ');
}

function portText(p: PortSpec): string {
  const v = p.toPort !== undefined && p.toPort !== p.port ? `${p.port}-${p.toPort}` : String(p.port);
  return p.invert === true ? `!= ${v}` : v;
}

function maskText(mask: number | undefined): string {
  return mask === undefined || mask === 0xffffffff ? '' : ` and ${hex(mask)}`;
}

/** `x set x & ~mask | value` (or `^` when value has bits outside mask, as iptables' xmark). */
function setMark(what: string, value: number, mask: number): string {
  if (mask === 0xffffffff) return `${what} set ${hex(value)}`;
  const keep = ~mask >>> 0;
  const op = (value & keep) === 0 ? 'or' : 'xor';
  return `${what} set ${what} and ${hex(keep)} ${op} ${hex(value)}`;
}

function targetText(family: Family, t: Target, path: string): string[] {
  switch (t.kind) {
    case 'ACCEPT':
      return ['accept'];
    case 'DROP':
      return ['drop'];
    case 'RETURN':
      return ['return'];
    case 'jump':
      return ['jump', nftChainName(t.chain)];
    case 'REDIRECT':
      return [`redirect to :${t.toPorts}`];
    case 'TPROXY': {
      const any = t.onIp === undefined || t.onIp === '0.0.0.0' || t.onIp === '::';
      const addr = any ? '' : family === 'ipv4' ? t.onIp : `[${t.onIp}]`;
      const mark = t.tproxyMark;
      const out = [`tproxy ${family === 'ipv4' ? 'ip' : 'ip6'} to ${addr}:${t.onPort}`];
      if (mark && mark.mask !== 0) out.push(setMark('meta mark', mark.value, mark.mask));
      out.push('accept');
      return out;
    }
    case 'CONNMARK':
      if (t.op === 'set') return [setMark('ct mark', t.value, t.mask)];
      if ((t.nfmask ?? 0xffffffff) !== 0xffffffff || (t.ctmask ?? 0xffffffff) !== 0xffffffff) {
        throw new InvalidRuleError(`${path}.nfmask`, t, 'CONNMARK --restore-mark with masks has no nft rendering here');
      }
      return ['meta mark set ct mark'];
    case 'MARK':
      return [setMark('meta mark', t.value, t.mask ?? 0xffffffff)];
    case 'CT':
      return [`ct zone set ${t.zone}`];
    case 'SNAT':
      return [`snat ${family === 'ipv4' ? 'ip' : 'ip6'} to ${family === 'ipv4' ? t.toSource : `[${t.toSource}]`}`];
  }
}
