import { detectBackend, iptablesCommand, type IptablesBackend } from './backend.js';
import { refs, restoreArgs, rollbackFamily } from './applier.js';
import { DEFAULT_CHAIN_PREFIX, desiredFromFamily, diffTables, reconcileRestore, type DesiredTable, type RuleChange, type RuleDiff } from './diff.js';
import { CommandFailedError, IptablesError } from './errors.js';
import type { CommandExecutor, CommandResult } from './executor.js';
import { silentLogger, type Logger } from './logger.js';
import type { Family, FamilyRules, RuleRef, RuleSet } from './model.js';
import { NftInstallReplay } from './nft-replay.js';
import { parseIptablesSave, type SavedTable } from './parse-iptables.js';
import { countRule, hasRoute, ipRouteArgs, ipRuleArgs, type PolicyRouting } from './routing.js';
import { applyRouting, countRuleIn, describeChange, hasRouteIn, missingRouting, readNftGeneration, readRouting, sendRouting, type NetlinkExchange, type RoutingChange, type RoutingState } from './rtnetlink.js';
import { BatchScript, runShellBatch, type BatchOutput, type BatchStep, type NetnsSysctls } from './shell-batch.js';

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
  /**
   * Present when the rules were found in sync and a later apply can tell cheaply whether they
   * still are (backend nft with `netlink`: the nftables generation read before, and the IPv6
   * state): pass it back as `fingerprint`.
   */
  readonly fingerprint?: string;
}

export interface NetnsApplyOptions {
  /**
   * The caller expects a netns holding nothing of Weir's (a pod's first capture): install without
   * reading first (chains created with `-N`, which fails if one exists). If the netns was not new
   * after all, what got in is taken out again and the usual read-diff-apply follows.
   */
  readonly likelyNew?: boolean;
  /**
   * The `fingerprint` of an earlier result for this netns: when it still holds (nothing in the
   * netns's nftables changed since, and IPv6 is as it was), the rules are known to be in sync and
   * are not read again (no `iptables-save`); policy routing and sysctls are checked as always.
   */
  readonly fingerprint?: string;
}

export interface NetnsApplierOptions {
  /** Runs `sh -c <script>` in the netns: `netnsExecutor(path)` (one nsenter per batch); with `sysctls`, runs each command directly there. */
  readonly executor: CommandExecutor;
  /** iptables backend; `auto` detects in the executor's netns (once). Native nftables: use RuleApplier. */
  readonly backend?: 'auto' | 'legacy' | 'nft';
  readonly chainPrefix?: string;
  readonly logger?: Logger;
  /**
   * rtnetlink in the same netns (e.g. `netlinkExchange` of @weir/netns): policy routing is read
   * and written in-process instead of by `ip` in the script (two processes fewer per pod). Only
   * `local <any> dev lo` routes, as Weir's.
   */
  readonly netlink?: NetlinkExchange;
  /** Called after each round trip (a shell script, or an rtnetlink exchange), e.g. for timings. */
  readonly onRoundTrip?: (trip: NetnsRoundTrip) => void;
  /**
   * The netns's sysctls, read and written in-process (e.g. `readSysctls`/`writeSysctls` of
   * @weir/netns). With it, `executor` must run each command directly inside the netns (e.g.
   * `spawnInNetns` of @weir/netns): no `sh -c` script and no nsenter, a batch is its commands
   * exec'd one by one (a new pod: just the two restores), with the same results and stops.
   */
  readonly sysctls?: NetnsSysctls;
  /**
   * With backend nft, `netlink` and `sysctls`: a netns holding nothing of Weir's gets its rules
   * by replaying, as one nfnetlink batch, what `iptables-nft-restore` stored for the first such
   * install in this process (read back and checked; see NftInstallReplay) instead of running the
   * two restores again. Same rules, same `iptables-save`; the commands run whenever it cannot.
   */
  readonly replay?: boolean;
}

/** One round trip of an apply or remove: what ran and how long it took. */
export interface NetnsRoundTrip {
  readonly kind: 'batch' | 'netlink';
  /** Batch: the steps that ran (`save-ipv4`, `fresh1-restore-ipv4`, `sysctl:…`); netlink: `read routing` or `write routing`. */
  readonly steps: readonly string[];
  readonly ms: number;
  readonly failed: boolean;
}

/** What a read saw: the script's output, and the policy routing when read over rtnetlink. */
type Read = BatchOutput & { readonly netlinkRouting?: RoutingState };

const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];

// A node agent applies the same few (cached) rule sets to every pod: render each family once.
const desiredCache = new WeakMap<FamilyRules, DesiredTable[]>();
const freshCache = new WeakMap<FamilyRules, Map<string, { text: string; created?: string; changes?: readonly RuleChange[]; prefixOnly?: boolean }>>();
function desired(fam: FamilyRules): DesiredTable[] {
  let d = desiredCache.get(fam);
  if (!d) desiredCache.set(fam, (d = desiredFromFamily(fam)));
  return d;
}
/** What installing `fam` on a netns with nothing of Weir's takes, per chain prefix (filled lazily). */
function fresh(fam: FamilyRules, prefix: string): { text: string; created?: string; changes?: readonly RuleChange[]; prefixOnly?: boolean } {
  let byPrefix = freshCache.get(fam);
  if (!byPrefix) freshCache.set(fam, (byPrefix = new Map()));
  let entry = byPrefix.get(prefix);
  if (entry === undefined) byPrefix.set(prefix, (entry = { text: reconcileRestore(fam.family, desired(fam), [], prefix) }));
  return entry;
}
/** `iptables-restore` text installing `fam` on a netns with nothing of Weir's. */
function freshRestore(fam: FamilyRules, prefix: string): string {
  return fresh(fam, prefix).text;
}
/** The same with each owned chain created by `-N` (see createChains). */
function freshCreate(fam: FamilyRules, prefix: string): string {
  const entry = fresh(fam, prefix);
  return (entry.created ??= createChains(entry.text));
}
/** The diff of installing `fam` where nothing of Weir's is. */
function freshChangesOf(fam: FamilyRules, prefix: string): readonly RuleChange[] {
  const entry = fresh(fam, prefix);
  return (entry.changes ??= diffTables(fam.family, desired(fam), [], prefix).changes);
}
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
  readonly #netlink: NetlinkExchange | undefined;
  readonly #onRoundTrip: ((trip: NetnsRoundTrip) => void) | undefined;
  readonly #sysctls: NetnsSysctls | undefined;
  readonly #replay: boolean;
  #backend: Promise<'legacy' | 'nft'> | undefined;

  constructor(options: NetnsApplierOptions) {
    this.#executor = options.executor;
    this.#requested = options.backend ?? 'auto';
    if ((this.#requested as IptablesBackend) === 'nftables') {
      throw new IptablesError('ERR_IPTABLES_BACKEND_UNAVAILABLE', 'NetnsApplier drives iptables (legacy or nft); use RuleApplier for native nftables');
    }
    this.#prefix = options.chainPrefix ?? DEFAULT_CHAIN_PREFIX;
    this.#logger = options.logger ?? silentLogger;
    this.#netlink = options.netlink;
    this.#onRoundTrip = options.onRoundTrip;
    this.#sysctls = options.sysctls;
    this.#replay = options.replay === true && options.netlink !== undefined && options.sysctls !== undefined;
  }

  /** The rtnetlink exchange, timed for onRoundTrip under `what`. */
  #nl(nl: NetlinkExchange, what: string): NetlinkExchange {
    return (req, n, protocol) => this.#timed('netlink', () => Promise.resolve(nl(req, n, protocol)), () => [what]);
  }

  async #timed<T>(kind: NetnsRoundTrip['kind'], run: () => Promise<T>, steps: (out: T | undefined) => readonly string[]): Promise<T> {
    if (!this.#onRoundTrip) return run();
    const t = performance.now();
    let out: T | undefined;
    try {
      return (out = await run());
    } finally {
      this.#onRoundTrip({ kind, steps: steps(out), ms: performance.now() - t, failed: out === undefined });
    }
  }

  /** Runs a batch through the executor (timed for onRoundTrip). */
  #batch(script: BatchScript, executor: CommandExecutor = this.#executor): Promise<BatchOutput> {
    const sysctls = this.#sysctls;
    return this.#timed('batch', () => (sysctls ? script.runDirect(executor, sysctls) : script.run(executor)), (out) => out?.ran ?? []);
  }

  /** The executor for a batch that may install `specs` fresh: replaying the restores when it can (see `replay`). */
  #installer(backend: 'legacy' | 'nft', specs: { on: NetnsSpec; off: NetnsSpec }): CommandExecutor {
    if (!this.#replay || backend !== 'nft' || !this.#netlink) return this.#executor;
    const fresh = new Map<string, Family>();
    for (const fam of [...specs.on.ruleSet.families, ...specs.off.ruleSet.families]) {
      fresh.set(freshCreate(fam, this.#prefix), fam.family);
      fresh.set(freshRestore(fam, this.#prefix), fam.family);
    }
    return new NftInstallReplay({ netlink: this.#netlink, logger: this.#logger }).executor(this.#executor, fresh);
  }

  #steps(steps: readonly BatchStep[], opts: { writeSysctls?: ReadonlyMap<string, string>; stopOnFailure?: boolean } = {}): Promise<BatchOutput> {
    const direct = this.#sysctls;
    return this.#timed('batch', () => runShellBatch(this.#executor, steps, direct ? { ...opts, direct } : opts), (out) => out?.ran ?? []);
  }

  backend(): Promise<'legacy' | 'nft'> {
    this.#backend ??= this.#requested === 'auto' ? detectBackend(this.#executor, this.#logger) : Promise.resolve(this.#requested);
    return this.#backend;
  }

  /**
   * Reads, diffs and (when anything differs) applies `spec(facts)`. A netns holding nothing of
   * Weir's (a new pod) is installed by the read script itself: one round trip in all.
   */
  async apply(spec: (facts: NetnsFacts) => NetnsSpec, opts: NetnsApplyOptions = {}): Promise<NetnsApplyResult> {
    const backend = await this.backend();
    const specs = { on: spec({ ipv6: true }), off: spec({ ipv6: false }) };
    // Read before anything else: a netns found in sync below was so at this generation or a later one.
    const generation = backend === 'nft' && this.#netlink && !opts.likelyNew ? await readNftGeneration(this.#nl(this.#netlink, 'read nft generation')) : undefined;
    if (generation !== undefined && opts.fingerprint?.startsWith(`${generation}/`)) {
      const unchanged = await this.#applyUnchanged(backend, specs, opts.fingerprint);
      if (unchanged) return unchanged;
    }
    const result = await this.#apply(backend, specs, opts);
    return generation !== undefined && !result.changed ? { ...result, fingerprint: `${generation}/${result.ipv6 ? 1 : 0}` } : result;
  }

  /**
   * The rules are as they were when `fingerprint` was taken (in sync): read only IPv6 and the
   * sysctls (shell builtins) and the routing (rtnetlink), and put back what of those drifted.
   * Undefined when IPv6 changed since (the wanted rules may differ): the caller reads everything.
   */
  async #applyUnchanged(backend: 'legacy' | 'nft', specs: { on: NetnsSpec; off: NetnsSpec }, fingerprint: string): Promise<NetnsApplyResult | undefined> {
    const sysctlKeys = [...new Set([...Object.keys(specs.on.sysctls ?? {}), ...Object.keys(specs.off.sysctls ?? {})])];
    const out = await this.#batch(new BatchScript(sysctlKeys));
    if (!fingerprint.endsWith(`/${out.ipv6 ? 1 : 0}`) || !this.#netlink) return undefined;
    const want = out.ipv6 ? specs.on : specs.off;
    const read: Read = { ...out, netlinkRouting: await readRouting(this.#nl(this.#netlink, 'read routing'), routingFamilies(want.routing)) };
    // Routing and sysctls are not nftables: putting them back leaves the fingerprint valid.
    return { ...(await this.#applyDiff(backend, want, read, 1, true)), fingerprint };
  }

  async #apply(backend: 'legacy' | 'nft', specs: { on: NetnsSpec; off: NetnsSpec }, opts: NetnsApplyOptions): Promise<NetnsApplyResult> {
    const optimistic = this.#canInstallFresh(specs.on) && this.#canInstallFresh(specs.off);
    const assume = optimistic && opts.likelyNew === true;
    const read = assume ? await this.#installNew(backend, specs) : await this.#read(backend, specs, optimistic);
    const want = read.ipv6 ? specs.on : specs.off;
    const fresh = read.ipv6 ? 'fresh1' : 'fresh0';
    if (!optimistic || ![...read.results.keys()].some((id) => id.startsWith(`${fresh}-`))) return this.#applyDiff(backend, want, read, 1);

    // The script found no Weir rules (or was told so) and installed `want` whole: check what it did.
    const state = assume ? this.#freshDiff(want) : this.#diff(backend, want, read);
    for (const fam of want.ruleSet.families) {
      // A step the script emitted but that reported nothing counts as failed: never report rules that may not be there.
      const got = read.results.get(`${fresh}-restore-${fam.family}`) ?? (freshRestore(fam, this.#prefix) ? { code: -1, stdout: '', stderr: 'the step reported no result' } : undefined);
      if (!got || got.code === 0) continue;
      if (assume) {
        // `-N` refused an existing chain (the netns was not new after all) or the restore failed:
        // take out exactly the tables it committed (their chains were new), then read and diff.
        const undone = await this.#undoNew(backend, fam, got.stderr);
        this.#logger.info({ family: fam.family, backend, stderr: got.stderr.trim(), undone }, 'netns not new after all, reading it');
        return this.#applyDiff(backend, want, await this.#read(backend, specs, false), 2 + (undone.length ? 1 : 0));
      }
      const cmd = iptablesCommand(backend, fam.family, 'restore');
      const text = freshRestore(fam, this.#prefix);
      const error = new CommandFailedError('ERR_IPTABLES_RESTORE_FAILED', cmd, restoreArgs(backend), got.code, got.stderr, { input: text });
      this.#logger.error({ family: fam.family, backend, stderr: got.stderr.trim() }, 'rule restore failed, rolling back');
      await rollbackFamily(this.#executor, backend, fam.family, state.saved.get(fam.family) ?? [], this.#prefix, error);
    }
    // A new pod's install is routine (the caller reports the capture): debug, unlike a repair.
    this.#logger.debug({ families: want.ruleSet.families.map((f) => f.family), backend, changes: state.changes.length, repaired: false }, 'applied rules');
    let routing: string[];
    let routingFailed: boolean;
    if (this.#netlink) {
      const changes = freshChanges(want.routing);
      const refused = await sendRouting(this.#nl(this.#netlink, 'write routing'), changes);
      routing = changes.filter((c) => !refused.some((r) => r.change === c)).map(describeChange);
      routingFailed = refused.length > 0;
      if (routingFailed) this.#logger.info({ refused: refused.map((r) => `${describeChange(r.change)}: errno ${r.errno}`) }, 'policy routing partly there already, reading it');
    } else {
      // The script stops at the first failing `ip`: nothing of that family or later ones went in.
      routingFailed = FAMILIES.some((f) => (read.results.get(`${fresh}-ip-${f}`)?.code ?? (freshRouting(want.routing, f).length ? -1 : 0)) !== 0);
      routing = routingFailed ? [] : FAMILIES.flatMap((f) => freshRouting(want.routing, f).map((l) => `ip ${flag(f)} ${l}`));
    }
    if (routingFailed) {
      // Policy routing was already (partly) there although no rule was: read it and add what is missing.
      const again = await this.#applyDiff(backend, want, await this.#read(backend, specs, false), 2);
      return {
        ...again,
        changed: true,
        hadRules: false,
        repaired: [],
        diff: { inSync: false, changes: [...state.changes, ...again.diff.changes] },
        routing: [...routing, ...again.routing],
      };
    }
    for (const key of Object.keys(want.sysctls ?? {})) {
      const got = read.results.get(`${fresh}-sysctl:${key}`);
      if (!got) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `setting sysctl ${key} reported no result`);
      if (got.code !== 0) throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `setting sysctl ${key} failed (exit ${got.code}): ${got.stderr.trim()}`);
    }
    if (routing.length) this.#logger.debug({ commands: routing }, 'applied policy routing');
    return {
      changed: true,
      ipv6: read.ipv6,
      backend,
      hadRules: false,
      repaired: [],
      diff: { inSync: false, changes: state.changes },
      routing,
      sysctls: Object.entries(want.sysctls ?? {}).filter(([k, v]) => read.sysctls.has(k) && read.sysctls.get(k) !== v).map(([k]) => k),
      roundTrips: 1,
    };
  }

  /**
   * The install of a netns assumed new, without reading it first: the restore creates every chain
   * with `-N`, which fails (before its table commits) if the chain exists.
   */
  #installNew(backend: 'legacy' | 'nft', specs: { on: NetnsSpec; off: NetnsSpec }): Promise<Read> {
    const sysctlKeys = [...new Set([...Object.keys(specs.on.sysctls ?? {}), ...Object.keys(specs.off.sysctls ?? {})])];
    const script = new BatchScript(sysctlKeys).when(
      'v6',
      (s) => this.#installSteps(s, backend, specs.on, 'fresh1', true),
      (s) => this.#installSteps(s, backend, specs.off, 'fresh0', true),
    );
    return this.#batch(script, this.#installer(backend, specs));
  }

  /**
   * After a failed `-N` install of `fam`: iptables commits table by table, so the tables before
   * the failing line are in, and every chain in them is ours (their `-N` succeeded). Removes
   * exactly those; returns their names.
   */
  async #undoNew(backend: 'legacy' | 'nft', fam: FamilyRules, stderr: string): Promise<string[]> {
    const line = Number(/line:? (\d+)/.exec(stderr)?.[1] ?? 0);
    const lines = freshCreate(fam, this.#prefix).split('\n');
    const committed: string[] = [];
    let table = '';
    lines.forEach((l, i) => {
      if (l.startsWith('*')) table = l.slice(1);
      else if (l === 'COMMIT' && i + 1 < line) committed.push(table);
    });
    if (!committed.length) return [];
    const undo: string[] = [];
    for (const t of desired(fam).filter((d) => committed.includes(d.name))) {
      undo.push(`*${t.name}`, ...t.hooks.map((h) => `-D ${h.chain} ${h.spec}`), ...[...t.owned.keys()].map((c) => `-F ${c}`), ...[...t.owned.keys()].map((c) => `-X ${c}`), 'COMMIT');
    }
    const text = `${undo.join('\n')}\n`;
    const cmd = iptablesCommand(backend, fam.family, 'restore');
    const out = await this.#steps([{ id: 'undo', argv: [cmd, ...restoreArgs(backend)], input: text }]);
    const r = out.results.get('undo');
    if (r?.code !== 0) throw new CommandFailedError('ERR_IPTABLES_RESTORE_FAILED', cmd, restoreArgs(backend), r?.code ?? -1, r?.stderr ?? 'not run', { input: text });
    return committed;
  }

  /** The diff of installing `want` where nothing of Weir's is. */
  #freshDiff(want: NetnsSpec): { saved: Map<Family, SavedTable[]>; changes: RuleChange[] } {
    return { saved: new Map(), changes: want.ruleSet.families.flatMap((fam) => freshChangesOf(fam, this.#prefix)) };
  }

  /** Whether "no `<prefix>` anywhere in iptables-save" means "nothing of this spec is there". */
  #canInstallFresh(spec: NetnsSpec): boolean {
    if (!/^[A-Za-z0-9_-]+$/.test(this.#prefix)) return false;
    return spec.ruleSet.families.every((fam) => {
      const entry = fresh(fam, this.#prefix);
      entry.prefixOnly ??= desired(fam).every((t) => [...t.owned.keys()].every((c) => c.startsWith(this.#prefix)) && t.hooks.every((h) => h.spec.includes(this.#prefix)));
      return entry.prefixOnly;
    });
  }

  /**
   * The read script: IPv6 on?, sysctls, `iptables-save` of each family either spec needs. With
   * `optimistic`, when no save shows a Weir chain or jump, it installs the spec for the IPv6 state
   * it found right away (restores, `ip -batch` adds, sysctls; stops at the first failure);
   * otherwise it lists the policy routing for the diff.
   */
  async #read(backend: 'legacy' | 'nft', specs: { on: NetnsSpec; off: NetnsSpec }, optimistic: boolean): Promise<Read> {
    const sysctlKeys = [...new Set([...Object.keys(specs.on.sysctls ?? {}), ...Object.keys(specs.off.sysctls ?? {})])];
    const script = new BatchScript(sysctlKeys);
    const steps = this.#readSteps(backend, specs.on, specs.off);
    for (const step of steps.filter((s) => s.id.startsWith('save-'))) script.step(step, optimistic ? { unless: this.#prefix } : {});
    const routing = (s: BatchScript): void => {
      for (const step of steps.filter((x) => x.id.startsWith('routing-'))) s.step(step);
    };
    if (optimistic) {
      script.when(
        'fresh',
        (s) => s.when('v6', (v) => this.#installSteps(v, backend, specs.on, 'fresh1'), (v) => this.#installSteps(v, backend, specs.off, 'fresh0')),
        routing,
      );
    } else routing(script);
    const out = await this.#batch(script, optimistic ? this.#installer(backend, specs) : this.#executor);
    if (!this.#netlink || [...out.results.keys()].some((id) => id.startsWith('fresh'))) return out;
    return { ...out, netlinkRouting: await readRouting(this.#nl(this.#netlink, 'read routing'), routingFamilies((out.ipv6 ? specs.on : specs.off).routing)) };
  }

  #installSteps(script: BatchScript, backend: 'legacy' | 'nft', spec: NetnsSpec, tag: string, create = false): void {
    for (const fam of spec.ruleSet.families) {
      const text = create ? freshCreate(fam, this.#prefix) : freshRestore(fam, this.#prefix);
      if (text) script.step({ id: `${tag}-restore-${fam.family}`, argv: [iptablesCommand(backend, fam.family, 'restore'), ...restoreArgs(backend)], input: text }, { stop: true });
    }
    for (const family of this.#netlink ? [] : FAMILIES) {
      const lines = freshRouting(spec.routing, family);
      if (lines.length) script.step({ id: `${tag}-ip-${family}`, argv: ['ip', flag(family), '-batch', '-'], input: `${lines.join('\n')}\n` }, { stop: true });
    }
    for (const [key, value] of Object.entries(spec.sysctls ?? {})) script.writeSysctl(key, value, { stop: true, tag });
  }

  #diff(backend: 'legacy' | 'nft', want: NetnsSpec, read: Read) {
    const saved = new Map<Family, SavedTable[]>();
    const changes: RuleChange[] = [];
    const repaired: RuleRef[] = [];
    const restores: { family: Family; text: string }[] = [];
    let hadRules = false;
    for (const fam of want.ruleSet.families) {
      const before = parseIptablesSave(stepOutput(read, `save-${fam.family}`, iptablesCommand(backend, fam.family, 'save')), fam.family);
      saved.set(fam.family, before);
      const want = desired(fam);
      const diff = diffTables(fam.family, want, before, this.#prefix);
      const had = before.some((t) => t.chains.some((c) => c.name.startsWith(this.#prefix)));
      hadRules ||= had;
      if (diff.inSync) continue;
      changes.push(...diff.changes);
      if (had) repaired.push(...refs(diff.changes));
      restores.push({ family: fam.family, text: reconcileRestore(fam.family, want, before, this.#prefix) });
    }
    return { saved, changes, repaired, restores, hadRules };
  }

  /** The general path: diff what the read script saw, then apply only the difference (one more round trip). */
  async #applyDiff(backend: 'legacy' | 'nft', want: NetnsSpec, read: Read, readTrips: number, rulesInSync = false): Promise<NetnsApplyResult> {
    let roundTrips = readTrips;
    const { saved, changes, repaired, restores, hadRules } = rulesInSync
      ? { saved: new Map<Family, SavedTable[]>(), changes: [], repaired: [], restores: [], hadRules: true }
      : this.#diff(backend, want, read);
    const routeLines = new Map<Family, string[]>();
    const netlinkChanges = read.netlinkRouting ? missingRouting(read.netlinkRouting, want.routing) : [];
    for (const family of read.netlinkRouting ? [] : FAMILIES) {
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
    const routing = [...[...routeLines].flatMap(([family, lines]) => lines.map((l) => `ip ${flag(family)} ${l}`)), ...netlinkChanges.map(describeChange)];
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
    if (!restores.length && !routeLines.size && !netlinkChanges.length && !sysctls.size) {
      this.#logger.debug({ backend, ipv6: read.ipv6 }, 'rules, routing and sysctls in sync, nothing to apply');
      return result(false);
    }
    const steps: BatchStep[] = [
      ...restores.map((r) => ({ id: `restore-${r.family}`, argv: [iptablesCommand(backend, r.family, 'restore'), ...restoreArgs(backend)], input: r.text })),
      ...[...routeLines].map(([family, lines]) => ({ id: `ip-${family}`, argv: ['ip', flag(family), '-batch', '-'], input: `${lines.join('\n')}\n` })),
    ];
    const out = steps.length || sysctls.size ? await this.#steps(steps, { writeSysctls: sysctls, stopOnFailure: true }) : undefined;
    if (out) roundTrips++;
    for (const r of restores) {
      const cmd = iptablesCommand(backend, r.family, 'restore');
      const got = out?.results.get(`restore-${r.family}`);
      if (got?.code === 0) continue;
      const error = new CommandFailedError('ERR_IPTABLES_RESTORE_FAILED', cmd, restoreArgs(backend), got?.code ?? -1, got?.stderr ?? 'not run', { input: r.text });
      this.#logger.error({ family: r.family, backend, stderr: error.stderr.trim() }, 'rule restore failed, rolling back');
      roundTrips++;
      await rollbackFamily(this.#executor, backend, r.family, saved.get(r.family) ?? [], this.#prefix, error);
    }
    for (const [family, lines] of routeLines) {
      const got = out?.results.get(`ip-${family}`);
      if (got?.code !== 0) {
        throw new CommandFailedError('ERR_IPTABLES_ROUTING_FAILED', 'ip', [flag(family), '-batch', '-'], got?.code ?? -1, got?.stderr ?? 'not run', { input: lines.join('\n') });
      }
    }
    for (const key of sysctls.keys()) {
      const got = out?.results.get(`sysctl:${key}`);
      if (got?.code !== 0) {
        throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `setting sysctl ${key} failed (exit ${got?.code ?? 'not run'}): ${got?.stderr.trim() ?? ''}`);
      }
    }
    // Over rtnetlink after the script: only once the rules are in (the script stops at a failure).
    if (this.#netlink && netlinkChanges.length) await applyRouting(this.#nl(this.#netlink, 'write routing'), netlinkChanges);
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
    const read = await this.#steps(this.#readSteps(backend, asSpec(on), asSpec(off)));
    const want = read.ipv6 ? on : off;
    const netlinkRouting = this.#netlink ? await readRouting(this.#nl(this.#netlink, 'read routing'), routingFamilies(want.routing)) : undefined;
    const netlinkDels: RoutingChange[] = netlinkRouting
      ? [
          ...want.routing.rules.flatMap((rule) => Array.from({ length: countRuleIn(netlinkRouting, rule) }, () => ({ op: 'del' as const, rule }))),
          ...want.routing.routes.filter((route) => hasRouteIn(netlinkRouting, route)).map((route) => ({ op: 'del' as const, route })),
        ]
      : [];
    const steps: BatchStep[] = [];
    for (const family of want.families) {
      const saved = parseIptablesSave(stepOutput(read, `save-${family}`, iptablesCommand(backend, family, 'save')), family);
      const text = reconcileRestore(family, [], saved, this.#prefix);
      if (text) steps.push({ id: `restore-${family}`, argv: [iptablesCommand(backend, family, 'restore'), ...restoreArgs(backend)], input: text });
    }
    for (const family of netlinkRouting ? [] : FAMILIES) {
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
    if (!steps.length && !netlinkDels.length) return { changed: false, ipv6: read.ipv6 };
    const out = steps.length ? await this.#steps(steps, { stopOnFailure: true }) : undefined;
    for (const step of steps) {
      const got = out?.results.get(step.id);
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
    if (this.#netlink) await applyRouting(this.#nl(this.#netlink, 'write routing'), netlinkDels);
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
      if (routes === null || this.#netlink) continue;
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

/** The families `routing` has rules or routes of. */
function routingFamilies(routing: PolicyRouting): Family[] {
  return FAMILIES.filter((f) => routing.rules.some((r) => r.family === f) || routing.routes.some((r) => r.family === f));
}

/** Installing `routing` where none of it is, as rtnetlink changes. */
function freshChanges(routing: PolicyRouting): RoutingChange[] {
  return FAMILIES.flatMap((f) => [
    ...routing.rules.filter((r) => r.family === f).map((rule) => ({ op: 'add' as const, rule })),
    ...routing.routes.filter((r) => r.family === f).map((route) => ({ op: 'replace' as const, route })),
  ]);
}

/** `ip -batch` lines installing a family's policy routing on a netns that had none of it. */
function freshRouting(routing: PolicyRouting, family: Family): string[] {
  return [
    ...routing.rules.filter((r) => r.family === family).map((r) => ipRuleArgs(r, 'add')),
    ...routing.routes.filter((r) => r.family === family).map((r) => ipRouteArgs(r, 'replace')),
  ].map((a) => a.slice(1).join(' '));
}

/** Fresh-install restore text with each owned chain created by `-N` (fails if it exists) instead of declared (which flushes). */
function createChains(text: string): string {
  return text.replace(/^:(\S+) - \[0:0\]$/gm, '-N $1');
}
