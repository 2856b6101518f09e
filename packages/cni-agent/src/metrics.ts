import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** How long one collection of the process metrics is served again. */
const PROCESS_METRICS_TTL_MS = 1000;
/**
 * Sampling interval of `nodejs_eventloop_lag_*` (prom-client's default is 10 ms: a timer waking the
 * agent 100 times a second, ~10 ms of CPU per second on an idle 2-core node; at 100 ms, ~3).
 */
const EVENT_LOOP_SAMPLE_MS = 100;

/**
 * The agent's registry: its own metrics, always current, followed by the process metrics, collected
 * at most once per PROCESS_METRICS_TTL_MS. Collecting those costs milliseconds of the agent's one
 * thread (`process_open_fds` lists /proc/self/fd, which holds an fd per captured pod's netns), and
 * whoever scrapes often (a readiness poller, several Prometheus replicas) would otherwise take that
 * from captures. Only `metrics()` (what /metrics serves) includes them.
 */
class AgentRegistry extends Registry {
  #process: Registry | undefined;
  #cached: { at: number; text: Promise<string> } | undefined;

  /** Adds Node's default process metrics (prom-client's `collectDefaultMetrics`). */
  collectProcessMetrics(): void {
    this.#process ??= new Registry();
    collectDefaultMetrics({ register: this.#process, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }

  override async metrics(): Promise<string> {
    const own = await super.metrics();
    const proc = this.#process;
    if (!proc) return own;
    const now = performance.now();
    if (!this.#cached || now - this.#cached.at >= PROCESS_METRICS_TTL_MS) {
      const text = proc.metrics();
      const entry = { at: now, text };
      this.#cached = entry;
      text.catch(() => {
        if (this.#cached === entry) this.#cached = undefined;
      });
    }
    // Metrics are separated by a blank line (Registry.metrics); `own` ends with one newline.
    return `${own}\n${await this.#cached.text}`;
  }
}

/** The agent's Prometheus metrics, in their own registry. */
export class AgentMetrics {
  readonly #registry = new AgentRegistry();
  readonly registry: Registry = this.#registry;
  readonly podsEnrolled = new Gauge({
    name: 'weir_cni_agent_pods_enrolled',
    help: 'Pods on this node currently captured and handed to ztunnel',
    registers: [this.registry],
  });
  readonly podsPending = new Gauge({
    name: 'weir_cni_agent_pods_pending',
    help: 'Enrolled pods not yet fully captured (retrying)',
    registers: [this.registry],
  });
  readonly enrollmentLatency = new Histogram({
    name: 'weir_cni_agent_enrollment_duration_seconds',
    help: 'Time from enrollment request (cmdadd received, or label change seen) to fully captured',
    labelNames: ['trigger'] as const,
    // Finer around a quarter second: a p99 or an alert at 250 ms needs bucket bounds close on both sides.
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly failures = new Counter({
    name: 'weir_cni_agent_enrollment_failures_total',
    help: 'Failed capture or release attempts, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly repairs = new Counter({
    name: 'weir_cni_agent_reconcile_repairs_total',
    help: 'Rule sets found drifted and repaired (on restart or by the periodic drift check)',
    registers: [this.registry],
  });
  readonly podsCaptureBypassable = new Gauge({
    name: 'weir_cni_agent_pods_capture_bypassable',
    help: 'Captured pods with a container that can set SO_MARK (NET_RAW, NET_ADMIN or privileged) and so bypass ztunnel',
    registers: [this.registry],
  });
  readonly cmdAdds = new Counter({
    name: 'weir_cni_agent_cmdadd_total',
    help: 'CNI plugin /cmdadd events answered, by HTTP status',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics ?? true) this.#registry.collectProcessMetrics();
  }
}
