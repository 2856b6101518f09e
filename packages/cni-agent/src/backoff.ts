/** Exponential retry delay: initial, doubling, capped. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
}

/**
 * Bounds how many captures (or API writes) run at once. An urgent job waits only for other urgent
 * ones, except a job that has waited `starveMs` already: it goes next, so a steady stream of urgent
 * work (annotation retries on a busy node) delays the rest but never starves it.
 */
export class Semaphore {
  private active = 0;
  private readonly waiting: { resolve: () => void; at: number }[] = [];
  private readonly urgent: (() => void)[] = [];

  constructor(
    private readonly limit: number,
    private readonly starveMs = 5000,
  ) {}

  /** Nothing running and nothing waiting. */
  get idle(): boolean {
    return this.active === 0 && this.waiting.length === 0 && this.urgent.length === 0;
  }

  /** Runs `fn` once a slot is free; with `urgent`, ahead of every job that is not (up to starveMs). */
  async run<T>(fn: () => Promise<T>, urgent = false): Promise<T> {
    if (this.active >= this.limit) {
      await new Promise<void>((resolve) => (urgent ? this.urgent.push(resolve) : this.waiting.push({ resolve, at: Date.now() })));
    }
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.next()?.();
    }
  }

  private next(): (() => void) | undefined {
    const oldest = this.waiting[0];
    if (oldest !== undefined && (this.urgent.length === 0 || Date.now() - oldest.at >= this.starveMs)) {
      this.waiting.shift();
      return oldest.resolve;
    }
    return this.urgent.shift();
  }
}
