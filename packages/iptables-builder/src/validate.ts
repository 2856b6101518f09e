import { canonicalAddress, canonicalCidr, familyOf } from './address.js';
import { InvalidRuleError } from './errors.js';
import {
  isBuiltinChain,
  TABLE_NAMES,
  type Chain,
  type CtState,
  type Family,
  type FamilyRules,
  type Match,
  type PortSpec,
  type Rule,
  type RuleSet,
  type Table,
  type TableName,
  type Target,
} from './model.js';

const PROTOCOLS = new Set(['tcp', 'udp', 'icmp', 'ipv6-icmp', 'sctp', 'all']);
const CT_STATES = new Set<CtState>(['NEW', 'ESTABLISHED', 'RELATED', 'INVALID', 'UNTRACKED', 'SNAT', 'DNAT']);
const CHAIN_NAME = /^[A-Za-z0-9_.-]{1,28}$/;
const IFACE_NAME = /^[^\s/!"]{1,15}$/;
const SET_NAME = /^[A-Za-z0-9_.:-]{1,31}$/;
const U32 = 0xffffffff;

/** Which tables each target may be used in (the kernel rejects the rest, or they would be no-ops). */
const TARGET_TABLES: Record<Target['kind'], readonly TableName[]> = {
  ACCEPT: TABLE_NAMES,
  RETURN: TABLE_NAMES,
  jump: TABLE_NAMES,
  DROP: ['raw', 'mangle', 'filter'],
  REDIRECT: ['nat'],
  SNAT: ['nat'],
  TPROXY: ['mangle'],
  CONNMARK: ['raw', 'mangle', 'filter'],
  MARK: ['raw', 'mangle', 'filter'],
  CT: ['raw'],
};

/**
 * Validate a whole rule set and return it in canonical form (addresses as iptables-save prints
 * them). Throws `InvalidRuleError` naming the first bad field, e.g. `ipv4.nat.ISTIO_OUTPUT[2].target`.
 */
export function defineRuleSet(spec: RuleSet): RuleSet {
  const seen = new Set<Family>();
  const families = spec.families.map((fam, i) => {
    const path = `families[${i}]`;
    if (fam.family !== 'ipv4' && fam.family !== 'ipv6') fail(`${path}.family`, fam.family, 'must be ipv4 or ipv6');
    if (seen.has(fam.family)) fail(`${path}.family`, fam.family, 'family listed twice');
    seen.add(fam.family);
    return defineFamily(fam);
  });
  return deepFreeze({ families });
}

function defineFamily(fam: FamilyRules): FamilyRules {
  const seen = new Set<TableName>();
  const tables = fam.tables.map((table) => {
    const path = `${fam.family}.${String(table.name)}`;
    if (!TABLE_NAMES.includes(table.name)) fail(`${path}`, table.name, `table must be one of ${TABLE_NAMES.join(', ')}`);
    if (seen.has(table.name)) fail(path, table.name, 'table listed twice');
    seen.add(table.name);
    return defineTable(fam.family, table, path);
  });
  return { family: fam.family, tables };
}

function defineTable(family: Family, table: Table, path: string): Table {
  const names = new Set<string>();
  for (const chain of table.chains) {
    const cpath = `${path}.${String(chain.name)}`;
    if (typeof chain.name !== 'string' || !CHAIN_NAME.test(chain.name) || chain.name.startsWith('-')) {
      fail(`${cpath}.name`, chain.name, 'chain names are 1-28 characters of A-Z a-z 0-9 _ . -');
    }
    if (names.has(chain.name)) fail(`${cpath}.name`, chain.name, 'chain listed twice');
    names.add(chain.name);
  }
  const userChains = new Set([...names].filter((n) => !isBuiltinChain(table.name, n)));
  const chains: Chain[] = table.chains.map((chain) => ({
    name: chain.name,
    rules: chain.rules.map((rule, i) =>
      validateRule(family, table.name, chain.name, rule, `${path}.${chain.name}[${i}]`, userChains),
    ),
  }));
  return { name: table.name, chains };
}

/**
 * Validate one rule for `family`/`table`/`chain` and return it canonicalised. `userChains`, when
 * given, are the chains a `jump` may target.
 */
export function buildRule(
  family: Family,
  table: TableName,
  chain: string,
  rule: Rule,
  userChains?: ReadonlySet<string>,
): Rule {
  if (!TABLE_NAMES.includes(table)) fail('table', table, `table must be one of ${TABLE_NAMES.join(', ')}`);
  return deepFreeze(validateRule(family, table, chain, rule, `${family}.${table}.${chain}`, userChains));
}

function validateRule(
  family: Family,
  table: TableName,
  chain: string,
  rule: Rule,
  path: string,
  userChains: ReadonlySet<string> | undefined,
): Rule {
  if (rule.position !== undefined && rule.position !== 'append' && rule.position !== 'first') {
    fail(`${path}.position`, rule.position, "must be 'append' or 'first'");
  }
  if (rule.position === 'first' && !isBuiltinChain(table, chain)) {
    fail(`${path}.position`, rule.position, `'first' is only for hooks in builtin chains, not ${chain}`);
  }
  if (!Array.isArray(rule.matches)) fail(`${path}.matches`, rule.matches, 'must be an array');
  const once = new Set<string>();
  let protocol: { protocol: string; invert: boolean } | undefined;
  const matches = rule.matches.map((m, i) => {
    const mp = `${path}.matches[${i}]`;
    const single = ['protocol', 'source', 'destination', 'inInterface', 'outInterface'];
    if (single.includes(m.kind)) {
      if (once.has(m.kind)) fail(`${mp}.kind`, m.kind, 'may appear only once per rule');
      once.add(m.kind);
    }
    const out = validateMatch(family, m, mp, protocol);
    if (out.kind === 'protocol') protocol = { protocol: out.protocol, invert: out.invert === true };
    return out;
  });
  const target = validateTarget(family, table, rule.target, `${path}.target`, userChains, protocol);
  return rule.position === 'first' ? { matches, target, position: 'first' } : { matches, target };
}

function validateMatch(
  family: Family,
  m: Match,
  path: string,
  protocol: { protocol: string; invert: boolean } | undefined,
): Match {
  const invert = 'invert' in m && m.invert === true ? { invert: true as const } : {};
  switch (m.kind) {
    case 'protocol': {
      if (!PROTOCOLS.has(m.protocol)) fail(`${path}.protocol`, m.protocol, `must be one of ${[...PROTOCOLS].join(', ')}`);
      if (family === 'ipv4' && m.protocol === 'ipv6-icmp') fail(`${path}.protocol`, m.protocol, 'is IPv6-only');
      if (family === 'ipv6' && m.protocol === 'icmp') fail(`${path}.protocol`, m.protocol, "is IPv4-only (use 'ipv6-icmp')");
      return { kind: 'protocol', protocol: m.protocol, ...invert };
    }
    case 'source':
    case 'destination':
      return { kind: m.kind, cidr: cidr(family, m.cidr, `${path}.cidr`), ...invert };
    case 'inInterface':
    case 'outInterface':
      if (typeof m.name !== 'string' || !IFACE_NAME.test(m.name)) {
        fail(`${path}.name`, m.name, 'interface names are 1-15 characters without spaces or /');
      }
      return { kind: m.kind, name: m.name, ...invert };
    case 'tcp':
    case 'udp': {
      if (protocol?.protocol !== m.kind || protocol.invert) {
        fail(`${path}.kind`, m.kind, `-m ${m.kind} needs a preceding -p ${m.kind} match`);
      }
      return {
        kind: m.kind,
        ...(m.sport ? { sport: port(m.sport, `${path}.sport`) } : {}),
        ...(m.dport ? { dport: port(m.dport, `${path}.dport`) } : {}),
      };
    }
    case 'mark':
    case 'connmark':
      u32(m.value, `${path}.value`);
      if (m.mask !== undefined) u32(m.mask, `${path}.mask`);
      return { kind: m.kind, value: m.value, ...(m.mask !== undefined ? { mask: m.mask } : {}), ...invert };
    case 'conntrack': {
      if (!Array.isArray(m.ctstate) || m.ctstate.length === 0) fail(`${path}.ctstate`, m.ctstate, 'needs at least one state');
      m.ctstate.forEach((s, i) => {
        if (!CT_STATES.has(s)) fail(`${path}.ctstate[${i}]`, s, `must be one of ${[...CT_STATES].join(', ')}`);
      });
      return { kind: 'conntrack', ctstate: [...m.ctstate], ...invert };
    }
    case 'owner':
      if (m.socketExists !== true) fail(`${path}.socketExists`, m.socketExists, 'must be true');
      return { kind: 'owner', socketExists: true };
    case 'set': {
      if (typeof m.name !== 'string' || !SET_NAME.test(m.name)) fail(`${path}.name`, m.name, 'ipset names are 1-31 characters');
      if (!Array.isArray(m.flags) || m.flags.length < 1 || m.flags.length > 6) {
        fail(`${path}.flags`, m.flags, 'needs 1 to 6 of src/dst');
      }
      m.flags.forEach((f, i) => {
        if (f !== 'src' && f !== 'dst') fail(`${path}.flags[${i}]`, f, "must be 'src' or 'dst'");
      });
      return { kind: 'set', name: m.name, flags: [...m.flags], ...invert };
    }
    case 'comment':
      if (typeof m.text !== 'string' || m.text.length === 0 || m.text.length > 256 || /["\n\r\\]/.test(m.text)) {
        fail(`${path}.text`, m.text, 'comments are 1-256 characters without quotes, backslashes or newlines');
      }
      return { kind: 'comment', text: m.text };
    default:
      return fail(`${path}.kind`, (m as { kind: unknown }).kind, 'unknown match kind');
  }
}

function validateTarget(
  family: Family,
  table: TableName,
  t: Target,
  path: string,
  userChains: ReadonlySet<string> | undefined,
  protocol: { protocol: string; invert: boolean } | undefined,
): Target {
  const allowed = TARGET_TABLES[t.kind] as readonly TableName[] | undefined;
  if (!allowed) fail(`${path}.kind`, (t as { kind: unknown }).kind, 'unknown target');
  if (!allowed.includes(table)) {
    fail(`${path}.kind`, t.kind, `target ${t.kind} is not valid in table ${table} (only ${allowed.join(', ')})`);
  }
  const needsL4 = (what: string): void => {
    if ((protocol?.protocol !== 'tcp' && protocol?.protocol !== 'udp') || protocol.invert) {
      fail(`${path}.kind`, t.kind, `${what} needs a -p tcp or -p udp match`);
    }
  };
  switch (t.kind) {
    case 'ACCEPT':
    case 'RETURN':
    case 'DROP':
      return { kind: t.kind };
    case 'jump':
      if (typeof t.chain !== 'string' || !CHAIN_NAME.test(t.chain)) fail(`${path}.chain`, t.chain, 'not a chain name');
      if (isBuiltinChain(table, t.chain)) fail(`${path}.chain`, t.chain, 'cannot jump to a builtin chain');
      if (userChains && !userChains.has(t.chain)) fail(`${path}.chain`, t.chain, `chain is not declared in table ${table}`);
      return { kind: 'jump', chain: t.chain };
    case 'REDIRECT':
      needsL4('REDIRECT --to-ports');
      portNumber(t.toPorts, `${path}.toPorts`);
      return { kind: 'REDIRECT', toPorts: t.toPorts };
    case 'TPROXY': {
      needsL4('TPROXY');
      portNumber(t.onPort, `${path}.onPort`);
      const onIp = address(family, t.onIp ?? (family === 'ipv4' ? '0.0.0.0' : '::'), `${path}.onIp`);
      if (t.tproxyMark) {
        u32(t.tproxyMark.value, `${path}.tproxyMark.value`);
        u32(t.tproxyMark.mask, `${path}.tproxyMark.mask`);
      }
      return {
        kind: 'TPROXY',
        onPort: t.onPort,
        onIp,
        ...(t.tproxyMark ? { tproxyMark: { value: t.tproxyMark.value, mask: t.tproxyMark.mask } } : {}),
      };
    }
    case 'CONNMARK':
      if (t.op === 'set') {
        u32(t.value, `${path}.value`);
        u32(t.mask, `${path}.mask`);
        return { kind: 'CONNMARK', op: 'set', value: t.value, mask: t.mask };
      }
      if (t.op === 'restore') {
        u32(t.nfmask ?? U32, `${path}.nfmask`);
        u32(t.ctmask ?? U32, `${path}.ctmask`);
        return { kind: 'CONNMARK', op: 'restore', nfmask: t.nfmask ?? U32, ctmask: t.ctmask ?? U32 };
      }
      return fail(`${path}.op`, (t as { op: unknown }).op, "must be 'set' or 'restore'");
    case 'MARK':
      u32(t.value, `${path}.value`);
      u32(t.mask ?? U32, `${path}.mask`);
      return { kind: 'MARK', value: t.value, mask: t.mask ?? U32 };
    case 'CT':
      if (!Number.isInteger(t.zone) || t.zone < 0 || t.zone > 0xffff) fail(`${path}.zone`, t.zone, 'must be 0-65535');
      return { kind: 'CT', zone: t.zone };
    case 'SNAT':
      return { kind: 'SNAT', toSource: address(family, t.toSource, `${path}.toSource`) };
  }
}

function cidr(family: Family, value: string, path: string): string {
  const out = typeof value === 'string' ? canonicalCidr(value, family) : undefined;
  if (out === undefined) fail(path, value, wrongFamily(family, value, 'CIDR'));
  return out;
}

function address(family: Family, value: string, path: string): string {
  const out = typeof value === 'string' ? canonicalAddress(value, family) : undefined;
  if (out === undefined) fail(path, value, wrongFamily(family, value, 'address'));
  return out;
}

function wrongFamily(family: Family, value: unknown, what: string): string {
  const other = typeof value === 'string' ? familyOf(value) : undefined;
  const want = family === 'ipv4' ? 'IPv4' : 'IPv6';
  if (other && other !== family) return `an ${other === 'ipv4' ? 'IPv4' : 'IPv6'} ${what} in an ${want} rule`;
  return `not an ${want} ${what}`;
}

function port(p: PortSpec, path: string): PortSpec {
  if (typeof p !== 'object' || p === null) fail(path, p, 'must be { port, toPort?, invert? }');
  portNumber(p.port, `${path}.port`, 0);
  if (p.toPort !== undefined) {
    portNumber(p.toPort, `${path}.toPort`, 0);
    if (p.toPort < p.port) fail(`${path}.toPort`, p.toPort, `range end is below its start ${p.port}`);
  }
  return {
    port: p.port,
    ...(p.toPort !== undefined ? { toPort: p.toPort } : {}),
    ...(p.invert === true ? { invert: true } : {}),
  };
}

function portNumber(value: number, path: string, min = 1): void {
  if (!Number.isInteger(value) || value < min || value > 65535) fail(path, value, `ports are integers ${min}-65535`);
}

function u32(value: number, path: string): void {
  if (!Number.isInteger(value) || value < 0 || value > U32) fail(path, value, 'marks are integers 0-0xffffffff');
}

function fail(field: string, value: unknown, reason: string): never {
  throw new InvalidRuleError(field, value, reason);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
