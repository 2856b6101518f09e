import { statSync } from 'node:fs';
import { backoffDelay, Semaphore } from './backoff.js';
import type { CaptureBypassGuard } from './capture-bypass.js';
import { CniAgentError, failureReason } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import type { AgentMetrics } from './metrics.js';
import { NetnsHints } from './netns-hints.js';
import { REDIRECTION_ANNOTATION, type NamespaceInfo, type PodInfo } from './pod.js';
import type { PodSource } from './pod-source.js';
import type { EnrollmentRule, NetnsHandle, NetnsHoldsIp, OpenNetns, PodRules, WorkloadHandoff } from './ports.js';
import { findPodNetnsInProc } from './proc-scan.js';

export type PodState = 'idle' | 'pending' | 'captured' | 'releasing';

export interface PodStatus {
  uid: string;
  name: string;
  namespace: string;
  state: PodState;
  netns: string | undefined;
  lastError: string | undefined;
}

export interface PodControllerOptions {
  source: PodSource;
  rules: PodRules;
  ztunnel: WorkloadHandoff;
  openNetns: OpenNetns;
  /**
   * Checks a netns path that is not the CNI_NETNS of the ADD being served (the pods file's, a hint,
   * one found earlier) before the pod's rules go in it: such a path may name another pod's netns now.
   */
  netnsHoldsIp: NetnsHoldsIp;
  enrolled: EnrollmentRule;
  metrics: AgentMetrics;
  logger?: Logger;
  hints?: NetnsHints;
  /** Inodes of netns that are never a pod's (the node's own). */
  hostNetnsInodes?: number[];
  procRoot?: string;
  retryInitialMs?: number;
  retryMaxMs?: number;
  /** Captures running at once. */
  concurrency?: number;
  /**
   * The longest one API write (the redirection annotation, an Event) holds one of the API write
   * slots, whatever the source does: a write on a black-holed API connection is given up then (an
   * annotation is retried, an Event dropped). Default 30000.
   */
  apiWriteTimeoutMs?: number;
  /** Told of every capture and release (the capture-bypass warning and gauge). */
  bypass?: Pick<CaptureBypassGuard, 'captured' | 'released'>;
}

type Trigger = 'cmdadd' | 'watch' | 'startup';

/** Pods a drift pass checks at once (see checkDrift). */
const DRIFT_CONCURRENCY = 2;
/**
 * Longest an Event waits for the agent to go quiet (report()): on a node that never does (pods
 * coming all the time), Events still go out, this late.
 */
const REPORT_DEFER_MS = 10_000;
/** Events written at once: a quiet moment between two CNI ADDs starts no more than this. */
const REPORTS_AT_ONCE = 2;
/**
 * Default apiWriteTimeoutMs: client-node's Event write has no timeout of its own, and a black-holed
 * API connection would otherwise keep a write slot (and the annotations queued behind it) for as long
 * as TCP takes to give up.
 */
const API_WRITE_TIMEOUT_MS = 30_000;
const REPORT_CHECK_MS = 50;

interface Waiter {
  /** The CNI_NETNS of its ADD: only a capture of that netns answers it. */
  netnsPath: string;
  resolve(): void;
  reject(err: Error): void;
}

interface PodRecord {
  uid: string;
  pod: PodInfo;
  state: PodState;
  netns: NetnsHandle | undefined;
  /** Path the netns came from (CNI_NETNS, the pods file, a hint or /proc). */
  netnsPath: string | undefined;
  /** `netnsPath` is the CNI_NETNS of the pod's last ADD: the runtime's word, used without a check. */
  netnsFromAdd: boolean;
  /** IPs from the CNI event, used while the API has not reported the pod's IPs yet. */
  eventIps: string[];
  attempt: number;
  retry: NodeJS.Timeout | undefined;
  chain: Promise<void>;
  queued: boolean;
  enrollStart: { at: bigint; trigger: Trigger } | undefined;
  waiters: Waiter[];
  deleted: boolean;
  rulesApplied: boolean;
  hostProbe: boolean;
  inZtunnel: boolean;
  /** We set the redirection annotation (the source's copy of the pod may not show it yet). */
  annotated: boolean;
  /** We removed it (a release): the source's copy may still show it until the watch catches up. */
  unannotated: boolean;
  /** Writing the annotation is queued on the pod's chain (outside the capture slots). */
  annotating: boolean;
  /** CNI ADDs of the captured pod waiting for its annotation (istio-cni answers once it is written). */
  annotationWaiters: { resolve(): void; reject(err: Error): void }[];
  /** A capture of this pod is running (not merely queued). */
  capturing: boolean;
  /** Its /cmdadd was answered 500 (timed out) while the capture still waited in the queue. */
  staleCmdAdd: boolean;
  lastError: string | undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Whether the pod carries the redirection annotation: we wrote it, or the source says so and we did not remove it since. */
function hasAnnotation(rec: PodRecord): boolean {
  return rec.annotated || (!rec.unannotated && rec.pod.annotations[REDIRECTION_ANNOTATION] === 'enabled');
}

/** `work`, or a rejection once `ms` passed (the work itself goes on; its outcome is then dropped). */
function withinDeadline(work: Promise<void>, ms: number): Promise<void> {
  work.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    timer.unref?.();
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * The per-pod state machine: idle → pending → captured → (releasing → idle). Work for one pod is
 * serialised on its own chain; different pods run concurrently up to a limit. Every step is
 * idempotent, so a retry re-runs the whole capture and only what is missing changes.
 */
export class PodController {
  private readonly records = new Map<string, PodRecord>();
  private readonly log: Logger;
  private readonly sem: Semaphore;
  /**
   * API writes at once: in a burst every CNI ADD waits for its pod's annotation, so more than two
   * (the limit while the ADD did not wait for it) shortens the burst's tail; each write in parallel is
   * another keep-alive API connection (HTTP/1.1: a TCP and TLS handshake once, on both sides).
   */
  private readonly apiWrites = new Semaphore(4);
  /** API writes that only inform (Events), waiting for the captures to go quiet (report()). */
  private reports: { at: number; write: () => Promise<void> }[] = [];
  private reportCheck: NodeJS.Timeout | undefined;
  private reportsInFlight = 0;
  /** CNI ADDs not answered yet (the agent is quiet when there are none and no capture runs or waits). */
  private addsInFlight = 0;
  private readonly hints: NetnsHints;
  private stopped = false;

  constructor(private readonly opts: PodControllerOptions) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'inpod' });
    this.sem = new Semaphore(opts.concurrency ?? 8);
    this.hints = opts.hints ?? new NetnsHints(undefined);
  }

  // ---- inputs -------------------------------------------------------------------------------

  podChanged(pod: PodInfo, trigger: Trigger = 'watch'): void {
    const rec = this.record(pod);
    rec.pod = pod;
    if (rec.state === 'captured') this.opts.bypass?.captured(pod);
    this.kick(rec, trigger);
  }

  podDeleted(pod: PodInfo): void {
    const rec = this.records.get(pod.uid);
    if (!rec) return;
    rec.deleted = true;
    this.kick(rec, 'watch');
  }

  namespaceChanged(ns: NamespaceInfo): void {
    for (const rec of this.records.values()) if (rec.pod.namespace === ns.name) this.kick(rec, 'watch');
  }

  /**
   * A CNI ADD for `pod` with its sandbox netns at `netnsPath`: resolves once the pod is captured
   * and acked by ztunnel, rejects with the reason otherwise (the pod stays pending and retried).
   */
  async cmdAdd(pod: PodInfo, netnsPath: string, ips: string[], receivedAt: bigint, timeoutMs: number): Promise<void> {
    this.addsInFlight++;
    try {
      await this.cmdAddNow(pod, netnsPath, ips, receivedAt, timeoutMs);
    } finally {
      this.addsInFlight--;
    }
  }

  private async cmdAddNow(pod: PodInfo, netnsPath: string, ips: string[], receivedAt: bigint, timeoutMs: number): Promise<void> {
    const rec = this.record(pod);
    rec.pod = pod;
    rec.eventIps = ips;
    // Only the wanted path changes here. The handle belongs to the pod's chain, where a capture of a
    // previous sandbox may still be running: it sees the new path and leaves this ADD to the queued one.
    rec.netnsPath = netnsPath;
    rec.netnsFromAdd = true;
    rec.enrollStart = { at: receivedAt, trigger: 'cmdadd' };
    rec.attempt = 0;
    rec.staleCmdAdd = false;
    if (rec.state === 'captured') rec.state = 'pending';
    let waiter: Waiter | undefined;
    const done = new Promise<void>((resolve, reject) => rec.waiters.push((waiter = { netnsPath, resolve, reject })));
    this.kick(rec, 'cmdadd');
    let captured = false;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        if (captured) {
          reject(new CniAgentError('ERR_AGENT_KUBE_API', `pod ${pod.namespace}/${pod.name} captured, but its ${REDIRECTION_ANNOTATION} annotation was not written within ${timeoutMs} ms (retrying)`));
          return;
        }
        // Still queued behind other captures (a burst on a busy node): the runtime now fails this
        // ADD and tears the sandbox down or retries it, so capturing it at its turn would spend the
        // CPU that pods still waiting for their answer need. It is retried later instead.
        rec.waiters = rec.waiters.filter((w) => w !== waiter);
        if (!rec.capturing && rec.queued) rec.staleCmdAdd = true;
        reject(new CniAgentError('ERR_AGENT_ZTUNNEL', `pod ${pod.namespace}/${pod.name} not captured within ${timeoutMs} ms (still pending, retrying)`));
      }, timeoutMs);
    });
    let capturedAt = receivedAt;
    try {
      await Promise.race([done, timeout]);
      captured = true;
      capturedAt = process.hrtime.bigint();
      // As istio-cni, the ADD is answered once the pod is annotated as captured: istiod (and through it
      // every ztunnel) then treats it as a mesh workload from its start, not plaintext for a while.
      await Promise.race([this.annotation(rec), timeout]);
    } finally {
      clearTimeout(timer);
    }
    const answeredAt = process.hrtime.bigint();
    this.opts.metrics.enrollmentLatency.observe({ trigger: 'cmdadd' }, Number(answeredAt - receivedAt) / 1e9);
    // With `capture timings`, where an ADD's time went: the capture, then its annotation write.
    this.log.debug(
      { uid: rec.uid, name: pod.name, namespace: pod.namespace, capturedMs: Number((Number(capturedAt - receivedAt) / 1e6).toFixed(1)), annotationMs: Number((Number(answeredAt - capturedAt) / 1e6).toFixed(1)) },
      'cmdadd answered, pod captured and annotated',
    );
  }

  /** Resolves once the captured pod carries the redirection annotation, writing it if need be. */
  private annotation(rec: PodRecord): Promise<void> {
    if (hasAnnotation(rec)) return Promise.resolve();
    const written = new Promise<void>((resolve, reject) => rec.annotationWaiters.push({ resolve, reject }));
    this.annotateLater(rec);
    return written;
  }

  /** Every pod whose first attempt is done (used once at startup, before serving ztunnel). */
  async settled(): Promise<void> {
    await Promise.all([...this.records.values()].map((r) => r.chain));
  }

  /** UIDs of pods that are (being) captured: their probe ipset entries must stay. */
  enrolledUids(): Set<string> {
    return new Set([...this.records.values()].filter((r) => r.hostProbe || r.state === 'captured' || r.state === 'pending').map((r) => r.uid));
  }

  /** ztunnel nacked the pod in a snapshot: it is not proxied, so it is pending again and retried. */
  nacked(uid: string, reason: string): void {
    const rec = this.records.get(uid);
    if (!rec || rec.deleted) return;
    rec.state = 'pending';
    rec.lastError = `ztunnel nacked the pod in its snapshot: ${reason}`;
    rec.attempt++;
    this.opts.metrics.failures.inc({ reason: 'ztunnel_failed' });
    const retryInMs = backoffDelay(rec.attempt, this.opts.retryInitialMs ?? 200, this.opts.retryMaxMs ?? 30_000);
    this.log.warn({ uid, name: rec.pod.name, namespace: rec.pod.namespace, reason, retryInMs }, 'pod pending: ztunnel nacked it in the snapshot; retrying');
    this.scheduleRetry(rec, retryInMs);
    this.updateGauges();
  }

  /** Re-attempts pending pods now (ztunnel just connected). */
  retryPending(): void {
    for (const rec of this.records.values()) {
      if (rec.state === 'pending' && !rec.deleted) {
        rec.attempt = 0;
        this.kick(rec, 'watch');
      }
    }
  }

  /**
   * Diffs every captured pod's rules and repairs drift; resolves with the number repaired. At most
   * DRIFT_CONCURRENCY pods are checked (or queued for a capture slot) at a time, so a pass over
   * every pod never queues ahead of a CNI ADD arriving meanwhile: the pass spreads out instead.
   */
  async checkDrift(): Promise<number> {
    let repaired = 0;
    const todo = [...this.records.values()].filter((rec) => rec.state === 'captured');
    const worker = async (): Promise<void> => {
      for (let rec = todo.shift(); rec !== undefined; rec = todo.shift()) await this.driftOne(rec, () => repaired++);
    };
    await Promise.all(Array.from({ length: DRIFT_CONCURRENCY }, worker));
    return repaired;
  }

  private driftOne(rec: PodRecord, onRepaired: () => void): Promise<void> {
    return this.enqueue(rec, async () => {
      if (this.stopped || rec.state !== 'captured' || rec.deleted) return;
      if (!this.holdsCurrent(rec)) {
        // Captured, yet no open handle on the netns the pod has now: nothing says its rules are there.
        this.log.warn({ uid: rec.uid, name: rec.pod.name, namespace: rec.pod.namespace, netns: rec.netnsPath }, 'drift check found a captured pod without a handle on its netns; capturing it again');
        rec.state = 'pending';
        await this.reconcile(rec);
        if ((rec.state as PodState) === 'captured') onRepaired();
        return;
      }
      try {
        const report = await this.opts.rules.apply(rec.pod, rec.netns);
        if (report.changed) {
          onRepaired();
          this.opts.metrics.repairs.inc();
          this.log.warn({ uid: rec.uid, name: rec.pod.name, namespace: rec.pod.namespace, repaired: report.repaired }, 'drift check repaired in-pod rules');
        }
      } catch (err) {
        this.opts.metrics.failures.inc({ reason: 'drift_repair_failed' });
        this.log.warn({ uid: rec.uid, err: describe(err) }, 'drift check failed, will retry on the next pass');
      }
    });
  }

  status(): PodStatus[] {
    return [...this.records.values()].map((r) => ({
      uid: r.uid,
      name: r.pod.name,
      namespace: r.pod.namespace,
      state: r.state,
      netns: r.netnsPath,
      lastError: r.lastError,
    }));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reportCheck);
    this.reports = [];
    for (const rec of this.records.values()) {
      clearTimeout(rec.retry);
      for (const w of rec.waiters.splice(0)) w.reject(new CniAgentError('ERR_AGENT_STOPPED', 'agent is stopping'));
      this.settleAnnotation(rec, new CniAgentError('ERR_AGENT_STOPPED', 'agent is stopping'));
    }
    await Promise.all([...this.records.values()].map((r) => r.chain));
    for (const rec of this.records.values()) rec.netns?.close();
    this.records.clear();
    await this.hints.flushed();
  }

  // ---- machinery ----------------------------------------------------------------------------

  private record(pod: PodInfo): PodRecord {
    let rec = this.records.get(pod.uid);
    if (!rec) {
      rec = {
        uid: pod.uid,
        pod,
        state: 'idle',
        netns: undefined,
        netnsPath: pod.netnsPath,
        netnsFromAdd: false,
        eventIps: [],
        attempt: 0,
        retry: undefined,
        chain: Promise.resolve(),
        queued: false,
        enrollStart: undefined,
        waiters: [],
        deleted: false,
        rulesApplied: false,
        hostProbe: false,
        inZtunnel: false,
        annotated: false,
        unannotated: false,
        annotating: false,
        annotationWaiters: [],
        capturing: false,
        staleCmdAdd: false,
        lastError: undefined,
      };
      this.records.set(pod.uid, rec);
    }
    return rec;
  }

  private enqueue(rec: PodRecord, job: () => Promise<void>): Promise<void> {
    return this.chain(rec, () => this.sem.run(job));
  }

  private chain(rec: PodRecord, job: () => Promise<void>): Promise<void> {
    rec.chain = rec.chain.then(job).catch((err: unknown) => {
      this.log.error({ uid: rec.uid, err: describe(err) }, 'unexpected error in pod work');
    });
    return rec.chain;
  }

  private kick(rec: PodRecord, trigger: Trigger): void {
    if (this.stopped) return;
    clearTimeout(rec.retry);
    rec.retry = undefined;
    if (!rec.enrollStart && trigger !== 'cmdadd') rec.enrollStart = { at: process.hrtime.bigint(), trigger };
    if (rec.queued) return;
    rec.queued = true;
    void this.enqueue(rec, async () => {
      rec.queued = false;
      await this.reconcile(rec);
    });
  }

  private wants(pod: PodInfo): boolean {
    if (pod.phase === 'Succeeded' || pod.phase === 'Failed') return false;
    return this.opts.enrolled(pod, this.opts.source.namespace(pod.namespace));
  }

  private touched(rec: PodRecord): boolean {
    return (
      rec.rulesApplied ||
      rec.hostProbe ||
      rec.inZtunnel ||
      rec.annotated ||
      rec.state !== 'idle' ||
      rec.pod.annotations[REDIRECTION_ANNOTATION] === 'enabled'
    );
  }

  private async reconcile(rec: PodRecord): Promise<void> {
    if (this.stopped) return;
    if (rec.deleted) {
      await this.forget(rec);
      return;
    }
    if (this.wants(rec.pod)) {
      if (rec.state === 'captured' && rec.waiters.length === 0 && this.holdsCurrent(rec)) {
        rec.enrollStart = undefined;
        this.annotateLater(rec);
        return;
      }
      if (rec.state === 'idle' && rec.waiters.length === 0 && this.podIps(rec).length === 0 && !rec.netnsPath) {
        // A pod whose sandbox has no network yet: its CNI ADD (our plugin's /cmdadd) captures it.
        rec.enrollStart = undefined;
        return;
      }
      if (rec.staleCmdAdd && rec.waiters.length === 0) {
        rec.staleCmdAdd = false;
        rec.attempt++;
        const retryInMs = backoffDelay(rec.attempt, this.opts.retryInitialMs ?? 200, this.opts.retryMaxMs ?? 30_000);
        this.log.info({ uid: rec.uid, name: rec.pod.name, namespace: rec.pod.namespace, retryInMs }, 'cmdadd answered (timed out) before its capture began; capturing later');
        this.scheduleRetry(rec, retryInMs);
        return;
      }
      await this.capture(rec);
    } else {
      rec.enrollStart = undefined;
      if (this.touched(rec)) await this.release(rec);
      // A waiter is a CNI ADD the agent found enrolled: resolving would answer "pod captured" for a
      // pod that is not (its labels or its namespace's changed since the lookup). Fail it; the retry decides again.
      const ns = this.opts.source.namespace(rec.pod.namespace);
      const seen = ns ? `namespace labels ${JSON.stringify(ns.labels)}` : 'namespace not in the cache yet';
      const why = new CniAgentError('ERR_AGENT_NOT_CAPTURED', `pod ${rec.pod.namespace}/${rec.pod.name} is not enrolled as the pod source has it now (${seen}, phase ${rec.pod.phase}); not captured`);
      for (const w of rec.waiters.splice(0)) w.reject(why);
    }
  }

  private podIps(rec: PodRecord): string[] {
    return rec.pod.ips.length > 0 ? rec.pod.ips : rec.eventIps;
  }

  /**
   * Opens (or reuses) the pod's netns: its known path, a remembered hint, else a /proc scan. Only the
   * CNI_NETNS of the ADD being served is taken as is; any other path (the pods file's, a hint, one
   * found earlier) may be stale — the sandbox was recreated and the path names another netns now,
   * maybe another pod's — so it is used only when that netns holds one of the pod's IPs. With no IPs
   * known yet nothing proves it, so it is not used either (the /proc scan, which at least finds a
   * process in the pod's cgroup, decides): capturing another pod's netns under this pod's identity is
   * worse than a pod left pending.
   */
  private async netnsFor(rec: PodRecord): Promise<NetnsHandle> {
    if (this.holdsCurrent(rec)) return rec.netns;
    if (rec.netns) {
      // A new sandbox (a CNI ADD with another netns): the old netns, and the rules in it, are no longer the pod's.
      this.dropNetns(rec);
      rec.rulesApplied = false;
    }
    const hint = this.hints.get(rec.uid);
    const known = rec.netnsFromAdd ? 'cni-add' : rec.netnsPath === hint ? 'hint' : rec.netnsPath === rec.pod.netnsPath ? 'pods-file' : 'last-found';
    const candidates: { path: string | undefined; from: 'cni-add' | 'last-found' | 'pods-file' | 'hint' }[] = [
      { path: rec.netnsPath, from: known },
      { path: rec.pod.netnsPath, from: 'pods-file' },
      { path: hint, from: 'hint' },
    ];
    const errors: string[] = [];
    const tried = new Set<string>();
    for (const { path, from } of candidates) {
      if (path === undefined || tried.has(path)) continue;
      tried.add(path);
      let netns: NetnsHandle;
      try {
        netns = this.opts.openNetns(path);
      } catch (err) {
        errors.push(`${path}: ${describe(err)}`);
        continue;
      }
      const stale = from === 'cni-add' ? undefined : this.notThePods(rec, netns);
      if (stale !== undefined) {
        netns.close();
        errors.push(`${path} (${from}): ${stale}`);
        if (from === 'hint') this.hints.set(rec.uid, undefined);
        this.log.warn({ uid: rec.uid, name: rec.pod.name, namespace: rec.pod.namespace, netns: path, from, reason: stale }, 'netns path not proven the pod\'s, not used; scanning /proc');
        continue;
      }
      rec.netns = netns;
      rec.netnsPath = path;
      rec.netnsFromAdd = from === 'cni-add';
      return rec.netns;
    }
    const found = await findPodNetnsInProc({
      uid: rec.uid,
      ips: this.podIps(rec),
      ...(this.opts.procRoot !== undefined ? { procRoot: this.opts.procRoot } : {}),
      excludeInodes: this.opts.hostNetnsInodes ?? [],
    }).catch((err: unknown) => {
      errors.push(`/proc scan: ${describe(err)}`);
      return undefined;
    });
    if (found) {
      try {
        rec.netns = this.opts.openNetns(found.path);
        rec.netnsPath = found.path;
        rec.netnsFromAdd = false;
        return rec.netns;
      } catch (err) {
        errors.push(`${found.path}: ${describe(err)}`);
      }
    }
    throw new CniAgentError(
      'ERR_AGENT_NETNS_NOT_FOUND',
      `netns of pod ${rec.pod.namespace}/${rec.pod.name} (uid ${rec.uid}) not found: ${
        errors.length ? errors.join('; ') : 'no known path, and no process in /proc in the pod cgroup with a netns holding its IPs'
      }`,
    );
  }

  /** Why an open netns (not the ADD's) is not proven the pod's; undefined when it holds one of the pod's IPs. */
  private notThePods(rec: PodRecord, netns: NetnsHandle): string | undefined {
    if ((this.opts.hostNetnsInodes ?? []).includes(netns.id.ino)) return `it is the node's netns (inode ${netns.id.ino})`;
    const ips = this.podIps(rec);
    if (ips.length === 0) return 'the pod has no IPs yet to check it against';
    try {
      if (!this.opts.netnsHoldsIp(netns, ips)) return `it holds none of the pod's IPs ${ips.join(',')} (a recreated sandbox's path, or another pod's netns)`;
    } catch (err) {
      return `cannot tell whether it holds the pod's IPs ${ips.join(',')}: ${describe(err)}`;
    }
    return undefined;
  }

  /** An open handle on the netns the pod has now (the last CNI ADD's, or the one found). */
  private holdsCurrent(rec: PodRecord): rec is PodRecord & { netns: NetnsHandle } {
    return rec.netns !== undefined && !rec.netns.closed && (rec.netnsPath === undefined || rec.netns.path === rec.netnsPath);
  }

  /** A CNI ADD for another sandbox arrived while this capture of `path` ran: it is no longer the pod's netns. */
  private superseded(rec: PodRecord, netns: NetnsHandle, path: string | undefined): boolean {
    return rec.netns !== netns || rec.netnsPath !== path;
  }

  /**
   * The netns must still be the one at its path (it can vanish or be replaced mid-capture). A
   * synchronous stat: the path is a netns bind mount or /proc entry (no disk behind it), and twice
   * per capture a thread-pool round trip costs more of a busy node's CPU than the call itself.
   */
  private stillThere(rec: PodRecord, netns: NetnsHandle, path: string | undefined): void {
    if (!path) return;
    let st: { dev: number; ino: number };
    try {
      st = statSync(path);
    } catch (cause) {
      throw new CniAgentError('ERR_AGENT_NETNS_NOT_FOUND', `netns ${path} of pod ${rec.pod.namespace}/${rec.pod.name} vanished mid-capture`, { cause });
    }
    // An inode number alone is not an identity: nsfs and a file system holding the path can share one.
    if (st.ino !== netns.id.ino || st.dev !== netns.id.dev) {
      throw new CniAgentError(
        'ERR_AGENT_NETNS_NOT_FOUND',
        `netns ${path} of pod ${rec.pod.namespace}/${rec.pod.name} was replaced mid-capture (dev ${st.dev} inode ${st.ino}, opened dev ${netns.id.dev} inode ${netns.id.ino})`,
      );
    }
  }

  /** A capture left the pod's newer sandbox to the reconcile its CNI ADD queued; make sure there is one. */
  private requeue(rec: PodRecord): void {
    rec.state = 'pending';
    if (!rec.queued) this.kick(rec, 'watch');
    this.updateGauges();
  }

  private dropNetns(rec: PodRecord): void {
    rec.netns?.close();
    rec.netns = undefined;
  }

  private async capture(rec: PodRecord): Promise<void> {
    rec.capturing = true;
    try {
      await this.captureNow(rec);
    } finally {
      rec.capturing = false;
    }
  }

  private async captureNow(rec: PodRecord): Promise<void> {
    const pod = rec.pod;
    const ids = { uid: rec.uid, name: pod.name, namespace: pod.namespace };
    const wasCaptured = rec.state === 'captured';
    if (!wasCaptured) rec.state = 'pending';
    let step = 'find netns';
    // Where a capture's time goes (debug line below): waiting for a slot, the netns, rules, ztunnel.
    const began = process.hrtime.bigint();
    const marks: [string, bigint][] = [];
    let netns: NetnsHandle | undefined;
    /** The netns this capture is for: a CNI ADD may name another one while it runs. */
    let path: string | undefined;
    try {
      netns = await this.netnsFor(rec);
      marks.push(['netnsMs', process.hrtime.bigint()]);
      path = rec.netnsPath;
      step = 'apply in-pod rules and host probe ipset';
      // Independent of each other (pod netns vs node netns): run them side by side.
      const probe = this.opts.rules.addHostProbe(pod, this.podIps(rec)).then(
        () => {
          rec.hostProbe = true;
        },
        (cause: unknown) => {
          throw new CniAgentError('ERR_AGENT_HOST', `adding ${pod.namespace}/${pod.name} IPs ${this.podIps(rec).join(',')} to the probe ipset: ${describe(cause)}`, { cause });
        },
      );
      probe.catch(() => undefined);
      let report;
      try {
        // A CNI ADD's first capture: the sandbox netns is new, install without reading it first.
        report = await this.opts.rules.apply(pod, netns, { likelyNew: rec.enrollStart?.trigger === 'cmdadd' && !rec.rulesApplied && !wasCaptured });
      } catch (cause) {
        throw new CniAgentError('ERR_AGENT_RULES', `applying in-pod rules for ${pod.namespace}/${pod.name} in ${path}: ${describe(cause)}`, { cause });
      } finally {
        await probe.catch(() => undefined);
      }
      await probe;
      marks.push(['rulesMs', process.hrtime.bigint()]);
      rec.rulesApplied = true;
      if (report.repaired.length > 0 && rec.enrollStart?.trigger === 'startup') {
        this.opts.metrics.repairs.inc();
        this.log.warn({ ...ids, repaired: report.repaired }, 'restart reconcile repaired in-pod rules');
      }
      step = 'check netns';
      this.stillThere(rec, netns, path);
      step = 'ztunnel add';
      try {
        await this.opts.ztunnel.addWorkload(
          rec.uid,
          { name: pod.name, namespace: pod.namespace, serviceAccount: pod.serviceAccount },
          netns,
        );
      } catch (cause) {
        throw new CniAgentError('ERR_AGENT_ZTUNNEL', `ztunnel did not take pod ${pod.namespace}/${pod.name} (uid ${rec.uid}): ${describe(cause)}`, { cause });
      }
      rec.inZtunnel = true;
      marks.push(['ztunnelMs', process.hrtime.bigint()]);
      if (this.superseded(rec, netns, path)) {
        // ztunnel took a netns that is no longer the pod's: the new one's ADD waits for its own
        // capture (queued behind this one), whose Add for the same uid makes ztunnel drop this netns.
        this.log.info({ ...ids, netns: path, current: rec.netnsPath }, 'pod captured in a previous sandbox netns, a new one arrived meanwhile; capturing that');
        this.requeue(rec);
        return;
      }
      // The ZDS add is the slow step: the netns may have been replaced at its path meanwhile.
      step = 'check netns after ztunnel add';
      this.stillThere(rec, netns, path);
      this.hints.set(rec.uid, path);
      rec.state = 'captured';
      rec.attempt = 0;
      rec.lastError = undefined;
      this.opts.bypass?.captured(pod);
      this.log.info({ ...ids, netns: path }, 'pod captured, in-pod rules applied and netns handed to ztunnel');
      const ms = (a: bigint, b: bigint): number => Number((Number(b - a) / 1e6).toFixed(1));
      this.log.debug(
        {
          ...ids,
          ...(rec.enrollStart ? { waitedMs: ms(rec.enrollStart.at, began), trigger: rec.enrollStart.trigger } : {}),
          ...Object.fromEntries(marks.map(([k, at], i) => [k, ms(marks[i - 1]?.[1] ?? began, at)])),
        },
        'capture timings',
      );
      if (rec.enrollStart) {
        // A CNI ADD's is observed when it is answered (cmdAdd), after the annotation.
        if (rec.enrollStart.trigger !== 'cmdadd') {
          this.opts.metrics.enrollmentLatency.observe({ trigger: rec.enrollStart.trigger }, Number(process.hrtime.bigint() - rec.enrollStart.at) / 1e9);
        }
        rec.enrollStart = undefined;
      }
      for (const w of rec.waiters.splice(0)) {
        if (w.netnsPath === path) w.resolve();
        else w.reject(new CniAgentError('ERR_AGENT_NETNS_NOT_FOUND', `pod ${pod.namespace}/${pod.name} was captured in netns ${path}, not in ${w.netnsPath} of this ADD (not found when the capture began)`));
      }
      this.updateGauges();
    } catch (err) {
      if (netns && this.superseded(rec, netns, path)) {
        // A failure in a netns that is no longer the pod's says nothing about the new one.
        this.log.info({ ...ids, netns: path, current: rec.netnsPath, err: describe(err) }, 'capture of a previous sandbox netns failed, a new one arrived meanwhile; capturing that');
        this.requeue(rec);
        return;
      }
      const reason = failureReason(err);
      if (reason === 'ztunnel_failed' && !this.opts.ztunnel.connected) {
        // No ztunnel yet: the pod is in the ZDS snapshot set, and the snapshot ack retries it.
        rec.state = 'pending';
        rec.lastError = describe(err);
        for (const w of rec.waiters.splice(0)) w.reject(err as Error);
        if (rec.enrollStart?.trigger !== 'startup') this.opts.metrics.failures.inc({ reason: 'ztunnel_not_connected' });
        this.log.info({ ...ids, rulesApplied: rec.rulesApplied }, 'pod pending: waiting for ztunnel to connect and take the snapshot');
        this.updateGauges();
        return;
      }
      if (err instanceof CniAgentError && err.code === 'ERR_AGENT_NETNS_NOT_FOUND') {
        this.dropNetns(rec);
        // After a restart, a captured pod whose netns we cannot find yet must not be dropped by
        // ztunnel when it gets our snapshot.
        if (pod.annotations[REDIRECTION_ANNOTATION] === 'enabled' && !rec.inZtunnel) {
          this.opts.ztunnel.keepWorkload?.(rec.uid, { name: pod.name, namespace: pod.namespace, serviceAccount: pod.serviceAccount });
        }
      }
      rec.state = 'pending';
      rec.attempt++;
      rec.lastError = describe(err);
      this.opts.metrics.failures.inc({ reason });
      const retryInMs = backoffDelay(rec.attempt, this.opts.retryInitialMs ?? 200, this.opts.retryMaxMs ?? 30_000);
      this.log.warn(
        {
          ...ids,
          step,
          reason,
          err: rec.lastError,
          rulesApplied: rec.rulesApplied,
          retryInMs,
          attempt: rec.attempt,
        },
        // Rules are applied per IP family and a family whose restore fails is rolled back alone, so
        // a failed apply can leave one family redirected (blocked) and the other as it was.
        reason === 'rules_failed'
          ? 'pod pending: applying in-pod rules failed; an IP family whose restore failed was rolled back to its previous rules (on a first capture none: that family flows uncaptured), a family restored before it is redirected to ztunnel and blocked until capture completes; retrying'
          : rec.rulesApplied
            ? 'pod pending: in-pod rules are in place but ztunnel has not taken the pod, its traffic is blocked until it does; retrying'
            : 'pod pending: capture failed; retrying',
      );
      for (const w of rec.waiters.splice(0)) w.reject(err as Error);
      if (rec.attempt <= 3) {
        const message = rec.lastError;
        this.report(() => this.opts.source.recordEvent(pod, { type: 'Warning', reason: 'AmbientCaptureFailed', message }));
      }
      this.scheduleRetry(rec, retryInMs);
      this.updateGauges();
      return;
    }
    this.annotateLater(rec);
  }

  /**
   * The redirection annotation tells istiod (and so every ztunnel) the pod is captured: written as
   * soon as the capture is done, but not inside its capture slot, where an API round trip would
   * hold up other pods' CNI ADDs. On the pod's own chain, after the work in flight; once at a time.
   */
  private annotateLater(rec: PodRecord): void {
    if (hasAnnotation(rec)) return this.settleAnnotation(rec);
    if (rec.annotating) return;
    rec.annotating = true;
    // The write slot first, then the pod's chain: waiting for a slot never holds up the pod's own
    // work (a release, a deletion's cleanup, the next sandbox's capture). Ahead of any Event waiting
    // for a slot: a CNI ADD waits for this write, nothing waits for an Event (a burst's warnings,
    // one per pod, all come due at once).
    void this.apiWrites.run(() => this.chain(rec, () => this.annotate(rec)), true);
  }

  /**
   * Runs `write`, an API write that only informs (a Kubernetes Event), once no capture runs or
   * waits and no CNI ADD is unanswered (at the latest REPORT_DEFER_MS later), sharing the
   * annotations' write slots: in a burst the agent's CPU goes to captures first. Its failure is
   * logged, never thrown.
   */
  report(write: () => Promise<void>): void {
    if (this.stopped) return;
    this.reports.push({ at: Date.now(), write });
    this.checkReports();
  }

  /**
   * Starts the Events that may go now: while the agent is quiet (no capture running or waiting, no
   * CNI ADD unanswered), or once one waited REPORT_DEFER_MS; REPORTS_AT_ONCE at a time, each one's
   * end looking again, so a quiet moment in a burst does not send every Event queued so far into the
   * write slots the next ADDs' annotations need.
   */
  private checkReports(): void {
    while (this.reportsInFlight < REPORTS_AT_ONCE && !this.stopped) {
      const oldest = this.reports[0];
      if (oldest === undefined) return;
      if (!(this.quiet() || Date.now() - oldest.at >= REPORT_DEFER_MS)) break;
      this.reports.shift();
      this.reportsInFlight++;
      void this.apiWrites
        .run(() => withinDeadline(oldest.write(), this.opts.apiWriteTimeoutMs ?? API_WRITE_TIMEOUT_MS))
        .catch((err: unknown) => this.log.warn({ err: describe(err) }, 'reporting to the API failed'))
        .finally(() => {
          this.reportsInFlight--;
          this.checkReports();
        });
    }
    if (this.reportCheck !== undefined || this.reports.length === 0 || this.stopped) return;
    this.reportCheck = setTimeout(() => {
      this.reportCheck = undefined;
      this.checkReports();
    }, REPORT_CHECK_MS);
    this.reportCheck.unref?.();
  }

  private quiet(): boolean {
    return this.sem.idle && this.addsInFlight === 0;
  }

  /** Answers the CNI ADDs waiting for the annotation: written (no error), or why it was not. */
  private settleAnnotation(rec: PodRecord, err?: Error): void {
    for (const w of rec.annotationWaiters.splice(0)) {
      if (err) w.reject(err);
      else w.resolve();
    }
  }

  /** Runs in a write slot, on the pod's chain (annotateLater). */
  private async annotate(rec: PodRecord): Promise<void> {
    rec.annotating = false;
    const pod = rec.pod;
    if (hasAnnotation(rec)) return this.settleAnnotation(rec);
    // Deleted, released or stopping while it waited: nothing to write any more.
    if (this.stopped || rec.deleted || rec.state !== 'captured') {
      return this.settleAnnotation(rec, new CniAgentError('ERR_AGENT_STOPPED', `pod ${pod.namespace}/${pod.name} was ${rec.deleted ? 'deleted' : this.stopped ? 'left as the agent stopped' : 'released'} before its annotation was written`));
    }
    try {
      await withinDeadline(this.opts.source.setRedirection(pod, 'enabled'), this.opts.apiWriteTimeoutMs ?? API_WRITE_TIMEOUT_MS);
      rec.annotated = true;
      rec.unannotated = false;
      this.settleAnnotation(rec);
    } catch (err) {
      this.settleAnnotation(rec, new CniAgentError('ERR_AGENT_KUBE_API', `pod ${pod.namespace}/${pod.name} captured, but writing its ${REDIRECTION_ANNOTATION} annotation failed: ${describe(err)} (retrying)`, { cause: err }));
      // Captured all the same. The retry's reconcile finds the pod captured and queues this again.
      this.opts.metrics.failures.inc({ reason: 'annotate_failed' });
      this.log.warn({ uid: rec.uid, name: pod.name, namespace: pod.namespace, err: describe(err) }, 'cannot annotate pod redirection enabled; retrying');
      this.scheduleRetry(rec, backoffDelay(++rec.attempt, this.opts.retryInitialMs ?? 200, this.opts.retryMaxMs ?? 30_000));
    }
  }

  private scheduleRetry(rec: PodRecord, ms: number): void {
    if (this.stopped) return;
    clearTimeout(rec.retry);
    rec.retry = setTimeout(() => {
      rec.retry = undefined;
      if (rec.queued) return;
      rec.queued = true;
      void this.enqueue(rec, async () => {
        rec.queued = false;
        await this.reconcile(rec);
      });
    }, ms);
    rec.retry.unref?.();
  }

  private async release(rec: PodRecord): Promise<void> {
    const pod = rec.pod;
    const ids = { uid: rec.uid, name: pod.name, namespace: pod.namespace };
    rec.state = 'releasing';
    try {
      let netns: NetnsHandle | undefined;
      try {
        netns = await this.netnsFor(rec);
      } catch (err) {
        this.log.info({ ...ids, err: describe(err) }, 'netns gone, skipping in-pod rule removal');
      }
      if (netns) {
        await this.opts.rules.remove(pod, netns);
        rec.rulesApplied = false;
      }
      await this.opts.ztunnel.removeWorkload(rec.uid).catch((err: unknown) => {
        if (this.opts.ztunnel.connected) throw err;
      });
      rec.inZtunnel = false;
      await this.opts.rules.removeHostProbe(pod);
      rec.hostProbe = false;
      if (rec.annotated || pod.annotations[REDIRECTION_ANNOTATION] !== undefined) {
        await this.opts.source.setRedirection(pod, null);
        rec.annotated = false;
        rec.unannotated = true;
      }
      this.dropNetns(rec);
      this.hints.set(rec.uid, undefined);
      rec.state = 'idle';
      rec.attempt = 0;
      rec.lastError = undefined;
      this.opts.bypass?.released(rec.uid);
      this.log.info(ids, 'pod removed from the mesh: in-pod rules removed, ztunnel told to drain');
    } catch (err) {
      rec.attempt++;
      rec.lastError = describe(err);
      this.opts.metrics.failures.inc({ reason: 'release_failed' });
      const retryInMs = backoffDelay(rec.attempt, this.opts.retryInitialMs ?? 200, this.opts.retryMaxMs ?? 30_000);
      this.log.warn({ ...ids, err: rec.lastError, retryInMs }, 'releasing pod failed; retrying');
      this.scheduleRetry(rec, retryInMs);
    }
    this.updateGauges();
  }

  /** The pod is gone: its netns with it, so only ztunnel, the host ipset and our state remain. */
  private async forget(rec: PodRecord): Promise<void> {
    const ids = { uid: rec.uid, name: rec.pod.name, namespace: rec.pod.namespace };
    clearTimeout(rec.retry);
    for (const w of rec.waiters.splice(0)) w.reject(new CniAgentError('ERR_AGENT_POD_NOT_FOUND', `pod ${ids.namespace}/${ids.name} was deleted`));
    this.settleAnnotation(rec, new CniAgentError('ERR_AGENT_POD_NOT_FOUND', `pod ${ids.namespace}/${ids.name} was deleted`));
    try {
      if (rec.inZtunnel || rec.state !== 'idle') {
        await this.opts.ztunnel.removeWorkload(rec.uid).catch((err: unknown) => {
          if (this.opts.ztunnel.connected) throw err;
        });
      }
      if (rec.hostProbe || rec.state !== 'idle') await this.opts.rules.removeHostProbe(rec.pod);
    } catch (err) {
      this.opts.metrics.failures.inc({ reason: 'release_failed' });
      this.log.warn({ ...ids, err: describe(err) }, 'cleaning up a deleted pod failed; retrying');
      rec.attempt++;
      this.scheduleRetry(rec, backoffDelay(rec.attempt, this.opts.retryInitialMs ?? 200, this.opts.retryMaxMs ?? 30_000));
      return;
    }
    if (rec.state !== 'idle') this.log.info(ids, 'pod deleted, removed from ztunnel and the probe ipset');
    this.dropNetns(rec);
    this.hints.set(rec.uid, undefined);
    this.records.delete(rec.uid);
    this.opts.bypass?.released(rec.uid);
    this.updateGauges();
  }

  private updateGauges(): void {
    let captured = 0;
    let pending = 0;
    for (const r of this.records.values()) {
      if (r.state === 'captured') captured++;
      else if (r.state === 'pending') pending++;
    }
    this.opts.metrics.podsEnrolled.set(captured);
    this.opts.metrics.podsPending.set(pending);
  }
}
