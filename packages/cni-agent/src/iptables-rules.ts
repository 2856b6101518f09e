import {
  NetnsApplier,
  RuleApplier,
  RoutingApplier,
  ISTIO_DEFAULTS,
  hostProbeRules,
  inpodRouting,
  ipsetAdd,
  ipsetCreateArgs,
  ipsetDel,
  ipsetList,
  netnsExecutor,
  type CommandExecutor,
  type IptablesBackend,
  type IpsetEntry,
  type IpsetNotFoundError,
  type NetlinkExchange,
  type NetnsRoundTrip,
  type NetnsSysctls,
  type NetnsSpec,
  type PolicyRouting,
  type RuleSet,
} from '@weir/iptables-builder';
import { NETLINK_ROUTE, Netns, currentNetns, netlinkExchange, openNetns, readSysctls, spawnInNetns, writeSysctls } from '@weir/netns';
import { inpodCapture, podHasIpv6, type CaptureConfig } from './capture-rules.js';
import { CniAgentError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import { ShellPool } from './shell-executor.js';
import type { PodInfo } from './pod.js';
import type { NetnsHandle, PodRules, RepairReport } from './ports.js';

export interface IptablesPodRulesOptions {
  /** `tproxy` (the seed's rules, default) or `redirect` (Istio ≥ 1.24). */
  mode?: 'tproxy' | 'redirect';
  /**
   * Capture DNS (UDP/TCP 53) to ztunnel's DNS proxy on 15053. Default on, as Istio; a pod opts out
   * with the annotation `ambient.istio.io/dns-capture: "false"`.
   */
  dnsCapture?: boolean;
  /**
   * IPv6 capture. `auto` (default): follow the pod — when its netns has IPv6 on (an interface's
   * `net.ipv6.conf.<if>.disable_ipv6` is 0, e.g. the fe80:: on eth0; `all` and `default` do not count) the IPv6 half of the rules and
   * routing goes in too. `true`: always (also the host's IPv6 probe ipset and SNAT). `false`: never
   * capture IPv6, but a pod with IPv6 on gets the IPv6 guard (all TCP but loopback dropped), so
   * IPv6 can never carry traffic around ztunnel.
   */
  ipv6?: boolean | 'auto';
  probeSnatIp?: string;
  probeSnatIpv6?: string;
  /**
   * How commands reach the node netns (the probe ipset and SNAT rules); default one long-lived
   * shell entering `hostNetnsPath` (or this process's netns).
   */
  hostExecutor?: CommandExecutor;
  /** `auto` detects once in the host netns (legacy if it holds rules, else nft). */
  backend?: 'auto' | IptablesBackend;
  /** The node's netns for the probe ipset and SNAT rules; default this process's netns. */
  hostNetnsPath?: string;
  /**
   * Long-lived shells running pod-netns commands (about the agent's capture concurrency); only
   * for the native nftables backend, the iptables backends exec their commands directly in the pod netns.
   */
  shells?: number;
  logger?: Logger;
}

const SET_V4 = 'istio-inpod-probes-v4';

/** A probe ipset entry as the agent reads it: the comment is the pod UID. */
interface ProbeEntry {
  readonly set: string;
  readonly ip: string;
  readonly uid: string;
}

/** A removal: which entries it takes (chosen when its batch reads the sets), and those it took. */
interface ProbeDrop {
  readonly match: (e: ProbeEntry) => boolean;
  readonly dropped: ProbeEntry[];
}

/** Probe-ipset changes applied together: the drops first (one read of the sets), then the adds. */
interface ProbeBatch {
  readonly adds: IpsetEntry[];
  readonly drops: ProbeDrop[];
  done: Promise<void>;
}
/** Pod annotation turning DNS capture off for that pod (istio-cni's name). */
export const DNS_CAPTURE_ANNOTATION = 'ambient.istio.io/dns-capture';
/**
 * Lets the kernel hand connections still queued on a closing SO_REUSEPORT listener to its sibling
 * (`net.ipv4.tcp_migrate_req`), so a ztunnel upgrade or restart beside the old one resets none of
 * the pod's new connections. Kernels without it (< 5.14) are left as they are.
 */
async function enableListenerMigration(exec: CommandExecutor): Promise<void> {
  const r = await exec.run('sh', ['-c', 'f=/proc/sys/net/ipv4/tcp_migrate_req; [ ! -e "$f" ] || echo 1 > "$f"']);
  if (r.code !== 0) throw new CniAgentError('ERR_AGENT_RULES', `setting net.ipv4.tcp_migrate_req in the pod netns failed (exit ${r.code}): ${r.stderr.trim()}`);
}
const SET_V6 = 'istio-inpod-probes-v6';
/** See enableListenerMigration; NetnsApplier skips a key the kernel lacks, as that does. */
const LISTENER_MIGRATION = { 'net.ipv4.tcp_migrate_req': '1' } as const;

/**
 * Commands exec'd directly inside the pod netns, on the agent's own fd of it (`spawnInNetns`: no
 * nsenter, no shell, no fork of the agent). A program that cannot be started is exit 127, as a
 * shell reports it; so is a netns fd that no longer names the pod's netns (nothing runs).
 */
function directExecutor(netns: Netns): CommandExecutor {
  return {
    async run(cmd, args, opts) {
      try {
        const r = await spawnInNetns(netns, cmd, args, opts?.input === undefined ? {} : { input: opts.input });
        return { stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8') + (r.signal ? `${cmd}: killed by ${r.signal}\n` : ''), code: r.code ?? 128 };
      } catch (err) {
        return { stdout: '', stderr: `${cmd}: ${(err as Error).message}`, code: 127 };
      }
    },
  };
}

/** What NetnsApplier reads to tell whether IPv6 is on in a netns: on when any of these is 0. */
const DISABLE_IPV6_ANY = 'net.ipv6.conf.*.disable_ipv6';
const DISABLE_IPV6_LO = 'net.ipv6.conf.lo.disable_ipv6';
/** Not an interface's state: `all` is only what was last written to every interface, `default` the template of new ones. */
const DISABLE_IPV6_NOT_A_LINK = ['net.ipv6.conf.all.disable_ipv6', 'net.ipv6.conf.default.disable_ipv6'];

/**
 * The pod netns's sysctls, read and written in-process. The IPv6 glob is answered with the
 * interfaces' own values only: with `all` at 0 and IPv6 off on every interface the pod has no IPv6
 * (and the IPv6 capture route on lo cannot go in), so `all` and `default` must not count. `lo` at 0
 * answers it alone (one file instead of listing the directory and reading every interface's; a
 * /proc/sys lookup costs more the more netns a node has): the pod has IPv6, on the interface its
 * IPv6 capture needs.
 */
export function netnsSysctls(netns: Netns): NetnsSysctls {
  return {
    read: (keys) => {
      const i = keys.indexOf(DISABLE_IPV6_ANY);
      if (i < 0) return readSysctls(netns, keys);
      const quick = readSysctls(netns, keys.map((k, j) => (j === i ? DISABLE_IPV6_LO : k)));
      if (quick.get(DISABLE_IPV6_LO) === '0') return quick;
      const full = readSysctls(netns, keys);
      for (const key of DISABLE_IPV6_NOT_A_LINK) if (!keys.includes(key)) full.delete(key);
      return full;
    },
    write: (key, value) => !writeSysctls(netns, { [key]: value }).includes(key),
  };
}

/** How an operation reaches the pod netns. */
interface PodAccess {
  readonly exec: CommandExecutor;
  readonly netlink: NetlinkExchange | undefined;
  /** Present when `exec` runs commands directly in the netns (no shell): NetnsApplier's direct mode. */
  readonly sysctls: NetnsSysctls | undefined;
}

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
 * the pod netns (on the agent's own fd of it, so a vanished path cannot redirect us to another
 * netns: commands spawned directly in it, or nsenter'd through /proc for native nftables), and
 * the host probe ipset + SNAT rules in the node netns.
 */
export class IptablesPodRules implements PodRules {
  private readonly log: Logger;
  /** Rule sets and routing per (DNS capture, pod has IPv6), built on first use. */
  private readonly sets = new Map<string, { rules: RuleSet; routing: PolicyRouting }>();
  private readonly ipv6Mode: boolean | 'auto';
  private readonly host: CommandExecutor;
  private readonly hostRules: ReturnType<typeof hostProbeRules>;
  private readonly hostApplier: RuleApplier;
  private backend: IptablesBackend | undefined;
  private readonly podShells: ShellPool;
  private readonly hostShell: ShellPool;
  /** Pending probe-ipset changes of concurrent captures and removals, applied together. */
  private batch: ProbeBatch | undefined;
  /** The node netns, for probe-ipset changes over netlink (no `ipset` exec per pod); set up with the host. */
  private hostNetns: Netns | undefined;
  /**
   * Per pod netns, NetnsApplier's fingerprint of rules last found in sync: while nothing in the
   * netns's nftables changed since, a drift check does not read the rules again (no iptables-save).
   * Keyed by the controller's handle, so it goes when the pod's netns is dropped.
   */
  private readonly fingerprints = new WeakMap<NetnsHandle, string>();
  private ipsetChain: Promise<void> = Promise.resolve();

  constructor(private readonly opts: IptablesPodRulesOptions = {}) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'iptables' });
    this.ipv6Mode = opts.ipv6 ?? 'auto';
    const ipv6 = this.ipv6Mode === true;
    this.podShells = new ShellPool(opts.shells ?? 8);
    this.hostShell = new ShellPool(1);
    this.host = opts.hostExecutor ?? (opts.hostNetnsPath ? netnsExecutor(opts.hostNetnsPath, this.hostShell.executor) : this.hostShell.executor);
    this.hostRules = hostProbeRules({
      ipv6,
      ...(opts.probeSnatIp !== undefined ? { probeSnatIp: opts.probeSnatIp } : {}),
      ...(opts.probeSnatIpv6 !== undefined ? { probeSnatIpv6: opts.probeSnatIpv6 } : {}),
    });
    this.hostApplier = new RuleApplier({ executor: this.host, backend: opts.backend ?? 'auto', logger: this.log });
  }

  /**
   * What goes in a pod: IPv4 capture, plus IPv6 capture (`auto` with IPv6 on, or `true`) or the
   * IPv6 guard (`false` with IPv6 on); DNS capture unless off for the agent or for this pod.
   */
  ruleSetFor(opts: { dnsCapture: boolean; podHasIpv6: boolean }): { rules: RuleSet; routing: PolicyRouting } {
    const v6 = this.ipv6Mode === true || opts.podHasIpv6;
    const key = `${opts.dnsCapture}/${v6}`;
    let set = this.sets.get(key);
    if (!set) {
      set = inpodCapture(this.captureConfig(), { dnsCapture: opts.dnsCapture, podHasIpv6: v6 });
      this.sets.set(key, set);
    }
    return set;
  }

  /** The options this agent captures with, defaults resolved. */
  captureConfig(): CaptureConfig {
    const d = ISTIO_DEFAULTS;
    return {
      mode: this.opts.mode ?? 'tproxy',
      dnsCapture: this.opts.dnsCapture ?? true,
      ipv6: this.ipv6Mode,
      probeSnatIp: this.opts.probeSnatIp ?? d.probeSnatIp,
      probeSnatIpv6: this.opts.probeSnatIpv6 ?? d.probeSnatIpv6,
      backend: this.iptablesBackend,
    };
  }

  /** The rule set of a pod without IPv6 and default DNS capture (for status and tests). */
  get inpodRuleSet(): RuleSet {
    return this.ruleSetFor({ dnsCapture: this.opts.dnsCapture ?? true, podHasIpv6: false }).rules;
  }

  /** DNS capture for a pod: the agent's setting, unless the pod's annotation turns it off (as istio-cni). */
  dnsCaptureFor(pod: PodInfo): boolean {
    const v = pod.annotations?.[DNS_CAPTURE_ANNOTATION];
    if (v !== undefined) return v.trim().toLowerCase() !== 'false' && (this.opts.dnsCapture ?? true);
    return this.opts.dnsCapture ?? true;
  }

  private async forPod(pod: PodInfo, exec: CommandExecutor): Promise<{ rules: RuleSet; routing: PolicyRouting }> {
    const has6 = this.ipv6Mode === true || (await podHasIpv6(exec));
    return this.ruleSetFor({ dnsCapture: this.dnsCaptureFor(pod), podHasIpv6: has6 });
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
    this.hostNetns ??= this.opts.hostNetnsPath ? openNetns(this.opts.hostNetnsPath) : currentNetns();
    // Only native nftables runs its pod commands through the shells.
    if (this.backend === 'nftables') this.podShells.warm();
  }

  /**
   * How an operation reaches the pod netns: for the iptables backends, each command exec'd
   * directly in it and its sysctls in-process; for native nftables, one pooled shell for all of
   * the operation's commands, each entering the netns. Policy routing over rtnetlink in the pod
   * netns either way (in-process: no `ip` exec).
   */
  private inPod<T>(netns: NetnsHandle, fn: (pod: PodAccess) => Promise<T>): Promise<T> {
    if (netns instanceof Netns) {
      const netlink: NetlinkExchange = (req, n, protocol = NETLINK_ROUTE) => netlinkExchange(netns, protocol, req, n);
      if (this.iptablesBackend !== 'nftables') return fn({ exec: directExecutor(netns), netlink, sysctls: netnsSysctls(netns) });
      // Our own fd, seen through /proc by nsenter: the netns we opened, whatever its path does now.
      return this.podShells.with((shell) => fn({ exec: netnsExecutor(`/proc/${process.pid}/fd/${netns.fd}`, shell), netlink, sysctls: undefined }));
    }
    return this.podShells.with((shell) => fn({ exec: netnsExecutor(`/proc/${process.pid}/fd/${netns.fd}`, shell), netlink: undefined, sysctls: undefined }));
  }

  /** Ends the shells. */
  close(): void {
    this.hostNetns?.close();
    this.hostNetns = undefined;
    this.podShells.close();
    this.hostShell.close();
  }

  apply(pod: PodInfo, netns: NetnsHandle, opts: { likelyNew?: boolean } = {}): Promise<RepairReport> {
    return this.inPod(netns, (access) => this.applyWith(pod, netns, access, opts.likelyNew ?? false));
  }

  private async applyWith(pod: PodInfo, netns: NetnsHandle, access: PodAccess, likelyNew: boolean): Promise<RepairReport> {
    const inner = access.exec;
    // Per-round-trip timings of this capture, for the debug line below (where enrollment time goes).
    const steps: string[] = [];
    const started = performance.now();
    // NetnsApplier names its round trips (a script by the steps it ran); other commands by their argv.
    const onRoundTrip = (t: NetnsRoundTrip): void => {
      steps.push(`${t.kind} (${t.steps.join(', ') || 'reads'})${t.failed ? ' failed' : ''}: ${t.ms.toFixed(1)} ms`);
    };
    const exec: CommandExecutor = {
      run: async (cmd, args, o) => {
        const t = performance.now();
        try {
          return await inner.run(cmd, args, o);
        } finally {
          steps.push(`${`${cmd} ${args.slice(0, 3).join(' ')}`.trim()}: ${(performance.now() - t).toFixed(1)} ms`);
        }
      },
    };
    try {
      return await this.applyTimed(pod, netns, { exec, inner, netlink: access.netlink, sysctls: access.sysctls, onRoundTrip }, likelyNew);
    } finally {
      this.log.debug({ uid: pod.uid, pod: `${pod.namespace}/${pod.name}`, totalMs: Number((performance.now() - started).toFixed(1)), roundTrips: steps.length, steps }, 'in-pod apply timings');
    }
  }

  private get iptablesBackend(): IptablesBackend | 'auto' {
    return this.backend ?? this.opts.backend ?? 'auto';
  }

  /** The capture's wanted state for what the pod's netns is (IPv6 on or off). */
  private specFor(pod: PodInfo): (facts: { ipv6: boolean }) => NetnsSpec {
    const dnsCapture = this.dnsCaptureFor(pod);
    return (facts) => {
      const set = this.ruleSetFor({ dnsCapture, podHasIpv6: facts.ipv6 });
      return { ruleSet: set.rules, routing: set.routing, sysctls: LISTENER_MIGRATION };
    };
  }

  private async applyTimed(
    pod: PodInfo,
    netns: NetnsHandle,
    via: { exec: CommandExecutor; inner: CommandExecutor; netlink: NetlinkExchange | undefined; sysctls: NetnsSysctls | undefined; onRoundTrip: (t: NetnsRoundTrip) => void },
    likelyNew: boolean,
  ): Promise<RepairReport> {
    const backend = this.iptablesBackend;
    const exec = via.exec;
    if (backend !== 'nftables') {
      // One script for a new pod (read and install, or install outright when likely new) or a pod
      // in sync, two when a pod holding rules has drifted; policy routing over rtnetlink.
      const r = await new NetnsApplier({
        executor: via.inner,
        backend,
        logger: this.log,
        onRoundTrip: via.onRoundTrip,
        ...(via.netlink ? { netlink: via.netlink } : {}),
        ...(via.sysctls ? { sysctls: via.sysctls } : {}),
        // A new pod's rules as one nfnetlink batch, copied from the first pod's restore (iptables-nft only).
        replay: true,
      }).apply(this.specFor(pod), { likelyNew, fingerprint: this.fingerprints.get(netns) });
      if (r.fingerprint !== undefined) this.fingerprints.set(netns, r.fingerprint);
      else this.fingerprints.delete(netns);
      const repaired = r.repaired.map((x) => `${x.family} ${x.table} ${x.chain}: ${x.rule}`);
      if (r.hadRules) {
        if (!r.diff.inSync && r.repaired.length === 0) repaired.push('rule order or chains');
        if (r.routing.length) repaired.push(`policy routing (${r.routing.join('; ')})`);
        for (const key of r.sysctls) repaired.push(`sysctl ${key}`);
      }
      return { changed: r.changed, repaired };
    }
    const want = await this.forPod(pod, exec);
    await enableListenerMigration(exec);
    const applier = new RuleApplier({ executor: exec, backend: this.backend ?? this.opts.backend ?? 'auto', logger: this.log });
    const rules = await applier.apply(want.rules);
    const routing = await new RoutingApplier({ executor: exec, logger: this.log }).apply(want.routing);
    const hadRules = !rules.changed || rules.repaired.length > 0;
    const repaired = rules.repaired.map((r) => `${r.family} ${r.table} ${r.chain}: ${r.rule}`);
    if (rules.changed && rules.repaired.length === 0 && hadRules) repaired.push('rule order or chains');
    if (routing.changed && hadRules) repaired.push(`policy routing (fwmark 0x111/0xfff lookup table ${want.routing.routes[0]?.table})`);
    return { changed: rules.changed || routing.changed, repaired };
  }

  remove(_pod: PodInfo, netns: NetnsHandle): Promise<void> {
    this.fingerprints.delete(netns);
    return this.inPod(netns, async ({ exec, netlink, sysctls }) => {
      const backend = this.iptablesBackend;
      if (backend !== 'nftables') {
        // A pod with IPv6 on may hold IPv6 capture or guard rules (whatever the mode was then): remove both families.
        await new NetnsApplier({ executor: exec, backend, logger: this.log, ...(netlink ? { netlink } : {}), ...(sysctls ? { sysctls } : {}) }).remove((facts) => {
          const v6 = this.ipv6Mode === true || facts.ipv6;
          return { families: v6 ? ['ipv4', 'ipv6'] : ['ipv4'], routing: inpodRouting({ ipv6: v6 }) };
        });
        return;
      }
      // A pod with IPv6 on may hold IPv6 capture or guard rules (whatever the mode was then): remove both families.
      const v6 = this.ipv6Mode === true || (await podHasIpv6(exec));
      const applier = new RuleApplier({ executor: exec, backend: this.backend ?? this.opts.backend ?? 'auto', logger: this.log });
      await applier.cleanup(v6 ? ['ipv4', 'ipv6'] : ['ipv4']);
      await new RoutingApplier({ executor: exec, logger: this.log }).remove(inpodRouting({ ipv6: v6 }));
    });
  }

  addHostProbe(pod: PodInfo, ips: string[]): Promise<void> {
    const adds = ips.filter((ip) => this.ipv6Mode === true || !ip.includes(':')).map((ip) => ({ set: ip.includes(':') ? SET_V6 : SET_V4, ip, comment: pod.uid }));
    if (adds.length === 0) return Promise.resolve();
    return this.probeBatch({ adds }).done;
  }

  async removeHostProbe(pod: PodInfo): Promise<void> {
    await this.probeBatch({ drop: { match: (e) => e.uid === pod.uid, dropped: [] } }).done;
  }

  async syncHostProbes(keep: ReadonlySet<string>): Promise<string[]> {
    const drop: ProbeDrop = { match: (e) => !keep.has(e.uid), dropped: [] };
    await this.probeBatch({ drop }).done;
    return drop.dropped.map((e) => `${e.ip} (uid ${e.uid})`);
  }

  /**
   * Joins a change to the open batch of probe-ipset changes (or opens one): concurrent captures and
   * removals (a burst, a mass delete) cost one read of the sets and one write for all, not one
   * each. A batch runs after the previous one, reads the sets once, deletes what its drops match,
   * then adds its adds, all over netlink in-process once the host is set up (until then, or
   * after close: `ipset save` and one `ipset -exist restore`). Drops run before adds, so a drop that would
   * match one of the open batch's adds (that pod's own entry, added earlier) opens the next batch
   * instead: every change keeps its order against those it could affect. Entries are independent,
   * so a batch either applies whole or is retried per pod by the caller's backoff.
   */
  private probeBatch(change: { adds?: IpsetEntry[]; drop?: ProbeDrop }): ProbeBatch {
    const d = change.drop;
    const open = this.batch;
    const conflicts = d && open?.adds.some((a) => d.match({ set: a.set, ip: a.ip, uid: a.comment ?? '' }));
    let batch = open;
    if (!batch || conflicts) {
      const next: ProbeBatch = { adds: [], drops: [], done: Promise.resolve() };
      next.done = this.ipsetChain.then(() => {
        if (this.batch === next) this.batch = undefined;
        return this.runProbeBatch(next);
      });
      this.ipsetChain = next.done.catch(() => undefined);
      this.batch = batch = next;
    }
    if (change.adds) batch.adds.push(...change.adds);
    if (d) batch.drops.push(d);
    return batch;
  }

  private async runProbeBatch(batch: ProbeBatch): Promise<void> {
    const started = performance.now();
    const host = this.hostNetns;
    const netlink: NetlinkExchange | undefined = host && !host.closed ? (req, n, protocol = NETLINK_ROUTE) => netlinkExchange(host, protocol, req, n) : undefined;
    const dels: ProbeEntry[] = [];
    if (batch.drops.length) {
      const seen = new Set<string>();
      for (const e of await this.probeEntries(netlink)) {
        let matched = false;
        for (const d of batch.drops) {
          if (!d.match(e)) continue;
          d.dropped.push(e);
          matched = true;
        }
        if (matched && !seen.has(`${e.set} ${e.ip}`)) {
          seen.add(`${e.set} ${e.ip}`);
          dels.push(e);
        }
      }
    }
    if (netlink) {
      if (dels.length) await ipsetDel(netlink, dels);
      if (batch.adds.length) await ipsetAdd(netlink, batch.adds);
    } else if (dels.length || batch.adds.length) {
      const lines = [...dels.map((e) => `del ${e.set} ${e.ip}`), ...batch.adds.map((e) => `add ${e.set} ${e.ip} comment "${e.comment}"`)];
      await run(this.host, 'the host netns')('ipset', ['-exist', 'restore'], `${lines.join('\n')}\n`);
    }
    this.log.debug(
      { adds: batch.adds.length, removals: batch.drops.length, deleted: dels.length, via: netlink ? 'netlink' : 'ipset', ms: Number((performance.now() - started).toFixed(1)) },
      'probe ipset updated',
    );
  }

  /** Probe ipset entries as `{set, ip, uid}` (the comment is the pod UID); over netlink when given. */
  private async probeEntries(netlink: NetlinkExchange | undefined): Promise<ProbeEntry[]> {
    const out: ProbeEntry[] = [];
    for (const set of this.ipv6Mode === true ? [SET_V4, SET_V6] : [SET_V4]) {
      if (netlink) {
        let entries: IpsetEntry[];
        try {
          entries = await ipsetList(netlink, set);
        } catch (err) {
          if ((err as IpsetNotFoundError).code === 'ERR_IPTABLES_IPSET_NOT_FOUND') continue; // no such set: nothing of ours in it
          throw new CniAgentError('ERR_AGENT_HOST', `listing the probe ipset ${set} in the host netns: ${(err as Error).message}`, { cause: err });
        }
        for (const e of entries) if (e.comment !== undefined) out.push({ set, ip: e.ip, uid: e.comment });
        continue;
      }
      let saved: string;
      try {
        saved = await run(this.host, 'the host netns')('ipset', ['save', set]);
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

  async teardownHost(): Promise<void> {
    await this.hostApplier.cleanup(this.ipv6Mode === true ? ['ipv4', 'ipv6'] : ['ipv4']);
    const ipset = run(this.host, 'the host netns');
    for (const spec of this.hostRules.ipsets) {
      await ipset('ipset', ['destroy', spec.name]).catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'cannot destroy ipset'));
    }
  }
}
