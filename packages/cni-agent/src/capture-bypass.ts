import { CniAgentError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import type { AgentMetrics } from './metrics.js';
import type { ContainerSecurity, PodInfo } from './pod.js';
import type { PodSource } from './pod-source.js';

/**
 * The in-pod rules (the seed's, Istio's) let packets carrying ztunnel's mark (0x539, 0x111) pass
 * uncaptured. Since Linux 5.17 `setsockopt(SO_MARK)` needs only CAP_NET_RAW or CAP_NET_ADMIN, so a
 * container holding either can mark its own sockets and connect around ztunnel; with NET_ADMIN
 * (or privileged) it can also rewrite the rules. This module says which containers of a pod can.
 */

/** What the agent does about such pods: nothing, log + Event + metric, or refuse their CNI ADD. */
export type CaptureBypassMode = 'off' | 'warn' | 'enforce';

/** The capability sets containers get when the pod spec neither adds nor drops any. */
export const RUNTIME_DEFAULT_CAPABILITIES = {
  // containerd's (and Docker's) default set: NET_RAW included.
  containerd: ['CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'MKNOD', 'NET_RAW', 'SETGID', 'SETUID', 'SETFCAP', 'SETPCAP', 'NET_BIND_SERVICE', 'SYS_CHROOT', 'KILL', 'AUDIT_WRITE'],
  // CRI-O's default_capabilities since 1.18: no NET_RAW.
  'cri-o': ['CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'SETGID', 'SETUID', 'SETPCAP', 'NET_BIND_SERVICE', 'KILL'],
} as const satisfies Record<string, readonly string[]>;

export interface CaptureBypassOptions {
  /** The container runtime's default capabilities (any case, `CAP_` optional). Default: containerd's. */
  runtimeDefaultCapabilities?: readonly string[];
}

/** The capabilities that let a process set SO_MARK; NET_ADMIN also lets it rewrite the rules. */
export type BypassCapability = 'NET_ADMIN' | 'NET_RAW';

/** A container that can set SO_MARK (and so skip capture), and why. */
export interface BypassContainer {
  name: string;
  kind: ContainerSecurity['kind'];
  capabilities: BypassCapability[];
  /** `privileged`, `adds ALL`, `adds NET_ADMIN`, `keeps NET_RAW (runtime default)`, … */
  reasons: string[];
  /** NET_ADMIN or privileged: it can also rewrite the in-pod rules. */
  canRewriteRules: boolean;
  /** What to change in its securityContext so that it cannot. */
  fix: string;
}

const BYPASS_CAPS: readonly BypassCapability[] = ['NET_ADMIN', 'NET_RAW'];

/** `cap_net_raw`, `NET_RAW`, ` Net_Raw ` → `NET_RAW`. */
export function normalizeCapability(name: string): string {
  const upper = name.trim().toUpperCase();
  return upper.startsWith('CAP_') ? upper.slice(4) : upper;
}

/**
 * Which of `containers` can set SO_MARK, applying add/drop the way containerd and CRI-O do:
 * privileged gets everything (add/drop ignored); otherwise start from the runtime default,
 * `add: [ALL]` gives everything, `drop: [ALL]` removes everything, then the named adds, then the
 * named drops (a capability both added and dropped is dropped).
 */
export function captureBypassOf(containers: readonly ContainerSecurity[], opts: CaptureBypassOptions = {}): BypassContainer[] {
  const defaults = new Set((opts.runtimeDefaultCapabilities ?? RUNTIME_DEFAULT_CAPABILITIES.containerd).map(normalizeCapability));
  const out: BypassContainer[] = [];
  for (const c of containers) {
    if (c.privileged) {
      out.push({ name: c.name, kind: c.kind, capabilities: [...BYPASS_CAPS], reasons: ['privileged'], canRewriteRules: true, fix: 'securityContext.privileged: false' });
      continue;
    }
    const add = new Set(c.add.map(normalizeCapability));
    const drop = new Set(c.drop.map(normalizeCapability));
    const held: BypassCapability[] = [];
    const reasons: string[] = [];
    const fixes: string[] = [];
    const keptByDefault: BypassCapability[] = [];
    for (const cap of BYPASS_CAPS) {
      if (drop.has(cap)) continue;
      let why: string | undefined;
      if (add.has(cap)) why = `adds ${cap}`;
      else if (add.has('ALL') && !drop.has('ALL')) why = 'adds ALL';
      else if (defaults.has(cap) && !drop.has('ALL')) why = `keeps ${cap} (runtime default)`;
      if (why === undefined) continue;
      held.push(cap);
      if (!reasons.includes(why)) reasons.push(why);
      if (why === 'adds ALL') {
        if (!fixes.includes('remove ALL from securityContext.capabilities.add')) fixes.push('remove ALL from securityContext.capabilities.add');
      } else if (why.startsWith('adds ')) fixes.push(`remove ${cap} from securityContext.capabilities.add`);
      else keptByDefault.push(cap);
    }
    if (held.length === 0) continue;
    if (keptByDefault.length > 0) fixes.push(`securityContext.capabilities.drop: [${keptByDefault.map((k) => `"${k}"`).join(', ')}]`);
    out.push({ name: c.name, kind: c.kind, capabilities: held, reasons, canRewriteRules: held.includes('NET_ADMIN'), fix: fixes.join(' and ') });
  }
  return out;
}

/** One line per pod: each container, its reasons and its fix (shortened past a few containers). */
export function describeCaptureBypass(found: readonly BypassContainer[], max = 3): string {
  const parts = found.slice(0, max).map((b) => {
    const what = b.canRewriteRules ? 'set SO_MARK to skip ztunnel and rewrite the in-pod rules' : 'set SO_MARK to skip ztunnel';
    return `${b.kind} "${b.name}" ${b.reasons.join(', ')}, so it can ${what}; fix: ${b.fix}`;
  });
  if (found.length > max) parts.push(`and ${found.length - max} more`);
  return parts.join('; ');
}

export interface CaptureBypassGuardOptions extends CaptureBypassOptions {
  mode: CaptureBypassMode;
  /** Where the Warning Events go (the pod source). */
  source: Pick<PodSource, 'recordEvent'>;
  metrics: AgentMetrics;
  logger?: Logger;
  /**
   * Runs what only reports a captured pod that can bypass (its warning line and Event); default at
   * once. The agent runs it once no capture runs (PodController.report): in a burst of such pods
   * (most, in `warn` mode) the line alone cost ~0.2 ms of the agent's thread per pod.
   */
  report?: (work: () => Promise<void>) => void;
}

/** The Event reason on a pod that can skip capture (captured anyway, or refused). */
export const CAPTURE_BYPASS_EVENT_REASON = 'AmbientCaptureBypassable';

const SAFE_HINT = 'PodSecurity "restricted" drops ALL';

/** Refused pods remembered for Event dedup; a refused pod never reaches released(). */
const MAX_REFUSED = 4096;

/**
 * Applies the capture-bypass policy: `admit` on a CNI ADD (throws in enforce mode), `captured` each
 * time a pod is (still) captured, `released` when it leaves. Warns once per pod and per change of
 * what it can do, and keeps the `weir_cni_agent_pods_capture_bypassable` gauge.
 */
export class CaptureBypassGuard {
  private readonly log: Logger;
  /** Captured pods that can bypass → what was reported for them. */
  private readonly flagged = new Map<string, string>();
  private readonly refused = new Map<string, string>();

  constructor(private readonly opts: CaptureBypassGuardOptions) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'capture-bypass' });
  }

  get mode(): CaptureBypassMode {
    return this.opts.mode;
  }

  check(pod: PodInfo): BypassContainer[] {
    return captureBypassOf(pod.containers ?? [], this.opts);
  }

  /** A CNI ADD for an enrolled pod: in enforce mode, refuses one that can bypass (ERR_AGENT_CAPTURE_BYPASS). */
  admit(pod: PodInfo): void {
    if (this.opts.mode !== 'enforce') return;
    const found = this.check(pod);
    if (found.length === 0) return;
    const why = describeCaptureBypass(found);
    const key = JSON.stringify(found);
    if (this.refused.get(pod.uid) !== key) {
      this.refused.delete(pod.uid);
      this.refused.set(pod.uid, key);
      if (this.refused.size > MAX_REFUSED) this.refused.delete(this.refused.keys().next().value as string);
      this.log.warn({ pod: `${pod.namespace}/${pod.name}`, uid: pod.uid, mode: 'enforce', containers: found }, 'cmdadd refused: pod can bypass ztunnel capture');
      this.report(() => this.opts.source.recordEvent(pod, { type: 'Warning', reason: CAPTURE_BYPASS_EVENT_REASON, message: `not started: ${why} (${SAFE_HINT})` }));
    }
    throw new CniAgentError(
      'ERR_AGENT_CAPTURE_BYPASS',
      `pod ${pod.namespace}/${pod.name} refused (capture-bypass enforce): ${why} (${SAFE_HINT})`,
    );
  }

  /** The pod is captured (or changed while captured): warns when it can bypass and that is news. */
  captured(pod: PodInfo): void {
    if (this.opts.mode === 'off') return;
    const found = this.check(pod);
    if (found.length === 0) {
      if (this.flagged.delete(pod.uid)) this.opts.metrics.podsCaptureBypassable.set(this.flagged.size);
      return;
    }
    const key = JSON.stringify(found);
    if (this.flagged.get(pod.uid) === key) return;
    this.flagged.set(pod.uid, key);
    this.opts.metrics.podsCaptureBypassable.set(this.flagged.size);
    const mode = this.opts.mode;
    this.report(async () => {
      // Released, or flagged again for other reasons (reported by its own turn), meanwhile: nothing to say.
      if (this.flagged.get(pod.uid) !== key) return;
      this.log.warn({ pod: `${pod.namespace}/${pod.name}`, uid: pod.uid, mode, containers: found }, 'captured pod can bypass ztunnel capture');
      await this.opts.source.recordEvent(pod, { type: 'Warning', reason: CAPTURE_BYPASS_EVENT_REASON, message: `captured, but ${describeCaptureBypass(found)} (${SAFE_HINT})` });
    });
  }

  private report(work: () => Promise<void>): void {
    if (this.opts.report) this.opts.report(work);
    else void work();
  }

  /** The pod left the mesh or was deleted. */
  released(uid: string): void {
    this.refused.delete(uid);
    if (this.flagged.delete(uid)) this.opts.metrics.podsCaptureBypassable.set(this.flagged.size);
  }
}
