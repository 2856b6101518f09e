import type { Netns } from '@weir/netns';
import type { ZdsAddEvent, ZdsHandler } from '@weir/redirect-protocol';
import { InpodProxy, type InpodProxyOptions, type InpodProxyState } from './inpod-proxy.js';
import type { Logger } from './logger.js';
import type { ZtunnelMetrics } from './metrics.js';

/** Everything an InpodProxy needs except what ZDS gives per pod. */
export type ProxyFactoryOptions = Omit<InpodProxyOptions, 'uid' | 'workloadInfo' | 'netns' | 'logger' | 'metrics'>;

interface PodEntry {
  uid: string;
  ev: ZdsAddEvent;
  state: 'Pending' | 'Up';
  proxy?: InpodProxy;
  retry?: NodeJS.Timeout;
  lastError?: string;
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
}

/**
 * The ZDS handler: one InpodProxy per pod uid, state Pending|Up, retries every 5 s, snapshot
 * reconciliation, readiness.
 */
export class InpodManager implements ZdsHandler {
  readonly #pods = new Map<string, PodEntry>();
  readonly #o: InpodManagerOptions;
  readonly #log: Logger;
  /** Names seen on this connection before SnapshotSent; undefined once the snapshot is done. */
  #snapshotNames: Set<string> | undefined = new Set();
  #connected = false;
  #everSnapshot = false;
  #closed = false;

  constructor(o: InpodManagerOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: 'inpod' });
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

  async onAdd(ev: ZdsAddEvent): Promise<void> {
    const { uid, netns } = ev;
    this.#snapshotNames?.add(uid);
    const existing = this.#pods.get(uid);
    if (existing && existing.ev.netns.sameAs(netns)) {
      // Same pod, same netns (a replayed snapshot): keep what runs; the duplicate fd is ours to close.
      netns.close();
      this.#log.debug({ uid }, 'pod already known with this netns');
      if (existing.state === 'Up') return;
      if (existing.lastError !== undefined) throw new Error(existing.lastError);
      return;
    }
    this.#log.info(
      { uid, name: ev.workloadInfo?.name, namespace: ev.workloadInfo?.namespace },
      `pod WorkloadUid("${uid}") received netns, starting proxy`,
    );
    if (existing) {
      this.#log.info({ uid }, 'pod netns changed, draining old proxy');
      await this.#remove(existing, this.#o.replaceDeadlineMs ?? 0);
    }
    const entry: PodEntry = { uid, ev, state: 'Pending' };
    this.#pods.set(uid, entry);
    this.#updateGauges();
    await this.#start(entry, true);
  }

  async #start(entry: PodEntry, rethrow: boolean): Promise<void> {
    let proxy: InpodProxy | undefined;
    try {
      proxy = new InpodProxy({
        ...this.#o.proxy,
        uid: entry.uid,
        workloadInfo: entry.ev.workloadInfo,
        netns: entry.ev.netns,
        metrics: this.#o.metrics,
        logger: this.#o.logger.child({ component: 'proxy' }),
      });
      await proxy.start();
    } catch (err) {
      entry.lastError = (err as Error).message;
      this.#log.error({ uid: entry.uid, err }, 'failed to start proxy, will retry');
      this.#scheduleRetry(entry);
      this.#updateGauges();
      if (rethrow) throw err;
      return;
    }
    if (this.#pods.get(entry.uid) !== entry || this.#closed) {
      // Deleted or replaced while starting.
      await proxy.stop({ deadlineMs: 0 });
      return;
    }
    entry.proxy = proxy;
    entry.state = 'Up';
    delete entry.lastError;
    this.#o.metrics.proxiesStarted.inc();
    this.#updateGauges();
    this.#log.info({ uid: entry.uid, identity: proxy.identity }, 'proxy started');
  }

  #scheduleRetry(entry: PodEntry): void {
    clearTimeout(entry.retry);
    entry.retry = setTimeout(() => {
      if (this.#pods.get(entry.uid) !== entry || this.#closed) return;
      this.#log.info({ uid: entry.uid }, 'retrying proxy start');
      void this.#start(entry, false);
    }, this.#o.retryMs ?? 5000);
  }

  async onKeep(uid: string): Promise<void> {
    this.#snapshotNames?.add(uid);
    if (!this.#pods.has(uid)) this.#log.warn({ uid }, 'keep for a pod this ztunnel has no netns for');
  }

  async onDel(uid: string): Promise<void> {
    this.#snapshotNames?.delete(uid);
    const entry = this.#pods.get(uid);
    this.#log.info({ uid }, 'pod delete request, draining proxy');
    if (!entry) return;
    await this.#remove(entry, 0);
  }

  async onSnapshotSent(): Promise<void> {
    this.#log.info({}, 'pod received snapshot sent');
    const keep = this.#snapshotNames ?? new Set<string>();
    this.#snapshotNames = undefined;
    this.#everSnapshot = true;
    const stale = [...this.#pods.values()].filter((p) => !keep.has(p.uid));
    for (const p of stale) this.#log.info({ uid: p.uid }, 'pod not in snapshot, draining proxy');
    await Promise.all(stale.map((p) => this.#remove(p, 0)));
  }

  async #remove(entry: PodEntry, deadlineMs: number): Promise<void> {
    clearTimeout(entry.retry);
    if (this.#pods.get(entry.uid) === entry) this.#pods.delete(entry.uid);
    this.#updateGauges();
    if (entry.proxy) {
      await entry.proxy.stop({ deadlineMs });
      this.#o.metrics.proxiesStopped.inc();
    }
    entry.ev.netns.close();
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

  /** SIGTERM: every proxy stops accepting at once (a successor may already listen beside us). */
  closeListeners(): void {
    for (const p of this.#pods.values()) p.proxy?.closeListeners();
  }

  /** Drains every proxy (established connections until the deadline) and closes the netns handles. */
  async close(o: { deadlineMs: number }): Promise<void> {
    this.#closed = true;
    const all = [...this.#pods.values()];
    for (const p of all) clearTimeout(p.retry);
    await Promise.all(all.map((p) => this.#remove(p, o.deadlineMs)));
  }
}
