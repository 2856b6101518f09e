import { currentNetns, listAddresses, type Netns, type NetnsId } from '@weir/netns';
import type { ZdsAddEvent, ZdsHandler } from '@weir/redirect-protocol';
import { ZtunnelError } from './errors.js';
import { InpodProxy, type InpodProxyOptions, type InpodProxyState } from './inpod-proxy.js';
import type { Logger } from './logger.js';
import type { ZtunnelMetrics } from './metrics.js';

/** Everything an InpodProxy needs except what ZDS gives per pod. */
export type ProxyFactoryOptions = Omit<InpodProxyOptions, 'uid' | 'workloadInfo' | 'netns' | 'logger' | 'metrics' | 'prefetch'>;

interface PodEntry {
  uid: string;
  ev: ZdsAddEvent;
  state: 'Pending' | 'Up';
  /** Set from the moment its start begins, so a removal can stop a start still in flight. */
  proxy?: InpodProxy;
  /** The start in flight: resolves when the proxy listens, rejects with why it did not. */
  starting?: Promise<void>;
  retry?: NodeJS.Timeout;
  lastError?: string;
  /** The netns held a pod address when handed over: losing every one means the sandbox was torn down. */
  networked: boolean;
}

export interface PodState {
  uid: string;
  state: 'Pending' | 'Up';
  name?: string | undefined;
  namespace?: string | undefined;
  netns: { dev: number; ino: number };
  lastError?: string;
  proxy?: InpodProxyState;
}

export interface InpodManagerOptions {
  proxy: ProxyFactoryOptions;
  metrics: ZtunnelMetrics;
  logger: Logger;
  /** Retry period for proxies that failed to start (ztunnel: 5 s). */
  retryMs?: number;
  /** How long a replaced or removed proxy's connections may run (Del: 0 — the pod is gone). */
  replaceDeadlineMs?: number;
  /**
   * Longest time one ZDS record is worked on before it is answered: what is not done by then is
   * nacked (and goes on: a proxy start keeps going, the agent's retry is acked once it is up). Below
   * the node agent's 5 s ack deadline, so a slow pod never costs the connection: the records after it
   * are worked on meanwhile, and their acks (sent in record order) wait at most this long for its
   * answer. Default 4000.
   */
  recordTimeoutMs?: number;
  /**
   * How often each pod netns is checked for the sandbox having been torn down (its pod addresses
   * gone with the CNI DEL): a node agent that never hands over the replacement sandbox, or never
   * sends the Del, would otherwise leave a proxy in a dead netns. Default 10000; 0: never.
   */
  sandboxCheckMs?: number;
  /**
   * How long the ZDS Adds must have been quiet (none arrived, none being worked on) before started
   * pods' certificate prefetches run: a gap between two Adds of a burst is not the burst's end.
   * Default 250.
   */
  prefetchQuietMs?: number;
  /**
   * The longest a started pod's certificate prefetch waits for the ZDS Adds to quiet down: a steady
   * stream of Adds delays the certificates by at most this, never starves them. Default 1000.
   */
  prefetchMaxDelayMs?: number;
}

// Kubernetes object names: a namespace is a DNS-1123 label, pod and service account names are
// DNS-1123 subdomains. The names become the pod's SPIFFE identity and HBONE headers.
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * Rejects an Add that passed the wire decoder but cannot be served correctly, naming the field and
 * the value seen (JSON-quoted, so control characters show).
 */
function checkAdd(ev: ZdsAddEvent): void {
  const bad = (field: string, value: string, want: string): ZtunnelError =>
    new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `AddWorkload uid=${JSON.stringify(ev.uid)}: ${field} ${JSON.stringify(value)} ${want}`);
  if (CONTROL.test(ev.uid) || ev.uid.length > 253) throw bad('uid', ev.uid, 'is not a pod uid (at most 253 printable characters)');
  const info = ev.workloadInfo;
  if (info === undefined) return;
  if (!DNS1123_SUBDOMAIN.test(info.name)) throw bad('workload_info.name', info.name, 'is not a Kubernetes pod name (DNS-1123 subdomain)');
  if (!DNS1123_LABEL.test(info.namespace)) throw bad('workload_info.namespace', info.namespace, 'is not a Kubernetes namespace name (DNS-1123 label)');
  if (info.serviceAccount !== '' && !DNS1123_SUBDOMAIN.test(info.serviceAccount)) {
    throw bad('workload_info.service_account', info.serviceAccount, 'is not a Kubernetes service account name (DNS-1123 subdomain, or empty for default)');
  }
}

const ignore = (): void => {};

const PREFETCH_QUIET_MS = 250;
const PREFETCH_MAX_DELAY_MS = 1000;

/** rtnetlink's global address scope (<linux/rtnetlink.h>). */
const RT_SCOPE_UNIVERSE = 0;

/**
 * Whether the netns holds a global-scope address (a pod IP): a pod sandbox does from its CNI ADD to
 * its CNI DEL; loopback and link-local ones do not count, nor do the fallback tunnel devices a
 * kernel may put in every netns. Undefined when netlink cannot tell (never a reason to drop a pod).
 */
function hasPodAddress(netns: Netns): boolean | undefined {
  try {
    return listAddresses(netns).some((a) => a.scope === RT_SCOPE_UNIVERSE);
  } catch {
    return undefined;
  }
}

/**
 * The ZDS handler: one InpodProxy per pod uid, state Pending|Up, retries every 5 s, snapshot
 * reconciliation, readiness. An Add is acked only once the pod's listeners are up (its certificate
 * may still be on its way: the proxy's mTLS connections wait for it). Records are handled side by
 * side (the ZDS session calls in record order without waiting for the previous call), so every
 * decision that depends on that order (the pod table, the snapshot's names) is taken synchronously
 * when a call begins, before its first await.
 */
export class InpodManager implements ZdsHandler {
  readonly #pods = new Map<string, PodEntry>();
  readonly #o: InpodManagerOptions;
  readonly #log: Logger;
  /** Proxies being drained (replaced or removed) and their netns handles not yet closed. */
  readonly #draining = new Set<Promise<void>>();
  /** Names seen on this connection before SnapshotSent; undefined once the snapshot is done. */
  #snapshotNames: Set<string> | undefined = new Set();
  #connected = false;
  #everSnapshot = false;
  /** False once closeListeners() ran (shutting down): nothing is started or bound any more. */
  #accepting = true;
  #closed = false;
  /** ztunnel's own netns: a pod's netns never is (an agent that found the wrong one hands it over). */
  readonly #ownNetns: NetnsId;

  /** Pods whose sandbox was found torn down, with that netns: a replayed Add of it is refused. */
  readonly #deadSandboxes = new Map<string, NetnsId>();
  readonly #sandboxCheck: NodeJS.Timeout | undefined;

  /** ZDS Adds not answered yet: certificate prefetches wait for none to be (#queuePrefetch). */
  #addsInFlight = 0;
  /** When the last ZDS Add arrived (performance.now()): prefetches wait prefetchQuietMs after it. */
  #lastAddAt = -Infinity;
  /** Started proxies' first certificate fetches not run yet, oldest first, with when each was queued. */
  readonly #prefetches: { fetch: () => void; at: number }[] = [];
  /** Wakes the scheduler when the Adds may have gone quiet or the oldest prefetch is due. */
  #prefetchWake: NodeJS.Timeout | undefined;
  #prefetchWakeAt = Infinity;
  /** The pump's next turn (#pumpPrefetches). */
  #prefetchTurn: NodeJS.Immediate | undefined;
  readonly #prefetchQuietMs: number;
  readonly #prefetchMaxDelayMs: number;

  constructor(o: InpodManagerOptions) {
    this.#o = o;
    this.#prefetchQuietMs = o.prefetchQuietMs ?? PREFETCH_QUIET_MS;
    this.#prefetchMaxDelayMs = o.prefetchMaxDelayMs ?? PREFETCH_MAX_DELAY_MS;
    this.#log = o.logger.child({ component: 'inpod' });
    const own = currentNetns();
    this.#ownNetns = own.id;
    own.close();
    const every = o.sandboxCheckMs ?? 10_000;
    if (every > 0) this.#sandboxCheck = setInterval(() => this.#checkSandboxes(), every).unref();
  }

  /**
   * Drains the proxies of pods whose netns lost every pod address since it was handed over: the
   * runtime tore the sandbox down (CNI DEL), so nothing can reach those listeners any more. A netns
   * that never had one, or that netlink cannot read, is left alone.
   */
  #checkSandboxes(): void {
    for (const entry of [...this.#pods.values()]) {
      if (!entry.networked || hasPodAddress(entry.ev.netns) !== false) continue;
      this.#log.info({ uid: entry.uid, netns: `${entry.ev.netns.id.dev}:${entry.ev.netns.id.ino}` }, 'pod netns has no pod address left (sandbox torn down), draining proxy');
      this.#deadSandboxes.set(entry.uid, entry.ev.netns.id);
      void this.#remove(entry, 0);
    }
  }

  /** Why the node is not ready (empty: ready). */
  pending(): string[] {
    const out: string[] = [];
    if (!this.#connected) out.push('node agent connection');
    else if (this.#snapshotNames !== undefined || !this.#everSnapshot) out.push('workload snapshot');
    for (const p of this.#pods.values()) if (p.state === 'Pending') out.push(`pod ${p.uid}`);
    return out;
  }

  onConnected(): void {
    this.#connected = true;
    // State is reconciled per connection: a new snapshot follows.
    this.#snapshotNames = new Set();
    this.#log.info({}, 'handling new stream');
  }

  onDisconnected(err?: Error): void {
    this.#connected = false;
    this.#log.warn({ err }, 'node agent connection lost');
  }

  onAdd(ev: ZdsAddEvent): Promise<void> {
    this.#addsInFlight++;
    this.#lastAddAt = performance.now();
    const answered = this.#bounded(this.#add(ev), (ms) => `pod ${ev.uid}: proxy not up within ${ms} ms (still starting; the node agent's retry is acked once it listens)`);
    void answered
      .finally(() => {
        if (--this.#addsInFlight === 0) this.#schedulePrefetches();
      })
      .catch(ignore);
    return answered;
  }

  /**
   * The proxies' prefetch scheduler. A pod's certificate (key generation, CSR, the CA's answer) costs
   * this process a share of an enrollment: in a burst of Adds it would take CPU from the next pods'
   * acks and from the node agent, whose CNI ADDs wait for them. So the fetches wait until the Adds
   * have been quiet for prefetchQuietMs (no Add arrived, none being worked on: a burst has gaps with
   * none in flight), at most prefetchMaxDelayMs; a connection that needs the certificate before then
   * starts it itself.
   */
  readonly #queuePrefetch = (fetch: () => void): void => {
    if (this.#closed) return;
    this.#prefetches.push({ fetch, at: performance.now() });
    this.#schedulePrefetches();
  };

  /** Runs the pump in the next turn when the oldest prefetch may run, else wakes up when it may. */
  #schedulePrefetches(): void {
    const oldest = this.#prefetches[0];
    if (oldest === undefined || this.#prefetchTurn !== undefined || this.#closed) return;
    const quietAt = this.#addsInFlight > 0 ? Infinity : this.#lastAddAt + this.#prefetchQuietMs;
    const at = Math.min(quietAt, oldest.at + this.#prefetchMaxDelayMs);
    const wait = at - performance.now();
    if (wait <= 0) {
      clearTimeout(this.#prefetchWake);
      this.#prefetchWake = undefined;
      this.#prefetchWakeAt = Infinity;
      // Not now: the ack of the Add just answered is sent in the microtasks after its answer.
      this.#prefetchTurn = setImmediate(() => this.#pumpPrefetches()).unref();
      return;
    }
    // An Add that arrives meanwhile moves the quiet point later: the wake-up looks again then.
    if (this.#prefetchWake !== undefined && this.#prefetchWakeAt <= at) return;
    clearTimeout(this.#prefetchWake);
    this.#prefetchWakeAt = at;
    this.#prefetchWake = setTimeout(() => {
      this.#prefetchWake = undefined;
      this.#prefetchWakeAt = Infinity;
      this.#schedulePrefetches();
    }, Math.ceil(wait)).unref();
  }

  /**
   * One fetch per event-loop turn, so Adds arriving meanwhile are read and worked on between them (a
   * deadline that came due in a burst does not start a second's worth of fetches in one go). Once
   * Adds come again only the overdue ones run; the rest wait for the next quiet or their deadline.
   */
  #pumpPrefetches(): void {
    this.#prefetchTurn = undefined;
    const next = this.#prefetches[0];
    if (next === undefined || this.#closed) return;
    const now = performance.now();
    const quiet = this.#addsInFlight === 0 && now - this.#lastAddAt >= this.#prefetchQuietMs;
    if (!quiet && now - next.at < this.#prefetchMaxDelayMs) return this.#schedulePrefetches();
    this.#prefetches.shift();
    next.fetch();
    this.#schedulePrefetches();
  }

  async #add(ev: ZdsAddEvent): Promise<void> {
    const { uid, netns } = ev;
    // Named for the snapshot whatever becomes of this Add: the agent says the pod exists.
    this.#snapshotNames?.add(uid);
    try {
      checkAdd(ev);
      if (netns.sameAs(this.#ownNetns)) {
        throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `AddWorkload uid=${uid}: the netns (${netns.id.dev}:${netns.id.ino}) is ztunnel's own network namespace, not the pod's`);
      }
      const dead = this.#deadSandboxes.get(uid);
      if (dead !== undefined && netns.sameAs(dead) && hasPodAddress(netns) !== true) {
        throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `AddWorkload uid=${uid}: its netns (${netns.id.dev}:${netns.id.ino}) is a torn-down sandbox (no pod address left); hand over the pod's current netns`);
      }
      const holder = [...this.#pods.values()].find((p) => p.uid !== uid && p.ev.netns.sameAs(netns));
      if (holder) {
        // Two proxies in one netns would share its ports (SO_REUSEPORT) under two identities.
        throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `AddWorkload uid=${uid}: its netns (${netns.id.dev}:${netns.id.ino}) is pod ${holder.uid}'s; a netns belongs to one pod (Del ${holder.uid} first)`);
      }
    } catch (err) {
      netns.close();
      this.#log.warn({ uid, err }, 'pod add rejected');
      throw err;
    }
    const existing = this.#pods.get(uid);
    if (existing && existing.ev.netns.sameAs(netns)) {
      // Same pod, same netns (a replayed snapshot, a retry): the duplicate fd is ours to close.
      netns.close();
      this.#log.debug({ uid }, 'pod already known with this netns');
      if (existing.state === 'Up') return;
      // Acked only once it listens: wait for the start in flight, or make this Add the next attempt.
      return this.#begin(existing);
    }
    this.#log.info(
      { uid, name: ev.workloadInfo?.name, namespace: ev.workloadInfo?.namespace },
      `pod WorkloadUid("${uid}") received netns, starting proxy`,
    );
    if (existing) {
      // The pod's sandbox was replaced: the old netns is dead. Its proxy stops listening at once and
      // drains beside the new one (another netns, no port clash), not in front of it.
      this.#log.info({ uid }, 'pod netns changed, draining old proxy');
      void this.#remove(existing, this.#o.replaceDeadlineMs ?? 0);
    }
    this.#deadSandboxes.delete(uid);
    const entry: PodEntry = { uid, ev, state: 'Pending', networked: hasPodAddress(netns) === true };
    this.#pods.set(uid, entry);
    this.#updateGauges();
    return this.#begin(entry);
  }

  /** Answers within recordTimeoutMs: what is not done by then is a nack (the work itself goes on). */
  async #bounded(work: Promise<void>, late: (ms: number) => string): Promise<void> {
    work.catch(ignore);
    const ms = this.#o.recordTimeoutMs ?? 4000;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((r) => (timer = setTimeout(() => r('expired'), ms)));
    try {
      if ((await Promise.race([work, expired])) === 'expired') throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', late(ms));
    } finally {
      clearTimeout(timer);
    }
  }

  /** The start in flight, or a new one now (an Add is the moment to retry a failed start). */
  #begin(entry: PodEntry): Promise<void> {
    if (entry.starting) return entry.starting;
    clearTimeout(entry.retry);
    const starting = this.#start(entry).finally(() => {
      if (entry.starting === starting) delete entry.starting;
    });
    starting.catch(ignore);
    entry.starting = starting;
    return starting;
  }

  #current(entry: PodEntry): boolean {
    return this.#pods.get(entry.uid) === entry && !this.#closed && this.#accepting;
  }

  async #start(entry: PodEntry): Promise<void> {
    if (!this.#current(entry)) throw new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `pod ${entry.uid}: ztunnel is shutting down, no proxy is started`);
    let proxy: InpodProxy | undefined;
    try {
      proxy = new InpodProxy({
        ...this.#o.proxy,
        uid: entry.uid,
        workloadInfo: entry.ev.workloadInfo,
        netns: entry.ev.netns,
        metrics: this.#o.metrics,
        logger: this.#o.logger.child({ component: 'proxy' }),
        prefetch: this.#queuePrefetch,
      });
      entry.proxy = proxy;
      await proxy.start();
    } catch (err) {
      if (entry.proxy === proxy) delete entry.proxy;
      // Removed or replaced meanwhile (its stop made the start give up): nothing to retry.
      if (!this.#current(entry)) throw err;
      entry.lastError = (err as Error).message;
      this.#log.error({ uid: entry.uid, err }, 'failed to start proxy, will retry');
      this.#scheduleRetry(entry);
      this.#updateGauges();
      throw err;
    }
    if (!this.#current(entry)) {
      // Removed between start()'s last step and here: the removal stopped it already.
      throw new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `pod ${entry.uid}: removed or replaced while its proxy started`);
    }
    entry.state = 'Up';
    delete entry.lastError;
    this.#o.metrics.proxiesStarted.inc();
    this.#updateGauges();
    this.#log.info({ uid: entry.uid, identity: proxy.identity }, 'proxy started');
  }

  #scheduleRetry(entry: PodEntry): void {
    clearTimeout(entry.retry);
    entry.retry = setTimeout(() => {
      if (!this.#current(entry)) return;
      this.#log.info({ uid: entry.uid }, 'retrying proxy start');
      void this.#begin(entry);
    }, this.#o.retryMs ?? 5000);
  }

  async onKeep(uid: string): Promise<void> {
    this.#snapshotNames?.add(uid);
    if (!this.#pods.has(uid)) this.#log.warn({ uid }, 'keep for a pod this ztunnel has no netns for');
  }

  onDel(uid: string): Promise<void> {
    this.#snapshotNames?.delete(uid);
    this.#deadSandboxes.delete(uid);
    const entry = this.#pods.get(uid);
    this.#log.info({ uid }, 'pod delete request, draining proxy');
    if (!entry) return Promise.resolve();
    return this.#bounded(this.#remove(entry, 0), (ms) => `pod ${uid}: proxy not drained within ${ms} ms (it no longer accepts; the drain goes on)`);
  }

  onSnapshotSent(): Promise<void> {
    this.#log.info({}, 'pod received snapshot sent');
    const keep = this.#snapshotNames ?? new Set<string>();
    this.#snapshotNames = undefined;
    this.#everSnapshot = true;
    for (const uid of this.#deadSandboxes.keys()) if (!keep.has(uid)) this.#deadSandboxes.delete(uid);
    const stale = [...this.#pods.values()].filter((p) => !keep.has(p.uid));
    for (const p of stale) this.#log.info({ uid: p.uid }, 'pod not in snapshot, draining proxy');
    const drained = Promise.all(stale.map((p) => this.#remove(p, 0))).then(ignore);
    return this.#bounded(drained, (ms) => `snapshot: proxies of pods not named were not drained within ${ms} ms (they no longer accept; the drain goes on)`);
  }

  /**
   * Forgets the pod at once (no new connections from here on), then stops its proxy, a start still
   * in flight included, and closes the netns only after that: the start may still be using it.
   */
  #remove(entry: PodEntry, deadlineMs: number): Promise<void> {
    clearTimeout(entry.retry);
    if (this.#pods.get(entry.uid) === entry) this.#pods.delete(entry.uid);
    this.#updateGauges();
    const { proxy, state } = entry;
    const done = (async () => {
      if (proxy) {
        await proxy.stop({ deadlineMs });
        if (state === 'Up') this.#o.metrics.proxiesStopped.inc();
      }
      entry.ev.netns.close();
    })();
    this.#draining.add(done);
    void done.finally(() => this.#draining.delete(done)).catch(ignore);
    return done;
  }

  #updateGauges(): void {
    let up = 0;
    let pending = 0;
    for (const p of this.#pods.values()) {
      if (p.state === 'Up') up++;
      else pending++;
    }
    this.#o.metrics.activeProxies.set(up);
    this.#o.metrics.pendingProxies.set(pending);
  }

  pods(): PodState[] {
    return [...this.#pods.values()].map((p) => ({
      uid: p.uid,
      state: p.state,
      name: p.ev.workloadInfo?.name,
      namespace: p.ev.workloadInfo?.namespace,
      netns: { dev: (p.ev.netns as Netns).id.dev, ino: p.ev.netns.id.ino },
      ...(p.lastError !== undefined ? { lastError: p.lastError } : {}),
      ...(p.proxy ? { proxy: p.proxy.state() } : {}),
    }));
  }

  /**
   * SIGTERM: every proxy stops accepting at once (a successor may already listen beside us), and no
   * proxy binds any more: starts in flight give up, no retry runs (the successor takes the snapshot).
   */
  closeListeners(): void {
    this.#accepting = false;
    for (const p of this.#pods.values()) {
      clearTimeout(p.retry);
      if (p.state === 'Up') p.proxy?.closeListeners();
      else void p.proxy?.stop({ deadlineMs: 0 });
    }
  }

  /** Drains every proxy (established connections until the deadline) and closes the netns handles. */
  async close(o: { deadlineMs: number }): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sandboxCheck);
    // Queued prefetches are dropped: their proxies are stopping.
    this.#prefetches.length = 0;
    clearTimeout(this.#prefetchWake);
    clearImmediate(this.#prefetchTurn);
    const all = [...this.#pods.values()];
    for (const p of all) clearTimeout(p.retry);
    await Promise.all(all.map((p) => this.#remove(p, o.deadlineMs)));
    await Promise.all([...this.#draining]);
  }
}
