export type Family = 'ipv4' | 'ipv6';
export type TableName = 'raw' | 'mangle' | 'nat' | 'filter';
export type Protocol = 'tcp' | 'udp' | 'icmp' | 'ipv6-icmp' | 'sctp' | 'all';
export type CtState = 'NEW' | 'ESTABLISHED' | 'RELATED' | 'INVALID' | 'UNTRACKED' | 'SNAT' | 'DNAT';

/** A port or an inclusive range (`--dport 1000:2000`). */
export interface PortSpec {
  readonly port: number;
  readonly toPort?: number;
  readonly invert?: boolean;
}

/** One match of a rule. `invert` renders iptables' `!`. */
export type Match =
  | { readonly kind: 'protocol'; readonly protocol: Protocol; readonly invert?: boolean }
  | { readonly kind: 'source'; readonly cidr: string; readonly invert?: boolean }
  | { readonly kind: 'destination'; readonly cidr: string; readonly invert?: boolean }
  | { readonly kind: 'inInterface'; readonly name: string; readonly invert?: boolean }
  | { readonly kind: 'outInterface'; readonly name: string; readonly invert?: boolean }
  /** `-m tcp` / `-m udp` with optional `--sport` / `--dport` (needs the same `-p`). */
  | { readonly kind: 'tcp' | 'udp'; readonly sport?: PortSpec; readonly dport?: PortSpec }
  | { readonly kind: 'mark'; readonly value: number; readonly mask?: number; readonly invert?: boolean }
  | { readonly kind: 'connmark'; readonly value: number; readonly mask?: number; readonly invert?: boolean }
  | { readonly kind: 'conntrack'; readonly ctstate: readonly CtState[]; readonly invert?: boolean }
  | { readonly kind: 'owner'; readonly socketExists: true }
  | {
      readonly kind: 'set';
      readonly name: string;
      readonly flags: readonly ('src' | 'dst')[];
      readonly invert?: boolean;
    }
  | { readonly kind: 'comment'; readonly text: string };

export type Target =
  | { readonly kind: 'ACCEPT' }
  | { readonly kind: 'RETURN' }
  | { readonly kind: 'DROP' }
  | { readonly kind: 'jump'; readonly chain: string }
  | { readonly kind: 'REDIRECT'; readonly toPorts: number }
  | {
      readonly kind: 'TPROXY';
      readonly onPort: number;
      /** Default `0.0.0.0` (`::` for IPv6): the packet's own destination address. */
      readonly onIp?: string;
      readonly tproxyMark?: { readonly value: number; readonly mask: number };
    }
  /** `--set-xmark value/mask` on the connection mark. */
  | { readonly kind: 'CONNMARK'; readonly op: 'set'; readonly value: number; readonly mask: number }
  /** Copy the connection mark to the packet mark. */
  | { readonly kind: 'CONNMARK'; readonly op: 'restore'; readonly nfmask?: number; readonly ctmask?: number }
  | { readonly kind: 'MARK'; readonly value: number; readonly mask?: number }
  | { readonly kind: 'CT'; readonly zone: number }
  | { readonly kind: 'SNAT'; readonly toSource: string };

export interface Rule {
  readonly matches: readonly Match[];
  readonly target: Target;
  /** Builtin-chain hooks only: `first` renders `-I <chain> 1`, default `append` renders `-A`. */
  readonly position?: 'append' | 'first';
}

export interface Chain {
  readonly name: string;
  readonly rules: readonly Rule[];
}

export interface Table {
  readonly name: TableName;
  /**
   * Chains in render order. User chains listed here are owned by the rule set: it holds their whole
   * content. Builtin chains (PREROUTING, …) are shared: the rule set only owns the rules listed.
   */
  readonly chains: readonly Chain[];
}

export interface FamilyRules {
  readonly family: Family;
  readonly tables: readonly Table[];
}

/** A validated rule set; build one with `defineRuleSet`. */
export interface RuleSet {
  readonly families: readonly FamilyRules[];
}

/** Where a rule lives, for diffs and apply results. `rule` is the canonical iptables rule spec. */
export interface RuleRef {
  readonly family: Family;
  readonly table: TableName;
  readonly chain: string;
  readonly rule: string;
}

export const BUILTIN_CHAINS: Readonly<Record<TableName, readonly string[]>> = {
  raw: ['PREROUTING', 'OUTPUT'],
  mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
  nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
  filter: ['INPUT', 'FORWARD', 'OUTPUT'],
};

export const TABLE_NAMES: readonly TableName[] = ['raw', 'mangle', 'nat', 'filter'];

export function isBuiltinChain(table: TableName, chain: string): boolean {
  return BUILTIN_CHAINS[table].includes(chain);
}
