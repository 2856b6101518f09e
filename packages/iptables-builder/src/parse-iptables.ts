import { canonicalAddress, canonicalCidr } from './address.js';
import { IptablesError } from './errors.js';
import type { CtState, Family, Match, PortSpec, Protocol, Rule, Target } from './model.js';
import { renderRuleSpec } from './render-iptables.js';

/** One rule line of iptables-save (or restore) text. */
export interface SavedRule {
  readonly chain: string;
  /** Canonical spec: the re-rendered model when understood, else the whitespace-normalised text. */
  readonly spec: string;
  /** The rule words as they appeared (for `-D`, which needs iptables' own spelling). */
  readonly text: string;
  /** The rule as a model, when every match and the target are ones this package knows. */
  readonly rule?: Rule;
  /** `-I <chain> <n>` in restore input; iptables-save only ever prints `-A`. */
  readonly position?: 'first';
}

export interface SavedChain {
  readonly name: string;
  /** `ACCEPT`/`DROP` for builtin chains, `-` for user chains. */
  readonly policy: string;
}

export interface SavedTable {
  readonly name: string;
  readonly chains: readonly SavedChain[];
  readonly rules: readonly SavedRule[];
}

/**
 * Parse `iptables-save` output (or `iptables-restore` input: `-N`, `-I`, `* table` are accepted) for
 * `family`. Unknown matches or targets do not fail: such rules keep their text as `spec`.
 */
export function parseIptablesSave(text: string, family: Family): SavedTable[] {
  const tables: { name: string; chains: SavedChain[]; rules: SavedRule[] }[] = [];
  let current: (typeof tables)[number] | undefined;
  const lines = text.split('\n');
  lines.forEach((raw, index) => {
    const line = raw.trim();
    const where = `line ${index + 1}`;
    if (line === '' || line.startsWith('#')) return;
    if (line.startsWith('*')) {
      const name = line.slice(1).trim();
      current = tables.find((t) => t.name === name);
      if (!current) {
        current = { name, chains: [], rules: [] };
        tables.push(current);
      }
      return;
    }
    if (line === 'COMMIT') {
      current = undefined;
      return;
    }
    if (!current) {
      // iptables-save / ip6tables-save lines recorded before the first table (Istio's goldens).
      if (/^ip6?tables(-legacy|-nft)?-save$/.test(line)) return;
      throw new IptablesError('ERR_IPTABLES_PARSE', `${where}: "${line}" outside a *table section`);
    }
    if (line.startsWith(':')) {
      const [name = '', policy = '-'] = line.slice(1).split(/\s+/);
      if (!current.chains.some((c) => c.name === name)) current.chains.push({ name, policy });
      return;
    }
    const words = tokenize(line, where);
    const [op, chain] = words;
    if (op === '-N' && chain) {
      if (!current.chains.some((c) => c.name === chain)) current.chains.push({ name: chain, policy: '-' });
      return;
    }
    if ((op === '-A' || op === '-I') && chain) {
      let rest = words.slice(2);
      if (op === '-I' && /^\d+$/.test(rest[0] ?? '')) rest = rest.slice(1);
      const rule = parseRuleWords(rest, family);
      const text = rest.map(quoteIfNeeded).join(' ');
      current.rules.push({
        chain,
        spec: rule ? renderRuleSpec(rule) : text,
        text,
        ...(rule ? { rule } : {}),
        ...(op === '-I' ? { position: 'first' as const } : {}),
      });
      return;
    }
    throw new IptablesError('ERR_IPTABLES_PARSE', `${where}: unsupported statement "${line}"`);
  });
  return tables;
}

/** Split a rule line into words, honouring double quotes as iptables-save writes them. */
export function tokenize(line: string, where = 'rule'): string[] {
  const words: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null) {
    if (m[1] !== undefined) words.push(m[1].replace(/\\(.)/g, '$1'));
    else if (m[2] !== undefined) {
      if (m[2].includes('"')) throw new IptablesError('ERR_IPTABLES_PARSE', `${where}: unbalanced quote in "${line}"`);
      words.push(m[2]);
    }
  }
  return words;
}

function quoteIfNeeded(word: string): string {
  return /[\s"]/.test(word) || word === '' ? `"${word.replace(/(["\\])/g, '\\$1')}"` : word;
}

/** Parse rule words (after `-A chain`) into the model; undefined for anything not modelled. */
export function parseRuleWords(words: readonly string[], family: Family): Rule | undefined {
  const matches: Match[] = [];
  let target: Target | undefined;
  let i = 0;
  let invert = false;
  let module: string | undefined;
  const next = (): string | undefined => words[++i];
  const takeInvert = (): { invert?: true } => {
    const out = invert ? { invert: true as const } : {};
    invert = false;
    return out;
  };
  const portMatch = (proto: 'tcp' | 'udp', which: 'sport' | 'dport', value: string | undefined): boolean => {
    const spec = parsePort(value);
    if (!spec) return false;
    const inv = takeInvert();
    const last = matches[matches.length - 1];
    // Options of one -m tcp/udp belong together (iptables-save prints them that way).
    if (module === proto && last && last.kind === proto && last[which] === undefined) {
      matches[matches.length - 1] = { ...last, [which]: { ...spec, ...inv } };
    } else {
      matches.push({ kind: proto, [which]: { ...spec, ...inv } });
      module = proto;
    }
    return true;
  };
  for (; i < words.length; i++) {
    const w = words[i] as string;
    if (w === '!') {
      invert = true;
      continue;
    }
    if (target) return undefined;
    switch (w) {
      case '-s':
      case '--source':
      case '-d':
      case '--destination': {
        const cidr = canonicalCidr(next() ?? '', family);
        if (!cidr) return undefined;
        matches.push({ kind: w.startsWith('-s') || w === '--source' ? 'source' : 'destination', cidr, ...takeInvert() });
        module = undefined;
        continue;
      }
      case '-i':
      case '--in-interface':
      case '-o':
      case '--out-interface': {
        const name = next();
        if (!name) return undefined;
        matches.push({ kind: w === '-i' || w === '--in-interface' ? 'inInterface' : 'outInterface', name, ...takeInvert() });
        module = undefined;
        continue;
      }
      case '-p':
      case '--protocol': {
        const p = next();
        const protocol = (p === 'ipv6-icmp' || p === 'icmpv6' ? 'ipv6-icmp' : p) as Protocol;
        if (!['tcp', 'udp', 'icmp', 'ipv6-icmp', 'sctp', 'all'].includes(protocol)) return undefined;
        matches.push({ kind: 'protocol', protocol, ...takeInvert() });
        module = undefined;
        continue;
      }
      case '-m':
      case '--match': {
        module = next();
        if (module === 'tcp' || module === 'udp') {
          matches.push({ kind: module });
        } else if (module === 'owner' || module === 'comment') {
          // options follow
        } else if (!['mark', 'connmark', 'conntrack', 'set'].includes(module ?? '')) {
          return undefined;
        }
        continue;
      }
      case '--sport':
      case '--source-port':
      case '--dport':
      case '--destination-port': {
        const proto = module === 'tcp' || module === 'udp' ? module : implicitProto(matches);
        if (!proto) return undefined;
        if (!portMatch(proto, w === '--sport' || w === '--source-port' ? 'sport' : 'dport', next())) return undefined;
        continue;
      }
      case '--mark': {
        if (module !== 'mark' && module !== 'connmark') return undefined;
        const mark = parseMark(next());
        if (!mark) return undefined;
        matches.push({ kind: module, value: mark.value, ...(mark.mask !== undefined ? { mask: mark.mask } : {}), ...takeInvert() });
        continue;
      }
      case '--ctstate': {
        if (module !== 'conntrack') return undefined;
        const states = (next() ?? '').split(',') as CtState[];
        matches.push({ kind: 'conntrack', ctstate: states, ...takeInvert() });
        continue;
      }
      case '--socket-exists':
        // The model has no inverted owner match: `! --socket-exists` stays raw text (never taken for ours).
        if (module !== 'owner' || takeInvert().invert) return undefined;
        matches.push({ kind: 'owner', socketExists: true });
        continue;
      case '--match-set': {
        if (module !== 'set') return undefined;
        const name = next();
        const flags = (next() ?? '').split(',');
        if (!name || flags.some((f) => f !== 'src' && f !== 'dst')) return undefined;
        matches.push({ kind: 'set', name, flags: flags as ('src' | 'dst')[], ...takeInvert() });
        continue;
      }
      case '--comment': {
        if (module !== 'comment') return undefined;
        const text = next();
        if (text === undefined) return undefined;
        matches.push({ kind: 'comment', text });
        continue;
      }
      case '-j':
      case '--jump': {
        const parsed = parseTarget(words.slice(i + 1), family);
        if (!parsed) return undefined;
        target = parsed;
        i = words.length;
        continue;
      }
      default:
        return undefined;
    }
  }
  return target ? { matches, target } : undefined;
}

function implicitProto(matches: readonly Match[]): 'tcp' | 'udp' | undefined {
  const p = matches.find((m) => m.kind === 'protocol');
  return p && p.kind === 'protocol' && (p.protocol === 'tcp' || p.protocol === 'udp') ? p.protocol : undefined;
}

function parsePort(value: string | undefined): PortSpec | undefined {
  const m = /^(\d+)(?::(\d+))?$/.exec(value ?? '');
  if (!m) return undefined;
  const port = Number(m[1]);
  return m[2] !== undefined && Number(m[2]) !== port ? { port, toPort: Number(m[2]) } : { port };
}

function parseMark(value: string | undefined): { value: number; mask?: number } | undefined {
  const m = /^(0x[0-9a-f]+|\d+)(?:\/(0x[0-9a-f]+|\d+))?$/i.exec(value ?? '');
  if (!m) return undefined;
  const mask = m[2] !== undefined ? Number(m[2]) : undefined;
  return mask === undefined || mask === 0xffffffff ? { value: Number(m[1]) } : { value: Number(m[1]), mask };
}

function parseTarget(words: readonly string[], family: Family): Target | undefined {
  const [name, ...opts] = words;
  if (!name) return undefined;
  const opt = (flag: string): string | undefined => {
    const i = opts.indexOf(flag);
    return i === -1 ? undefined : opts[i + 1];
  };
  const known = (flags: readonly string[], valueless: readonly string[] = []): boolean => {
    for (let i = 0; i < opts.length; i++) {
      const o = opts[i] as string;
      if (valueless.includes(o)) continue;
      if (!flags.includes(o)) return false;
      i++;
    }
    return true;
  };
  switch (name) {
    case 'ACCEPT':
    case 'RETURN':
    case 'DROP':
      return opts.length ? undefined : { kind: name };
    case 'REDIRECT': {
      if (!known(['--to-ports', '--to-port'])) return undefined;
      const port = Number(opt('--to-ports') ?? opt('--to-port'));
      return Number.isInteger(port) ? { kind: 'REDIRECT', toPorts: port } : undefined;
    }
    case 'TPROXY': {
      if (!known(['--on-port', '--on-ip', '--tproxy-mark'])) return undefined;
      const onPort = Number(opt('--on-port'));
      const onIp = canonicalAddress(opt('--on-ip') ?? (family === 'ipv4' ? '0.0.0.0' : '::'), family);
      const mark = parseMark(opt('--tproxy-mark') ?? '0x0/0x0');
      if (!Number.isInteger(onPort) || !onIp || !mark) return undefined;
      return { kind: 'TPROXY', onPort, onIp, tproxyMark: { value: mark.value, mask: mark.mask ?? 0xffffffff } };
    }
    case 'CONNMARK': {
      if (opts[0] === '--restore-mark') {
        if (!known(['--nfmask', '--ctmask', '--mask'], ['--restore-mark'])) return undefined;
        const mask = opt('--mask');
        return {
          kind: 'CONNMARK',
          op: 'restore',
          nfmask: Number(opt('--nfmask') ?? mask ?? 0xffffffff),
          ctmask: Number(opt('--ctmask') ?? mask ?? 0xffffffff),
        };
      }
      if (!known(['--set-xmark', '--set-mark'])) return undefined;
      const x = opt('--set-xmark');
      const s = opt('--set-mark');
      const mark = parseMark(x ?? s);
      if (!mark) return undefined;
      const mask = mark.mask ?? 0xffffffff;
      // --set-mark v/m is stored (and saved) as --set-xmark v/(m|v).
      return { kind: 'CONNMARK', op: 'set', value: mark.value, mask: x ? mask : (mask | mark.value) >>> 0 };
    }
    case 'MARK': {
      if (!known(['--set-xmark', '--set-mark'])) return undefined;
      const mark = parseMark(opt('--set-xmark') ?? opt('--set-mark'));
      return mark ? { kind: 'MARK', value: mark.value, mask: mark.mask ?? 0xffffffff } : undefined;
    }
    case 'CT': {
      if (!known(['--zone'])) return undefined;
      const zone = Number(opt('--zone'));
      return Number.isInteger(zone) ? { kind: 'CT', zone } : undefined;
    }
    case 'SNAT': {
      if (!known(['--to-source'])) return undefined;
      const to = canonicalAddress(opt('--to-source') ?? '', family);
      return to ? { kind: 'SNAT', toSource: to } : undefined;
    }
    default:
      // A target without options renders the same as a jump (e.g. MASQUERADE), so either reading works.
      return opts.length || !/^[A-Za-z0-9_.-]{1,28}$/.test(name) ? undefined : { kind: 'jump', chain: name };
  }
}
