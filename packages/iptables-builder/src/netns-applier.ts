import { detectBackend, iptablesCommand, type IptablesBackend } from './backend.js';
import { refs, restoreArgs, rollbackFamily } from './applier.js';
import { DEFAULT_CHAIN_PREFIX, desiredFromFamily, diffTables, reconcileRestore, type RuleChange, type RuleDiff } from './diff.js';
import { CommandFailedError, IptablesError } from './errors.js';
import type { CommandExecutor, CommandResult } from './executor.js';
import { silentLogger, type Logger } from './logger.js';
import type { Family, RuleRef, RuleSet } from './model.js';
import { parseIptablesSave, type SavedTable } from './parse-iptables.js';
import { countRule, hasRoute, ipRouteArgs, ipRuleArgs, type PolicyRouting } from './routing.js';
import { runShellBatch, type BatchOutput, type BatchStep } from './shell-batch.js';

/** What a netns should hold; chosen from what was read (whether IPv6 is on there). */
export interface NetnsSpec {
  readonly ruleSet: RuleSet;
  readonly routing: PolicyRouting;
  /** Sysctls to hold in the netns, e.g. `{ 'net.ipv4.tcp_migrate_req': '1' }`; a key the kernel lacks is skipped. */
  readonly sysctls?: Readonly<Record<string, string>>;
}

/** What the netns is, as the spec function sees it. */
export interface NetnsFacts {
  /** Some interface has `disable_ipv6` = 0. */
  readonly ipv6: boolean;
}

export interface NetnsApplyResult {
  /** Anything ran besides the read. */
  readonly changed: boolean;
  readonly ipv6: boolean;
  readonly backend: 'legacy' | 'nft';
  /** Some family already held Weir chains or jumps before (so a change is a repair, not an install). */
  readonly hadRules: boolean;
  /** Rules put back in families that held Weir rules before (empty on a first install). */
  readonly repaired: readonly RuleRef[];
  readonly diff: RuleDiff;
  /** `ip` commands that ran for missing policy routing, e.g. `ip -4 rule add fwmark …`. */
  readonly routing: readonly string[];
  /** Sysctls that were set because they differed (absent keys are not listed). */
  readonly sysctls: readonly string[];
  /** Executor calls made (1 when in sync, 2 when something was applied; more only to roll back). */
  readonly roundTrips: number;
}

export interface NetnsApplierOptions {
  /** Runs `sh -c <script>` in the netns: `netnsExecutor(path)` (one nsenter per batch). */
  readonly executor: CommandExecutor;
  /** iptables backend; `auto` detects in the executor's netns (once). Native nftables: use RuleApplier. */
  readonly backend?: 'auto' | 'legacy' | 'nft';
  readonly chainPrefix?: string;
  readonly logger?: Logger;
}

const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];
const flag = (f: Family): string => (f === 'ipv4' ? '-4' : '-6');

/**
 * Applies a pod's rules, policy routing and sysctls in at most two executor round trips: one
 * shell script reads everything (IPv6 on?, `iptables-save` of each family needed, `ip rule` and
 * `ip route` of the routing table, the sysctls), the diff happens here, and — only when something
 * differs — one script applies it: one `iptables-restore --noflush` per family, one `ip -batch`
 * per family, builtin sysctl writes, stopping at the first failure. Same semantics as RuleApplier
 * + RoutingApplier (atomic per family with rollback, idempotent, drift reported), fewer processes.
 */
export class NetnsApplier {
  readonly #executor: CommandExecutor;
  readonly #requested: 'auto' | 'legacy' | 'nft';
  readonly #prefix: string;
  readonly #logger: Logger;
  #backend: Promise<'legacy' | 'nft'> | undefined;

  constructor(options: NetnsApplierOptions) {
    this.#executor = options.executor;
    this.#requested = options.backend ?? 'auto';
    if ((this.#requested as IptablesBackend) === 'nftables') {
      throw new IptablesError('ERR_IPTABLES_BACKEND_UNAVAILABLE', 'NetnsApplier drives iptables (legacy or nft); use RuleApplier for native nftables');
    }
    this.#prefix = options.chainPrefix ?? DEFAULT_CHAIN_PREFIX;
    this.#logger = options.logger ?? silentLogger;
  }

  backend(): Promise<'legacy' | 'nft'> {
    this.#backend ??= this.#requested === 'auto' ? detectBackend(this.#executor, this.#logger) : Promise.resolve(this.#requested);
    return this.#backend;
  }

  /** Reads, diffs and (when anything differs) applies `spec(facts)`. */
  async apply(spec: (facts: NetnsFacts) => NetnsSpec): Promise<NetnsApplyResult> {
    const backend = await this.backend();
    const specs = { on: spec({ ipv6: true }), off: spec({ ipv6: false }) };
    const sysctlKeys = [...new Set([...Object.keys(specs.on.sysctls ?? {}), ...Object.keys(specs.off.sysctls ?? {})])];
    const read = await runShellBatch(this.#executor, this.#readSteps(backend, specs.on, specs.off), { sysctls: sysctlKeys });
    let roundTrips = 1;
    const want = read.ipv6 ? specs.on : specs.off;
    const saved = new Map<Family, SavedTable[]>();
    const changes: RuleChange[] = [];
    const repaired: RuleRef[] = [];
    const restores: { family: Family; text: string }[] = [];
    let hadRules = false;
    for (const fam of want.ruleSet.families) {
      const before = parseIptablesSave(stepOutput(read, `save-${fam.family}`, iptablesCommand(backend, fam.family, 'save')), fam.family);
      saved.set(fam.family, before);
      const desired = desiredFromFamily(fam);
      const diff = diffTables(fam.family, desired, before, this.#prefix);
      const had = before.some((t) => t.chains.some((c) => c.name.startsWith(this.#prefix)));
      hadRules ||= had;
      if (diff.inSync) continue;
      changes.push(...diff.changes);
      if (had) repaired.push(...refs(diff.changes));
      restores.push({ family: fam.family, text: reconcileRestore(fam.family, desired, before, this.#prefix) });
    }
    const routeLines = new Map<Family, string[]>();
    for (const family of FAMILIES) {
      const rules = want.routing.rules.filter((r) => r.family === family);
      const routes = want.routing.routes.filter((r) => r.family === family);
      if (!rules.length && !routes.length) continue;
      const listing = routingOutput(read, family);
      const todo = [
        ...rules.filter((r) => countRule(r, listing) === 0).map((r) => ipRuleArgs(r, 'add')),
        ...routes.filter((r) => !hasRoute(r, listing)).map((r) => ipRouteArgs(r, 'replace')),
      ];
      if (todo.length) routeLines.set(family, todo.map((a) => a.slice(1).join(' ')));
    }
    const sysctls = new Map<string, string>();
    for (const [key, value] of Object.entries(want.sysctls ?? {})) {
      const now = read.sysctls.get(key);
      if (now !== undefined && now !== value) sysctls.set(key, value);
    }
    const routing = [...routeLines].flatMap(([family, lines]) => lines.map((l) => `ip ${flag(family)} ${l}`));
    const result = (changed: boolean): NetnsApplyResult => ({
      changed,
      ipv6: read.ipv6,
      backend,
      hadRules,
      repaired,
      diff: { inSync: changes.length === 0, changes },
      routing,
      sysctls: [...sysctls.keys()],
      roundTrips,
    });
    if (!restores.length && !routeLines.size && !sysctls.size) {
      this.#logger.debug({ backend, ipv6: read.ipv6 }, 'rules, routing and sysctls in sync, nothing to apply');
      return result(false);
    }
    const steps: BatchStep[] = [
      ...restores.map((r) => ({ id: `restore-${r.family}`, argv: [iptablesCommand(backend, r.family, 'restore'), ...restoreArgs(backend)], input: r.text })),
      ...[...routeLines].map(([family, lines]) => ({ id: `ip-${family}`, argv: ['ip', flag(family), '-batch', '-'], input: `${lines.join('\n')}\n` })),
    ];
    const out = await runShellBatch(this.#executor, steps, { writeSysctls: sysctls, stopOnFailure: true });
    roundTrips++;
    for (const r of restores) {
      const cmd = iptablesCommand(backend, r.family, 'restore');
      const got = out.results.get(`restore-${r.family}`);
      if (got?.code === 0) continue;
      const error = new CommandFailedError('ERR_IPTABLES_RESTORE_FAILED', cmd, restoreArgs(backend), got?.code ?? -1, got?.stderr ?? 'not run', { input: r.text });
      this.#logger.error({ family: r.family, backend, stderr: error.stderr.trim() }, 'rule restore failed, rolling back');
      roundTrips++;
      await rollbackFamily(this.#executor, backend, r.family, saved.get(r.family) ?? [], this.#prefix, error);
    }
    for (const [family, lines] of routeLines) {
      const got = out.results.get(`ip-${family}`);
      if (got?.code !== 0) {
        throw new CommandFailedError('ERR_IPTABLES_ROUTING_FAILED', 'ip', [flag(family), '-batch', '-'], got?.code ?? -1, got?.stderr ?? 'not run', { input: lines.join('\n') });
      }
    }
    for (const key of sysctls.keys()) {
      const got = out.results.get(`sysctl:${key}`);
      if (got?.code !== 0) {
        throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `setting sysctl ${key} failed (exit ${got?.code ?? 'not run'}): ${got?.stderr.trim() ?? ''}`);
      }
    }
    if (restores.length) {
      this.#logger.info({ families: restores.map((r) => r.family), backend, changes: changes.length, repaired: hadRules }, hadRules ? 'repaired drifted rules' : 'applied rules');
    }
    if (routing.length) this.#logger.info({ commands: routing }, 'applied policy routing');
    return result(true);
  }

  /**
   * Removes Weir's rules (every prefixed chain and jump into one) from the families `spec` names,
   * and the given policy routing (every copy), in at most two round trips.
   */
  async remove(spec: (facts: NetnsFacts) => { families: readonly Family[]; routing: PolicyRouting }): Promise<{ changed: boolean; ipv6: boolean }> {
    const backend = await this.backend();
    const on = spec({ ipv6: true });
    const off = spec({ ipv6: false });
    const asSpec = (s: typeof on): NetnsSpec => ({ ruleSet: { families: s.families.map((family) => ({ family, tables: [] })) }, routing: s.routing });
    const read = await runShellBatch(this.#executor, this.#readSteps(backend, asSpec(on), asSpec(off)));
    const want = read.ipv6 ? on : off;
    const steps: BatchStep[] = [];
    for (const family of want.families) {
      const saved = parseIptablesSave(stepOutput(read, `save-${family}`, iptablesCommand(backend, family, 'save')), family);
      const text = reconcileRestore(family, [], saved, this.#prefix);
      if (text) steps.push({ id: `restore-${family}`, argv: [iptablesCommand(backend, family, 'restore'), ...restoreArgs(backend)], input: text });
    }
    for (const family of FAMILIES) {
      const rules = want.routing.rules.filter((r) => r.family === family);
      const routes = want.routing.routes.filter((r) => r.family === family);
      if (!rules.length && !routes.length) continue;
      const listing = routingOutput(read, family);
      const lines = [
        ...rules.flatMap((r) => Array.from({ length: countRule(r, listing) }, () => ipRuleArgs(r, 'del'))),
        ...routes.filter((r) => hasRoute(r, listing)).map((r) => ipRouteArgs(r, 'del')),
      ].map((a) => a.slice(1).join(' '));
      if (lines.length) steps.push({ id: `ip-${family}`, argv: ['ip', flag(family), '-batch', '-'], input: `${lines.join('\n')}\n` });
    }
    if (!steps.length) return { changed: false, ipv6: read.ipv6 };
    const out = await runShellBatch(this.#executor, steps, { stopOnFailure: true });
    for (const step of steps) {
      const got = out.results.get(step.id);
      if (got?.code === 0) continue;
      const routingStep = step.id.startsWith('ip-');
      throw new CommandFailedError(
        routingStep ? 'ERR_IPTABLES_ROUTING_FAILED' : 'ERR_IPTABLES_RESTORE_FAILED',
        step.argv[0] as string,
        step.argv.slice(1),
        got?.code ?? -1,
        got?.stderr ?? 'not run',
        { input: step.input ?? '' },
      );
    }
    this.#logger.info({ backend, families: want.families }, 'removed rules');
    return { changed: true, ipv6: read.ipv6 };
  }

  /** The read script's steps: what either spec needs, each only when IPv6 is in the state it is for. */
  #readSteps(backend: 'legacy' | 'nft', on: NetnsSpec, off: NetnsSpec): BatchStep[] {
    const steps: BatchStep[] = [];
    const when = (need: (s: NetnsSpec) => boolean): boolean | undefined | null => {
      const a = need(on);
      const b = need(off);
      if (a && b) return undefined;
      if (a) return true;
      if (b) return false;
      return null;
    };
    for (const family of FAMILIES) {
      const saves = when((s) => s.ruleSet.families.some((f) => f.family === family));
      if (saves !== null) steps.push({ id: `save-${family}`, argv: [iptablesCommand(backend, family, 'save')], ...(saves === undefined ? {} : { ipv6: saves }) });
      const routes = when((s) => s.routing.rules.some((r) => r.family === family) || s.routing.routes.some((r) => r.family === family));
      if (routes === null) continue;
      // One `ip` for both listings: rule lines ("<pref>:\tfrom …") and route lines ("local …") never mix up.
      const tables = [...new Set([...on.routing.routes, ...off.routing.routes].filter((r) => r.family === family).map((r) => r.table))];
      const input = ['rule show', ...tables.map((t) => `route show table ${t}`)].join('\n');
      steps.push({ id: `routing-${family}`, argv: ['ip', flag(family), '-force', '-batch', '-'], input: `${input}\n`, ...(routes === undefined ? {} : { ipv6: routes }) });
    }
    return steps;
  }
}

function stepOutput(read: BatchOutput, id: string, cmd: string): string {
  const r = read.results.get(id);
  if (!r) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `${cmd} did not run in the batch`);
  if (r.code !== 0) throw new CommandFailedError(r.code === 127 ? 'ERR_IPTABLES_BACKEND_UNAVAILABLE' : 'ERR_IPTABLES_COMMAND_FAILED', cmd, [], r.code, r.stderr);
  return r.stdout;
}

/** `ip rule show` + `ip route show table …` output; a routing table with no routes yet is no error. */
function routingOutput(read: BatchOutput, family: Family): string {
  const r: CommandResult | undefined = read.results.get(`routing-${family}`);
  if (!r) throw new IptablesError('ERR_IPTABLES_ROUTING_FAILED', `ip ${flag(family)} rule/route show did not run in the batch`);
  const errors = r.stderr.split('\n').filter((l) => l.trim() && !/FIB table does not exist|^Command failed -:\d+/.test(l));
  if (r.code !== 0 && errors.length) {
    throw new CommandFailedError('ERR_IPTABLES_ROUTING_FAILED', 'ip', [flag(family), '-force', '-batch', '-'], r.code, r.stderr);
  }
  return r.stdout;
}
