/** Exponential retry delay: initial, doubling, capped. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number): number {
  return Math.min(maxMs, initialMs * 2 ** Math.max(0, attempt - 1));
}

/** Bounds how many captures (or API writes) run at once; an urgent job waits only for other urgent ones. */
export class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly urgent: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  /** Nothing running and nothing waiting. */
  get idle(): boolean {
    return this.active === 0 && this.waiting.length === 0 && this.urgent.length === 0;
  }

  /** Runs `fn` once a slot is free; with `urgent`, ahead of every job that is not. */
  async run<T>(fn: () => Promise<T>, urgent = false): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => (urgent ? this.urgent : this.waiting).push(resolve));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      (this.urgent.shift() ?? this.waiting.shift())?.();
    }
  }
}
