import {
  isBuiltinChain,
  type CtState,
  type Family,
  type FamilyRules,
  type Match,
  type PortSpec,
  type Rule,
  type RuleSet,
  type Target,
} from './model.js';

const CT_ORDER: readonly CtState[] = ['INVALID', 'NEW', 'RELATED', 'ESTABLISHED', 'UNTRACKED', 'SNAT', 'DNAT'];
const BASIC_ORDER = ['source', 'destination', 'inInterface', 'outInterface', 'protocol'] as const;
const FULL_MASK = 0xffffffff;

export const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * The canonical rule spec (everything after `-A <chain>`) exactly as iptables-save prints it:
 * `-s -d -i -o -p` first, then the `-m` modules in rule order, then `-j` and its options.
 * Two rules with the same meaning render to the same text, which is what diffs compare.
 */
export function renderRuleSpec(rule: Rule): string {
  return ruleWords(rule)
    .map((w) => (w.quoted ? `"${w.text.replace(/(["\\'])/g, '\\$1')}"` : w.text))
    .join(' ');
}

/** The same spec as an argv list (no quoting), for `iptables -C/-A/-D`. */
export function ruleArgs(rule: Rule): string[] {
  return ruleWords(rule).map((w) => w.text);
}

interface Word {
  text: string;
  quoted?: boolean;
}

function ruleWords(rule: Rule): Word[] {
  const out: string[] = [];
  const words: Word[] = [];
  const flush = (): void => {
    for (const text of out.splice(0)) words.push({ text });
  };
  const not = (m: { invert?: boolean }): void => {
    if (m.invert === true) out.push('!');
  };
  for (const kind of BASIC_ORDER) {
    const m = rule.matches.find((x) => x.kind === kind);
    if (!m) continue;
    not(m as { invert?: boolean });
    switch (m.kind) {
      case 'source':
        out.push('-s', m.cidr);
        break;
      case 'destination':
        out.push('-d', m.cidr);
        break;
      case 'inInterface':
        out.push('-i', m.name);
        break;
      case 'outInterface':
        out.push('-o', m.name);
        break;
      case 'protocol':
        out.push('-p', m.protocol);
        break;
    }
  }
  for (const m of rule.matches) {
    if ((BASIC_ORDER as readonly string[]).includes(m.kind)) continue;
    if (m.kind === 'comment') {
      out.push('-m', 'comment', '--comment');
      flush();
      // iptables-save quotes a string unless it is only [A-Za-z0-9_-] (xtables_save_string).
      words.push({ text: m.text, quoted: !/^[A-Za-z0-9_-]+$/.test(m.text) });
      continue;
    }
    moduleWords(m, out, not);
  }
  out.push(...targetWords(rule.target));
  flush();
  return words;
}

function moduleWords(m: Match, out: string[], not: (m: { invert?: boolean }) => void): void {
  switch (m.kind) {
    case 'tcp':
    case 'udp':
      out.push('-m', m.kind);
      if (m.sport) out.push(...portWords('--sport', m.sport));
      if (m.dport) out.push(...portWords('--dport', m.dport));
      return;
    case 'mark':
    case 'connmark':
      out.push('-m', m.kind);
      not(m);
      out.push('--mark', markText(m.value, m.mask));
      return;
    case 'conntrack':
      out.push('-m', 'conntrack');
      not(m);
      out.push('--ctstate', CT_ORDER.filter((s) => m.ctstate.includes(s)).join(','));
      return;
    case 'owner':
      out.push('-m', 'owner', '--socket-exists');
      return;
    case 'set':
      out.push('-m', 'set');
      not(m);
      out.push('--match-set', m.name, m.flags.join(','));
      return;
    default:
      return;
  }
}

function portWords(flag: string, p: PortSpec): string[] {
  const value = p.toPort !== undefined && p.toPort !== p.port ? `${p.port}:${p.toPort}` : String(p.port);
  return p.invert === true ? ['!', flag, value] : [flag, value];
}

function markText(value: number, mask: number | undefined): string {
  return mask === undefined || mask === FULL_MASK ? hex(value) : `${hex(value)}/${hex(mask)}`;
}

function targetWords(t: Target): string[] {
  switch (t.kind) {
    case 'ACCEPT':
    case 'RETURN':
    case 'DROP':
      return ['-j', t.kind];
    case 'jump':
      return ['-j', t.chain];
    case 'REDIRECT':
      return ['-j', 'REDIRECT', '--to-ports', String(t.toPorts)];
    case 'TPROXY': {
      const mark = t.tproxyMark ?? { value: 0, mask: 0 };
      return [
        '-j',
        'TPROXY',
        '--on-port',
        String(t.onPort),
        '--on-ip',
        t.onIp ?? '0.0.0.0',
        '--tproxy-mark',
        `${hex(mark.value)}/${hex(mark.mask)}`,
      ];
    }
    case 'CONNMARK':
      return t.op === 'set'
        ? ['-j', 'CONNMARK', '--set-xmark', `${hex(t.value)}/${hex(t.mask)}`]
        : [
            '-j',
            'CONNMARK',
            '--restore-mark',
            '--nfmask',
            hex(t.nfmask ?? FULL_MASK),
            '--ctmask',
            hex(t.ctmask ?? FULL_MASK),
          ];
    case 'MARK':
      return ['-j', 'MARK', '--set-xmark', `${hex(t.value)}/${hex(t.mask ?? FULL_MASK)}`];
    case 'CT':
      return ['-j', 'CT', '--zone', String(t.zone)];
    case 'SNAT':
      return ['-j', 'SNAT', '--to-source', t.toSource];
  }
}

export function familyRules(ruleSet: RuleSet, family: Family): FamilyRules | undefined {
  return ruleSet.families.find((f) => f.family === family);
}

/**
 * `iptables-restore --noflush` input installing `family`'s rules into a netns that has none of
 * them yet (`-N` fails if a chain exists; the applier uses its own reconcile text instead).
 * Empty string when the rule set has nothing for `family`.
 */
export function renderIptablesRestore(ruleSet: RuleSet, family: Family): string {
  const fam = familyRules(ruleSet, family);
  if (!fam) return '';
  const lines: string[] = [];
  for (const table of fam.tables) {
    lines.push(`*${table.name}`);
    for (const chain of table.chains) {
      if (!isBuiltinChain(table.name, chain.name)) lines.push(`-N ${chain.name}`);
    }
    for (const chain of table.chains) {
      let inserted = 0;
      for (const rule of chain.rules) {
        lines.push(ruleLine(chain.name, rule, () => ++inserted));
      }
    }
    lines.push('COMMIT');
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

function ruleLine(chain: string, rule: Rule, nextIndex: () => number): string {
  const spec = renderRuleSpec(rule);
  return rule.position === 'first' ? `-I ${chain} ${nextIndex()} ${spec}` : `-A ${chain} ${spec}`;
}

/** One `iptables -C` check: the binary for the family and its argv. */
export interface RuleCheck {
  readonly command: 'iptables' | 'ip6tables';
  readonly args: readonly string[];
}

/** `-C`-style existence checks, one per rule (hooks included), as argv lists. */
export function renderChecks(ruleSet: RuleSet, family: Family): RuleCheck[] {
  const fam = familyRules(ruleSet, family);
  if (!fam) return [];
  const command = family === 'ipv4' ? 'iptables' : 'ip6tables';
  return fam.tables.flatMap((table) =>
    table.chains.flatMap((chain) =>
      chain.rules.map((rule) => ({ command, args: ['-t', table.name, '-C', chain.name, ...ruleArgs(rule)] }) as const),
    ),
  );
}
