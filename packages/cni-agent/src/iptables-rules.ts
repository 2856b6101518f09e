import {
  RuleApplier,
  RoutingApplier,
  hostProbeRules,
  inpodRouting,
  inpodRules,
  ipsetCreateArgs,
  netnsExecutor,
  type CommandExecutor,
  type IptablesBackend,
  type PolicyRouting,
  type RuleSet,
} from '@weir/iptables-builder';
import { CniAgentError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import { ShellPool } from './shell-executor.js';
import type { PodInfo } from './pod.js';
import type { NetnsHandle, PodRules, RepairReport } from './ports.js';

export interface IptablesPodRulesOptions {
  /** `tproxy` (the seed's rules, default) or `redirect` (Istio ≥ 1.24). */
  mode?: 'tproxy' | 'redirect';
  /** Capture DNS to ztunnel's 15053. Default off: Weir's ztunnel has no DNS proxy yet. */
  dnsCapture?: boolean;
  ipv6?: boolean;
  probeSnatIp?: string;
  probeSnatIpv6?: string;
  /** `auto` detects once in the host netns (legacy if it holds rules, else nft). */
  backend?: 'auto' | IptablesBackend;
  /** The node's netns for the probe ipset and SNAT rules; default this process's netns. */
  hostNetnsPath?: string;
  /** Long-lived shells running pod-netns commands (about the agent's capture concurrency). */
  shells?: number;
  logger?: Logger;
}

const SET_V4 = 'istio-inpod-probes-v4';
const SET_V6 = 'istio-inpod-probes-v6';

function run(exec: CommandExecutor, what: string) {
  return async (cmd: string, args: string[], input?: string): Promise<string> => {
    const r = await exec.run(cmd, args, input === undefined ? {} : { input });
    if (r.code !== 0) {
      throw new CniAgentError('ERR_AGENT_HOST', `${cmd} ${args.join(' ')} failed in ${what} (exit ${r.code}): ${r.stderr.trim()}`);
    }
    return r.stdout;
  };
}

/**
 * The real PodRules: in-pod rules and policy routing through @weir/iptables-builder, run inside
 * the pod netns (nsenter on the agent's own fd of it, so a vanished path cannot redirect us to
 * another netns), and the host probe ipset + SNAT rules in the node netns.
 */
export class IptablesPodRules implements PodRules {
  private readonly log: Logger;
  private readonly podRules: RuleSet;
  private readonly routing: PolicyRouting;
  private readonly host: CommandExecutor;
  private readonly hostRules: ReturnType<typeof hostProbeRules>;
  private readonly hostApplier: RuleApplier;
  private backend: IptablesBackend | undefined;
  private readonly podShells: ShellPool;
  private readonly hostShell: ShellPool;
  private batch: { lines: string[]; done: Promise<void> } | undefined;
  private ipsetChain: Promise<void> = Promise.resolve();

  constructor(private readonly opts: IptablesPodRulesOptions = {}) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'iptables' });
    const ipv6 = opts.ipv6 ?? false;
    this.podRules = inpodRules({
      mode: opts.mode ?? 'tproxy',
      dnsCapture: opts.dnsCapture ?? false,
      ipv6,
      ...(opts.probeSnatIp !== undefined ? { probeSnatIp: opts.probeSnatIp } : {}),
      ...(opts.probeSnatIpv6 !== undefined ? { probeSnatIpv6: opts.probeSnatIpv6 } : {}),
    });
    this.routing = inpodRouting({ ipv6 });
    this.podShells = new ShellPool(opts.shells ?? 8);
    this.hostShell = new ShellPool(1);
    this.host = opts.hostNetnsPath ? netnsExecutor(opts.hostNetnsPath, this.hostShell.executor) : this.hostShell.executor;
    this.hostRules = hostProbeRules({
      ipv6,
      ...(opts.probeSnatIp !== undefined ? { probeSnatIp: opts.probeSnatIp } : {}),
      ...(opts.probeSnatIpv6 !== undefined ? { probeSnatIpv6: opts.probeSnatIpv6 } : {}),
    });
    this.hostApplier = new RuleApplier({ executor: this.host, backend: opts.backend ?? 'auto', logger: this.log });
  }

  /** The rule set applied in every pod (for status and tests). */
  get inpodRuleSet(): RuleSet {
    return this.podRules;
  }

  async setupHost(): Promise<void> {
    this.backend = await this.hostApplier.backend();
    const ipset = run(this.host, 'the host netns');
    for (const spec of this.hostRules.ipsets) await ipset('ipset', ipsetCreateArgs(spec));
    try {
      await this.hostApplier.apply(this.hostRules.ruleSet);
    } catch (cause) {
      throw new CniAgentError('ERR_AGENT_HOST', `applying the host probe SNAT rules: ${(cause as Error).message}`, { cause });
    }
    this.log.info({ backend: this.backend }, 'host probe ipset and SNAT rules in place');
  }

  /** One pooled shell for all of an operation's commands, each entering the pod netns. */
  private inPod<T>(netns: NetnsHandle, fn: (exec: CommandExecutor) => Promise<T>): Promise<T> {
    // Our own fd, seen through /proc by nsenter: the netns we opened, whatever its path does now.
    return this.podShells.with((shell) => fn(netnsExecutor(`/proc/${process.pid}/fd/${netns.fd}`, shell)));
  }

  /** Ends the shells. */
  close(): void {
    this.podShells.close();
    this.hostShell.close();
  }

  apply(_pod: PodInfo, netns: NetnsHandle): Promise<RepairReport> {
    return this.inPod(netns, (exec) => this.applyWith(exec));
  }

  private async applyWith(exec: CommandExecutor): Promise<RepairReport> {
    const applier = new RuleApplier({ executor: exec, backend: this.backend ?? this.opts.backend ?? 'auto', logger: this.log });
    const rules = await applier.apply(this.podRules);
    const routing = await new RoutingApplier({ executor: exec, logger: this.log }).apply(this.routing);
    const hadRules = !rules.changed || rules.repaired.length > 0;
    const repaired = rules.repaired.map((r) => `${r.family} ${r.table} ${r.chain}: ${r.rule}`);
    if (rules.changed && rules.repaired.length === 0 && hadRules) repaired.push('rule order or chains');
    if (routing.changed && hadRules) repaired.push(`policy routing (fwmark 0x111/0xfff lookup table ${this.routing.routes[0]?.table})`);
    return { changed: rules.changed || routing.changed, repaired };
  }

  remove(_pod: PodInfo, netns: NetnsHandle): Promise<void> {
    return this.inPod(netns, async (exec) => {
      const applier = new RuleApplier({ executor: exec, backend: this.backend ?? this.opts.backend ?? 'auto', logger: this.log });
      await applier.cleanup(this.opts.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4']);
      await new RoutingApplier({ executor: exec, logger: this.log }).remove(this.routing);
    });
  }

  addHostProbe(pod: PodInfo, ips: string[]): Promise<void> {
    const lines = ips
      .filter((ip) => this.opts.ipv6 || !ip.includes(':'))
      .map((ip) => `add ${ip.includes(':') ? SET_V6 : SET_V4} ${ip} comment "${pod.uid}"`);
    if (lines.length === 0) return Promise.resolve();
    return this.ipsetBatch(lines);
  }

  /**
   * Coalesces ipset changes from concurrent captures into one `ipset -exist restore` (a burst of
   * pods would otherwise spawn one ipset per pod on the host). Entries are independent, so a
   * batch either applies whole or is retried per pod by the caller's backoff.
   */
  private ipsetBatch(lines: string[]): Promise<void> {
    if (!this.batch) {
      const batch: { lines: string[]; done: Promise<void> } = { lines: [], done: Promise.resolve() };
      batch.done = this.ipsetChain.then(async () => {
        this.batch = undefined;
        await run(this.host, 'the host netns')('ipset', ['-exist', 'restore'], `${batch.lines.join('\n')}\n`);
      });
      this.ipsetChain = batch.done.catch(() => undefined);
      this.batch = batch;
    }
    this.batch.lines.push(...lines);
    return this.batch.done;
  }

  /** Probe ipset entries as `{set, ip, uid}` (the comment is the pod UID). */
  private async probeEntries(): Promise<{ set: string; ip: string; uid: string }[]> {
    const ipset = run(this.host, 'the host netns');
    const out: { set: string; ip: string; uid: string }[] = [];
    for (const set of this.opts.ipv6 ? [SET_V4, SET_V6] : [SET_V4]) {
      let saved: string;
      try {
        saved = await ipset('ipset', ['save', set]);
      } catch {
        continue; // no such set: nothing of ours in it
      }
      for (const line of saved.split('\n')) {
        const m = /^add (\S+) (\S+) comment "([^"]*)"/.exec(line);
        if (m) out.push({ set: m[1] as string, ip: m[2] as string, uid: m[3] as string });
      }
    }
    return out;
  }

  async removeHostProbe(pod: PodInfo): Promise<void> {
    const dels = (await this.probeEntries()).filter((e) => e.uid === pod.uid).map((e) => `del ${e.set} ${e.ip}`);
    if (dels.length) await this.ipsetBatch(dels);
  }

  async syncHostProbes(keep: ReadonlySet<string>): Promise<string[]> {
    const stale = (await this.probeEntries()).filter((e) => !keep.has(e.uid));
    if (stale.length) await this.ipsetBatch(stale.map((e) => `del ${e.set} ${e.ip}`));
    return stale.map((e) => `${e.ip} (uid ${e.uid})`);
  }

  async teardownHost(): Promise<void> {
    await this.hostApplier.cleanup(this.opts.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4']);
    const ipset = run(this.host, 'the host netns');
    for (const spec of this.hostRules.ipsets) {
      await ipset('ipset', ['destroy', spec.name]).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'cannot destroy ipset'));
    }
  }
}
