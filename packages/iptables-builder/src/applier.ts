import { detectBackend, iptablesCommand, type IptablesBackend } from './backend.js';
import {
  DEFAULT_CHAIN_PREFIX,
  desiredFromFamily,
  desiredFromSaved,
  diffTables,
  reconcileRestore,
  type RuleChange,
  type RuleDiff,
} from './diff.js';
import { CommandFailedError, IptablesError } from './errors.js';
import type { CommandExecutor } from './executor.js';
import { silentLogger, type Logger } from './logger.js';
import type { Family, RuleRef, RuleSet, TableName } from './model.js';
import { parseIptablesSave, type SavedTable } from './parse-iptables.js';
import { parseNftListing, type ListedNftChain } from './parse-nft.js';
import { DEFAULT_NFT_TABLE_PREFIX, planNft, renderNftPlans, type NftTablePlan } from './render-nft.js';

export interface RuleApplierOptions {
  /** Where commands run; `netnsExecutor(path)` for a pod. */
  readonly executor: CommandExecutor;
  /** `auto` (default) detects legacy vs iptables-nft in this executor's netns; `nftables` is native nft. */
  readonly backend?: 'auto' | IptablesBackend;
  /** Chains with this prefix are Weir's; default `ISTIO_`. */
  readonly chainPrefix?: string;
  /** nftables backend: tables `inet <prefix>-<table>`; default `istio-ambient`. */
  readonly nftTablePrefix?: string;
  readonly logger?: Logger;
}

export interface ApplyResult {
  /** False when the rules were already in place and nothing was run. */
  readonly changed: boolean;
  /** Rules that had drifted from an earlier apply and were put back (empty on a first install). */
  readonly repaired: readonly RuleRef[];
  readonly backend: IptablesBackend;
  /** What differed before this apply. */
  readonly diff: RuleDiff;
}

interface FamilyState {
  readonly family: Family;
  readonly saved: SavedTable[];
}

/**
 * Applies rule sets atomically and idempotently through an injected executor: each family is one
 * `iptables-restore --noflush` (nftables: one `nft -f` for everything), computed from a diff with
 * `iptables-save`, so an in-sync netns runs nothing and drift is repaired in place.
 */
export class RuleApplier {
  readonly #executor: CommandExecutor;
  readonly #requested: 'auto' | IptablesBackend;
  readonly #prefix: string;
  readonly #nftPrefix: string;
  readonly #logger: Logger;
  #backend: Promise<IptablesBackend> | undefined;

  constructor(options: RuleApplierOptions) {
    this.#executor = options.executor;
    this.#requested = options.backend ?? 'auto';
    this.#prefix = options.chainPrefix ?? DEFAULT_CHAIN_PREFIX;
    this.#nftPrefix = options.nftTablePrefix ?? DEFAULT_NFT_TABLE_PREFIX;
    this.#logger = options.logger ?? silentLogger;
  }

  /** The backend in use (detected once, on first need). */
  backend(): Promise<IptablesBackend> {
    this.#backend ??=
      this.#requested === 'auto' ? detectBackend(this.#executor, this.#logger) : Promise.resolve(this.#requested);
    return this.#backend;
  }

  async diff(ruleSet: RuleSet): Promise<RuleDiff> {
    const backend = await this.backend();
    if (backend === 'nftables') return (await this.#nftState(ruleSet)).diff;
    const changes: RuleChange[] = [];
    for (const fam of ruleSet.families) {
      const { saved } = await this.#save(backend, fam.family);
      changes.push(...diffTables(fam.family, desiredFromFamily(fam), saved, this.#prefix).changes);
    }
    return { inSync: changes.length === 0, changes };
  }

  async apply(ruleSet: RuleSet): Promise<ApplyResult> {
    const backend = await this.backend();
    if (backend === 'nftables') return this.#applyNft(ruleSet);
    const changes: RuleChange[] = [];
    const repaired: RuleRef[] = [];
    for (const fam of ruleSet.families) {
      const before = await this.#save(backend, fam.family);
      const desired = desiredFromFamily(fam);
      const diff = diffTables(fam.family, desired, before.saved, this.#prefix);
      if (diff.inSync) {
        this.#logger.debug({ family: fam.family, backend }, 'rules in sync, nothing to apply');
        continue;
      }
      changes.push(...diff.changes);
      const hadRules = before.saved.some((t) => t.chains.some((c) => c.name.startsWith(this.#prefix)));
      if (hadRules) repaired.push(...refs(diff.changes));
      const text = reconcileRestore(fam.family, desired, before.saved, this.#prefix);
      await this.#restore(backend, before, text);
      this.#logger.info(
        { family: fam.family, backend, changes: diff.changes.length, repaired: hadRules },
        hadRules ? 'repaired drifted rules' : 'applied rules',
      );
    }
    return { changed: changes.length > 0, repaired, backend, diff: { inSync: changes.length === 0, changes } };
  }

  /**
   * Remove exactly Weir's rules: every chain with the prefix (nftables: every `<prefix>-*` table)
   * and every jump into one; anything else stays. Both families unless `families` says otherwise.
   */
  async cleanup(families: readonly Family[] = ['ipv4', 'ipv6']): Promise<void> {
    const backend = await this.backend();
    if (backend === 'nftables') {
      const tables = await this.#nftTables();
      if (!tables.length) return;
      await this.#nft(tables.map((t) => `delete table inet ${t}`).join('\n') + '\n', 'ERR_IPTABLES_RESTORE_FAILED');
      this.#logger.info({ backend, tables }, 'removed rules');
      return;
    }
    for (const family of families) {
      const before = await this.#save(backend, family);
      const text = reconcileRestore(family, [], before.saved, this.#prefix);
      if (!text) continue;
      await this.#restore(backend, before, text);
      this.#logger.info({ family, backend }, 'removed rules');
    }
  }

  #save(backend: 'legacy' | 'nft', family: Family): Promise<FamilyState> {
    return saveFamily(this.#executor, backend, family);
  }

  /**
   * One restore for the family. iptables commits table by table, so when a later table fails the
   * earlier ones are put back to what `before` showed, and the error carries iptables' stderr.
   */
  async #restore(backend: 'legacy' | 'nft', before: FamilyState, text: string): Promise<void> {
    const cmd = iptablesCommand(backend, before.family, 'restore');
    const args = restoreArgs(backend);
    const r = await this.#executor.run(cmd, args, { input: text });
    if (r.code === 0) return;
    const error = commandError('ERR_IPTABLES_RESTORE_FAILED', cmd, args, r, text);
    this.#logger.error({ family: before.family, backend, stderr: r.stderr.trim() }, 'rule restore failed, rolling back');
    await rollbackFamily(this.#executor, backend, before.family, before.saved, this.#prefix, error);
  }

  async #nftTables(): Promise<string[]> {
    const r = await this.#executor.run('nft', ['list', 'tables']);
    if (r.code !== 0) {
      throw commandError(r.code === 127 ? 'ERR_IPTABLES_BACKEND_UNAVAILABLE' : 'ERR_IPTABLES_COMMAND_FAILED', 'nft', ['list', 'tables'], r);
    }
    return r.stdout
      .split('\n')
      .map((l) => /^table inet (\S+)$/.exec(l.trim())?.[1])
      .filter((t): t is string => t !== undefined && t.startsWith(`${this.#nftPrefix}-`));
  }

  async #nftState(ruleSet: RuleSet): Promise<{ plans: NftTablePlan[]; diff: RuleDiff; stale: string[]; existed: boolean }> {
    const plans = planNft(ruleSet, { tablePrefix: this.#nftPrefix, tag: true });
    const present = await this.#nftTables();
    const changes: RuleChange[] = [];
    const stale: string[] = [];
    const family: Family = ruleSet.families[0]?.family ?? 'ipv4';
    for (const name of present) {
      const r = await this.#executor.run('nft', ['list', 'table', 'inet', name]);
      if (r.code !== 0) throw commandError('ERR_IPTABLES_COMMAND_FAILED', 'nft', ['list', 'table', 'inet', name], r);
      const listed = parseNftListing(r.stdout);
      const plan = plans.find((p) => p.name === name);
      if (!plan) {
        stale.push(`delete table inet ${name}`);
        for (const c of listed) changes.push({ kind: 'extra-chain', family, table: name, chain: c.name });
        continue;
      }
      changes.push(...diffNftTable(family, plan, listed, stale));
    }
    for (const plan of plans) {
      if (present.includes(plan.name)) continue;
      for (const chain of plan.chains.keys()) changes.push({ kind: 'missing-chain', family, table: plan.name, chain });
      for (const r of plan.rules) changes.push({ kind: 'missing-rule', family: r.family, table: plan.name, chain: r.nftChain, rule: r.text });
    }
    return { plans, diff: { inSync: changes.length === 0, changes }, stale, existed: present.length > 0 };
  }

  async #applyNft(ruleSet: RuleSet): Promise<ApplyResult> {
    const { plans, diff, stale, existed } = await this.#nftState(ruleSet);
    if (diff.inSync) return { changed: false, repaired: [], backend: 'nftables', diff };
    // add+flush table, chains, rules, then drop what is no longer wanted: one atomic transaction.
    await this.#nft(renderNftPlans(plans, true, stale), 'ERR_IPTABLES_RESTORE_FAILED');
    this.#logger.info({ backend: 'nftables', changes: diff.changes.length, repaired: existed }, existed ? 'repaired drifted rules' : 'applied rules');
    return { changed: true, repaired: existed ? refs(diff.changes) : [], backend: 'nftables', diff };
  }

  async #nft(text: string, code: 'ERR_IPTABLES_RESTORE_FAILED'): Promise<void> {
    const r = await this.#executor.run('nft', ['-f', '-'], { input: text });
    if (r.code !== 0) throw commandError(code, 'nft', ['-f', '-'], r, text);
  }
}

function diffNftTable(family: Family, plan: NftTablePlan, listed: readonly ListedNftChain[], stale: string[]): RuleChange[] {
  const changes: RuleChange[] = [];
  const table = plan.name;
  for (const chain of plan.chains.keys()) {
    const got = listed.find((c) => c.name === chain);
    const want = plan.rules.filter((r) => r.nftChain === chain);
    if (!got) {
      changes.push({ kind: 'missing-chain', family, table, chain });
      for (const r of want) changes.push({ kind: 'missing-rule', family: r.family, table, chain, rule: r.text });
      continue;
    }
    const gotTags = got.rules.map((r) => r.tag);
    if (gotTags.length === want.length && want.every((r, i) => r.tag === gotTags[i])) continue;
    const missing = want.filter((r) => !gotTags.includes(r.tag));
    const extra = got.rules.filter((r) => r.tag === undefined || !want.some((w) => w.tag === r.tag));
    for (const r of missing) changes.push({ kind: 'missing-rule', family: r.family, table, chain, rule: r.text });
    for (const r of extra) changes.push({ kind: 'extra-rule', family, table, chain, rule: r.text });
    if (!missing.length && !extra.length) changes.push({ kind: 'misordered', family, table, chain });
  }
  for (const c of listed) {
    if (!plan.chains.has(c.name)) {
      changes.push({ kind: 'extra-chain', family, table, chain: c.name });
      stale.push(`delete chain inet ${table} ${c.name}`);
    }
  }
  return changes;
}

async function saveFamily(executor: CommandExecutor, backend: 'legacy' | 'nft', family: Family): Promise<FamilyState> {
  const cmd = iptablesCommand(backend, family, 'save');
  const r = await executor.run(cmd, []);
  if (r.code !== 0) throw commandError(r.code === 127 ? 'ERR_IPTABLES_BACKEND_UNAVAILABLE' : 'ERR_IPTABLES_COMMAND_FAILED', cmd, [], r);
  return { family, saved: parseIptablesSave(r.stdout, family) };
}

/** `iptables-restore` argv for a backend (legacy waits for the xtables lock). */
export function restoreArgs(backend: 'legacy' | 'nft'): string[] {
  return backend === 'legacy' ? ['--noflush', '-w', '5'] : ['--noflush'];
}

/**
 * After a failed restore of `family`: put Weir's chains back to what `before` showed (iptables
 * commits table by table, so earlier tables of the failed restore may be in), then throw `error`,
 * or an error carrying both when the rollback fails too.
 */
export async function rollbackFamily(
  executor: CommandExecutor,
  backend: 'legacy' | 'nft',
  family: Family,
  before: readonly SavedTable[],
  prefix: string,
  error: CommandFailedError,
): Promise<never> {
  const cmd = iptablesCommand(backend, family, 'restore');
  const args = restoreArgs(backend);
  try {
    const now = await saveFamily(executor, backend, family);
    const undo = reconcileRestore(family, desiredFromSaved(before, prefix), now.saved, prefix);
    if (undo) {
      const u = await executor.run(cmd, args, { input: undo });
      if (u.code !== 0) throw commandError('ERR_IPTABLES_RESTORE_FAILED', cmd, args, u, undo);
    }
  } catch (rollback) {
    throw new CommandFailedError('ERR_IPTABLES_RESTORE_FAILED', error.command, error.args, error.exitCode, error.stderr, {
      ...(error.input !== undefined ? { input: error.input } : {}),
      cause: new AggregateError([rollback], `rollback after the failed restore also failed: ${String(rollback)}`),
    });
  }
  throw error;
}

export function refs(changes: readonly RuleChange[]): RuleRef[] {
  return changes.flatMap((c) =>
    'rule' in c ? [{ family: c.family, table: c.table as TableName, chain: c.chain, rule: c.rule }] : [],
  );
}

function commandError(
  code: IptablesError['code'],
  cmd: string,
  args: readonly string[],
  r: { code: number; stderr: string },
  input?: string,
): CommandFailedError {
  return new CommandFailedError(code, cmd, args, r.code, r.stderr, input === undefined ? {} : { input });
}
