import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { CaptureBypassGuard, type CaptureBypassOptions, type CaptureBypassMode } from './capture-bypass.js';
import { PodController, type PodStatus } from './controller.js';
import { CniAgentError } from './errors.js';
import { CniEventServer, type CmdAddEvent, type CmdAddOutcome } from './event-server.js';
import { HealthServer } from './health-server.js';
import { silentLogger, type Logger } from './logger.js';
import type { CaptureConfig } from './capture-rules.js';
import { AgentMetrics } from './metrics.js';
import { NetnsHints } from './netns-hints.js';
import type { PodSource } from './pod-source.js';
import type { EnrollmentRule, NetnsHoldsIp, OpenNetns, PodRules, WorkloadHandoff } from './ports.js';

/** ztunnel's side of ZDS as the agent drives it (the shape of @weir/redirect-protocol's ZdsServer). */
export interface ZtunnelServer extends WorkloadHandoff {
  start(): Promise<void>;
  close(): Promise<void>;
  on(event: 'connection' | 'disconnect' | 'snapshotAcked', listener: () => void): unknown;
  /** ztunnel nacked a workload it got in a snapshot (a direct Add rejects instead). */
  on(event: 'nack', listener: (uid: string | undefined, reason: string) => void): unknown;
}

export interface NodeAgentOptions {
  nodeName: string;
  /** Holds `pluginevent.sock` and the agent's netns hints; default `/var/run/istio-cni`. */
  runDir?: string;
  source: PodSource;
  rules: PodRules;
  ztunnel: ZtunnelServer;
  openNetns: OpenNetns;
  /** Whether a netns holds one of a pod's IPs: a pods-file path or a hint is used only then. */
  netnsHoldsIp: NetnsHoldsIp;
  /** The enrollment rule shared with the CNI plugin (`isAmbientEnrolled`). */
  enrolled: EnrollmentRule;
  /** Validates a `/cmdadd` body (the plugin's `cmdAddEventSchema`); throws for a bad one. */
  parseCmdAdd: (body: unknown) => CmdAddEvent;
  /** `/readyz`, `/metrics` and `/debug/config` listener; `false` for none. Default `0.0.0.0:8000`. */
  health?: { host: string; port: number } | false;
  /** The capture options `rules` applies, resolved (`IptablesPodRules.captureConfig`): `/debug/config`'s `capture`. */
  captureConfig?: () => CaptureConfig;
  /** Periodic drift check; 0 disables. Default 30 s. */
  driftIntervalMs?: number;
  /** A `/cmdadd` answers 500 if the pod is not captured by then (the plugin waits 5 s). */
  cmdAddTimeoutMs?: number;
  retryInitialMs?: number;
  retryMaxMs?: number;
  concurrency?: number;
  logger?: Logger;
  metrics?: AgentMetrics;
  procRoot?: string;
  /** Pods whose containers can set SO_MARK and so skip capture: `warn` (default), `enforce` (refuse their CNI ADD) or `off`. */
  captureBypass?: CaptureBypassOptions & { mode: CaptureBypassMode };
}

function ipsOfEvent(ips: unknown[]): string[] {
  const out: string[] = [];
  for (const entry of ips) {
    let ip: unknown = entry;
    if (entry && typeof entry === 'object') {
      const addr = (entry as { Address?: unknown; address?: unknown }).Address ?? (entry as { address?: unknown }).address;
      ip = addr && typeof addr === 'object' ? (addr as { IP?: unknown }).IP : addr;
    }
    if (typeof ip === 'string' && ip.length > 0) out.push(ip.split('/')[0] as string);
  }
  return out;
}

/**
 * The node agent: learns the pods on this node, keeps every enrolled pod captured (rules in its
 * netns, handed to ztunnel, annotated), answers the CNI plugin, and repairs drift.
 */
export class NodeAgent {
  readonly metrics: AgentMetrics;
  private readonly log: Logger;
  private readonly controller: PodController;
  private readonly bypass: CaptureBypassGuard;
  private readonly events: CniEventServer;
  private readonly health: HealthServer | undefined;
  private readonly hints: NetnsHints;
  private readonly runDir: string;
  private phase: 'new' | 'starting' | 'ready' | 'stopping' = 'new';
  private driftTimer: NodeJS.Timeout | undefined;
  private drifting = false;
  private healthAddress: AddressInfo | undefined;

  constructor(private readonly opts: NodeAgentOptions) {
    this.log = (opts.logger ?? silentLogger).child({ node: opts.nodeName });
    this.metrics = opts.metrics ?? new AgentMetrics();
    this.runDir = opts.runDir ?? '/var/run/istio-cni';
    this.hints = new NetnsHints(join(this.runDir, 'pod-netns.json'));
    let hostInodes: number[] = [];
    try {
      hostInodes = [statSync(`${opts.procRoot ?? '/proc'}/self/ns/net`).ino];
    } catch {
      // No /proc: the scan finds nothing either.
    }
    // Its warnings and Events are reports: made when the captures leave the agent's CPU to them (PodController.report).
    this.bypass = new CaptureBypassGuard({
      mode: 'warn',
      ...opts.captureBypass,
      source: opts.source,
      report: (work) => this.controller.report(work),
      metrics: this.metrics,
      logger: opts.logger ?? silentLogger,
    });
    this.controller = new PodController({
      bypass: this.bypass,
      source: opts.source,
      rules: opts.rules,
      ztunnel: opts.ztunnel,
      openNetns: opts.openNetns,
      netnsHoldsIp: opts.netnsHoldsIp,
      enrolled: opts.enrolled,
      metrics: this.metrics,
      logger: opts.logger ?? silentLogger,
      hints: this.hints,
      hostNetnsInodes: hostInodes,
      ...(opts.procRoot !== undefined ? { procRoot: opts.procRoot } : {}),
      ...(opts.retryInitialMs !== undefined ? { retryInitialMs: opts.retryInitialMs } : {}),
      ...(opts.retryMaxMs !== undefined ? { retryMaxMs: opts.retryMaxMs } : {}),
      ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
    });
    this.events = new CniEventServer({
      socketPath: join(this.runDir, 'pluginevent.sock'),
      parse: opts.parseCmdAdd,
      onCmdAdd: (ev, at) => this.onCmdAdd(ev, at),
      logger: opts.logger ?? silentLogger,
    });
    this.health =
      opts.health === false
        ? undefined
        : new HealthServer({
            ...(opts.health ?? { host: '0.0.0.0', port: 8000 }),
            registry: this.metrics.registry,
            notReadyReason: () => (this.phase === 'ready' ? undefined : this.phase),
            config: () => this.config(),
          });
  }

  /**
   * istio-cni's order: host probe ipset and SNAT, sync the pod source, reconcile every enrolled or annotated pod (find its
   * netns, repair its rules, register it for ztunnel's snapshot), then accept ztunnel, then serve
   * the plugin and report ready.
   */
  async start(): Promise<void> {
    if (this.phase !== 'new') throw new CniAgentError('ERR_AGENT_STOPPED', `agent already ${this.phase}`);
    this.phase = 'starting';
    if (this.health) this.healthAddress = await this.health.start();
    this.log.info({ runDir: this.runDir }, 'node agent starting');
    await this.hints.load();
    // Host side first: captures start as soon as the source delivers pods, and need the ipset.
    await this.opts.rules.setupHost();
    await this.opts.source.start({
      podChanged: (pod) => this.controller.podChanged(pod, this.phase === 'starting' ? 'startup' : 'watch'),
      podDeleted: (pod) => this.controller.podDeleted(pod),
      namespaceChanged: (ns) => this.controller.namespaceChanged(ns),
    });
    await this.controller.settled();
    const stale = await this.opts.rules.syncHostProbes(this.controller.enrolledUids());
    if (stale.length) this.log.info({ entries: stale }, 'removed probe ipset entries of pods no longer enrolled');
    this.log.info({ pods: this.controller.status().length }, 'state rebuilt from the pod source, starting ztunnel server');
    this.opts.ztunnel.on('snapshotAcked', () => this.controller.retryPending());
    this.opts.ztunnel.on('nack', (uid, reason) => {
      if (uid !== undefined) this.controller.nacked(uid, reason);
    });
    this.opts.ztunnel.on('connection', () => this.log.info({}, 'ztunnel connected'));
    this.opts.ztunnel.on('disconnect', () => this.log.warn({}, 'ztunnel disconnected'));
    await this.opts.ztunnel.start();
    await this.events.start();
    const every = this.opts.driftIntervalMs ?? 30_000;
    if (every > 0) {
      this.driftTimer = setInterval(() => void this.checkDrift(), every);
      this.driftTimer.unref();
    }
    this.phase = 'ready';
    this.log.info({}, 'node agent ready');
  }

  /** Runs one drift check now (the timer runs it periodically); resolves with repairs made. */
  async checkDrift(): Promise<number> {
    if (this.drifting || this.phase !== 'ready') return 0;
    this.drifting = true;
    try {
      return await this.controller.checkDrift();
    } finally {
      this.drifting = false;
    }
  }

  /**
   * Every pod on the node arrives here (the plugin asks before deciding anything itself), so a pod
   * that is not enrolled is answered right after the lookup, never queued behind captures. A pod
   * not yet in the source's cache is fetched from the source; not found or a failed lookup → 500.
   */
  private async onCmdAdd(ev: CmdAddEvent, receivedAt: bigint): Promise<CmdAddOutcome> {
    const pod = `${ev.PodNamespace}/${ev.PodName}`;
    try {
      const [info, ns] = await Promise.all([this.opts.source.fetchPod(ev.PodNamespace, ev.PodName, ev.PodUID), this.opts.source.fetchNamespace(ev.PodNamespace)]);
      if (!info) throw new CniAgentError('ERR_AGENT_POD_NOT_FOUND', `pod ${pod} not found in the pod source`);
      // Judging the ADD by another pod of the same name (a StatefulSet pod recreated) could start it uncaptured.
      if (ev.PodUID !== undefined && info.uid !== ev.PodUID) {
        throw new CniAgentError('ERR_AGENT_POD_NOT_FOUND', `pod ${pod} uid ${ev.PodUID} (the CNI ADD's K8S_POD_UID) not found: the pod source has uid ${info.uid} under that name; not captured`);
      }
      if (!ns) throw new CniAgentError('ERR_AGENT_NAMESPACE_NOT_FOUND', `namespace ${ev.PodNamespace} of pod ${pod} not found in the pod source`);
      if (!this.opts.enrolled(info, ns)) {
        this.log.info({ pod, uid: info.uid }, 'cmdadd for a pod that is not enrolled, nothing to capture');
        this.metrics.cmdAdds.inc({ code: '200' });
        return 'not-enrolled';
      }
      this.bypass.admit(info);
      // One info line per captured pod is the controller's `pod captured`; this one only at debug.
      this.log.debug({ pod, uid: info.uid, netns: ev.Netns }, 'cmdadd received, capturing pod');
      await this.controller.cmdAdd(info, ev.Netns, ipsOfEvent(ev.IPs), receivedAt, this.opts.cmdAddTimeoutMs ?? 4500);
      this.metrics.cmdAdds.inc({ code: '200' });
      return 'captured';
    } catch (err) {
      this.metrics.cmdAdds.inc({ code: '500' });
      throw err;
    }
  }

  /** Readiness and metrics listener address (when enabled). */
  get healthAddr(): AddressInfo | undefined {
    return this.healthAddress;
  }

  /** What `/debug/config` serves: the node and the capture options (null when `rules` cannot tell). */
  config(): { node: string; runDir: string; capture: CaptureConfig | null } {
    return { node: this.opts.nodeName, runDir: this.runDir, capture: this.opts.captureConfig?.() ?? null };
  }

  get ready(): boolean {
    return this.phase === 'ready';
  }

  pods(): PodStatus[] {
    return this.controller.status();
  }

  /**
   * Stops serving. Rules, ipset entries and the plugin stay as they are: a restarted agent picks
   * them up, and meanwhile pods stay captured and new ones stall rather than start uncaptured.
   */
  async stop(): Promise<void> {
    if (this.phase === 'stopping') return;
    this.phase = 'stopping';
    clearInterval(this.driftTimer);
    await this.events.close();
    await this.opts.source.stop();
    await this.controller.stop();
    await this.opts.ztunnel.close();
    this.opts.rules.close?.();
    await this.health?.close();
    this.log.info({}, 'node agent stopped');
  }
}
