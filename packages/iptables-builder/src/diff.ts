import { isBuiltinChain, type Family, type FamilyRules, type TableName } from './model.js';
import type { SavedRule, SavedTable } from './parse-iptables.js';
import { renderRuleSpec } from './render-iptables.js';

/** Chains whose names start with this are Weir's (Istio-compatible, so Weir can take over Istio's rules). */
export const DEFAULT_CHAIN_PREFIX = 'ISTIO_';

export type RuleChange =
  | { readonly kind: 'missing-chain' | 'extra-chain'; readonly family: Family; readonly table: string; readonly chain: string }
  | {
      readonly kind: 'missing-rule' | 'extra-rule';
      readonly family: Family;
      readonly table: string;
      readonly chain: string;
      readonly rule: string;
    }
  /** The chain holds exactly the wanted rules, in another order. */
  | { readonly kind: 'misordered'; readonly family: Family; readonly table: string; readonly chain: string };

export interface RuleDiff {
  /** True when nothing differs; applying would run nothing. */
  readonly inSync: boolean;
  readonly changes: readonly RuleChange[];
}

/** What one table should hold, as canonical rule specs. */
export interface DesiredTable {
  readonly name: string;
  /** Chains wholly owned, in creation order, with their rules in order. */
  readonly owned: ReadonlyMap<string, readonly string[]>;
  /** Rules owned inside shared chains (the jumps from builtin chains). */
  readonly hooks: readonly { readonly chain: string; readonly spec: string; readonly first: boolean }[];
}

export function desiredFromFamily(fam: FamilyRules | undefined): DesiredTable[] {
  if (!fam) return [];
  return fam.tables.map((table) => {
    const owned = new Map<string, string[]>();
    const hooks: { chain: string; spec: string; first: boolean }[] = [];
    for (const chain of table.chains) {
      if (isBuiltinChain(table.name, chain.name)) {
        for (const rule of chain.rules) {
          hooks.push({ chain: chain.name, spec: renderRuleSpec(rule), first: rule.position === 'first' });
        }
      } else {
        owned.set(chain.name, chain.rules.map(renderRuleSpec));
      }
    }
    return { name: table.name, owned, hooks };
  });
}

/**
 * The owned part of a saved state, as a desired state (used to roll back to what was there).
 * Rules in shared chains that jump to owned chains count as hooks.
 */
export function desiredFromSaved(saved: readonly SavedTable[], prefix: string): DesiredTable[] {
  return saved.map((t) => {
    const isOwned = (c: string): boolean => !isBuiltinChain(t.name as TableName, c) && c.startsWith(prefix);
    const owned = new Map<string, string[]>();
    for (const c of t.chains) if (isOwned(c.name)) owned.set(c.name, []);
    const hooks: { chain: string; spec: string; first: boolean }[] = [];
    for (const r of t.rules) {
      const specs = owned.get(r.chain);
      if (specs) specs.push(r.spec);
      else if (jumpTarget(r) !== undefined && isOwned(jumpTarget(r) as string)) {
        hooks.push({ chain: r.chain, spec: r.spec, first: false });
      }
    }
    return { name: t.name, owned, hooks };
  });
}

export function jumpTarget(rule: SavedRule): string | undefined {
  if (rule.rule) return rule.rule.target.kind === 'jump' ? rule.rule.target.chain : undefined;
  return /(?:^|\s)-j\s+(\S+)$/.exec(rule.spec)?.[1];
}

interface TablePlan {
  readonly table: string;
  readonly changes: RuleChange[];
  /** Owned chains to (re)create empty and refill. */
  readonly resets: string[];
  /** Owned chains present but not wanted. */
  readonly stale: string[];
  /** Rules in shared chains to delete (their saved text). */
  readonly deletes: { chain: string; text: string }[];
  readonly addHooks: { chain: string; spec: string; first: boolean }[];
  readonly desired: DesiredTable | undefined;
}

function planFamily(
  family: Family,
  desired: readonly DesiredTable[],
  actual: readonly SavedTable[],
  prefix: string,
): TablePlan[] {
  const names = [...new Set([...desired.map((t) => t.name), ...actual.map((t) => t.name)])];
  const plans: TablePlan[] = [];
  for (const name of names) {
    const want = desired.find((t) => t.name === name);
    const have = actual.find((t) => t.name === name) ?? { name, chains: [], rules: [] };
    const builtin = (c: string): boolean => isBuiltinChain(name as TableName, c);
    const isOwned = (c: string): boolean => !builtin(c) && (c.startsWith(prefix) || (want?.owned.has(c) ?? false));
    const changes: RuleChange[] = [];
    const resets: string[] = [];
    const stale: string[] = [];
    const deletes: { chain: string; text: string }[] = [];
    const addHooks: { chain: string; spec: string; first: boolean }[] = [];
    const haveChains = new Set(have.chains.map((c) => c.name));
    const rulesIn = (chain: string): SavedRule[] => have.rules.filter((r) => r.chain === chain);

    for (const [chain, specs] of want?.owned ?? []) {
      if (!haveChains.has(chain)) {
        changes.push({ kind: 'missing-chain', family, table: name, chain });
        for (const rule of specs) changes.push({ kind: 'missing-rule', family, table: name, chain, rule });
        resets.push(chain);
        continue;
      }
      const got = rulesIn(chain).map((r) => r.spec);
      if (sameList(got, specs)) continue;
      resets.push(chain);
      const missing = minus(specs, got);
      const extra = minus(got, specs);
      for (const rule of missing) changes.push({ kind: 'missing-rule', family, table: name, chain, rule });
      for (const rule of extra) changes.push({ kind: 'extra-rule', family, table: name, chain, rule });
      if (!missing.length && !extra.length) changes.push({ kind: 'misordered', family, table: name, chain });
    }
    for (const c of have.chains) {
      if (isOwned(c.name) && !want?.owned.has(c.name)) {
        stale.push(c.name);
        changes.push({ kind: 'extra-chain', family, table: name, chain: c.name });
      }
    }
    // Shared chains: wanted hooks must exist; any other jump into an owned chain goes.
    const sharedChains = [...new Set([...(want?.hooks ?? []).map((h) => h.chain), ...have.rules.map((r) => r.chain)])].filter(
      (c) => !isOwned(c),
    );
    for (const chain of sharedChains) {
      const wantHooks = (want?.hooks ?? []).filter((h) => h.chain === chain);
      const remaining = wantHooks.map((h) => h.spec);
      for (const r of rulesIn(chain)) {
        const i = remaining.indexOf(r.spec);
        if (i !== -1) {
          remaining.splice(i, 1);
          continue;
        }
        const target = jumpTarget(r);
        if (target !== undefined && isOwned(target)) {
          deletes.push({ chain, text: r.text });
          changes.push({ kind: 'extra-rule', family, table: name, chain, rule: r.spec });
        }
      }
      for (const h of wantHooks) {
        const i = remaining.indexOf(h.spec);
        if (i === -1) continue;
        remaining.splice(i, 1);
        addHooks.push(h);
        changes.push({ kind: 'missing-rule', family, table: name, chain, rule: h.spec });
      }
    }
    plans.push({ table: name, changes, resets, stale, deletes, addHooks, desired: want });
  }
  return plans;
}

/** Compare what `family` should hold with what iptables-save shows. */
export function diffTables(
  family: Family,
  desired: readonly DesiredTable[],
  actual: readonly SavedTable[],
  prefix: string = DEFAULT_CHAIN_PREFIX,
): RuleDiff {
  const changes = planFamily(family, desired, actual, prefix).flatMap((p) => p.changes);
  return { inSync: changes.length === 0, changes };
}

/**
 * `iptables-restore --noflush` input that turns `actual` into `desired` touching only owned chains
 * and owned jumps: changed chains are re-declared (which flushes them), stale ones flushed and
 * removed, wanted hooks added, others' rules left alone. Empty string when already in sync.
 */
export function reconcileRestore(
  family: Family,
  desired: readonly DesiredTable[],
  actual: readonly SavedTable[],
  prefix: string = DEFAULT_CHAIN_PREFIX,
): string {
  const lines: string[] = [];
  for (const p of planFamily(family, desired, actual, prefix)) {
    if (!p.changes.length) continue;
    lines.push(`*${p.table}`);
    for (const c of [...p.resets, ...p.stale]) lines.push(`:${c} - [0:0]`);
    for (const d of p.deletes) lines.push(`-D ${d.chain} ${d.text}`);
    for (const c of p.stale) lines.push(`-X ${c}`);
    for (const c of p.resets) for (const spec of p.desired?.owned.get(c) ?? []) lines.push(`-A ${c} ${spec}`);
    for (const h of p.addHooks.filter((x) => !x.first)) lines.push(`-A ${h.chain} ${h.spec}`);
    for (const h of p.addHooks.filter((x) => x.first).reverse()) lines.push(`-I ${h.chain} 1 ${h.spec}`);
    lines.push('COMMIT');
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Multiset difference a − b, keeping a's order. */
function minus(a: readonly string[], b: readonly string[]): string[] {
  const rest = [...b];
  return a.filter((x) => {
    const i = rest.indexOf(x);
    if (i === -1) return true;
    rest.splice(i, 1);
    return false;
  });
}

/**
 * `iptables-restore --noflush` input removing exactly Weir's rules from `saved`: every chain with
 * `prefix` (flushed, then deleted) and every jump into one; '' when there is nothing to remove.
 */
export function renderIptablesCleanup(family: Family, saved: readonly SavedTable[], prefix: string = DEFAULT_CHAIN_PREFIX): string {
  return reconcileRestore(family, [], saved, prefix);
}
