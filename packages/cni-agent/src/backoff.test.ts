import { describe, expect, it } from 'vitest';
import { backoffDelay, Semaphore } from './backoff.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('backoffDelay', () => {
  it('doubles from the initial delay up to the cap', () => {
    expect([1, 2, 3, 4, 10].map((n) => backoffDelay(n, 200, 1000))).toEqual([200, 400, 800, 1000, 1000]);
  });
});

describe('Semaphore', () => {
  it('runs at most `limit` jobs; urgent ones go ahead of waiting ones', async () => {
    const sem = new Semaphore(1);
    const order: string[] = [];
    let release!: () => void;
    const first = sem.run(() => new Promise<void>((r) => (release = r)));
    const normal = sem.run(async () => void order.push('normal'));
    const urgent = sem.run(async () => void order.push('urgent'), true);
    await tick();
    expect(order).toEqual([]);
    release();
    await Promise.all([first, normal, urgent]);
    expect(order).toEqual(['urgent', 'normal']);
    expect(sem.idle).toBe(true);
  });

  it('a job that waited starveMs goes before the next urgent one: a steady stream of urgent work never starves it', async () => {
    const sem = new Semaphore(1, 50);
    let urgentRuns = 0;
    let stop = false;
    let normalRan = false;
    // Each urgent job queues the next before it ends, so an urgent one is always waiting.
    const urgentLoop = async (): Promise<void> => {
      const next: Promise<void>[] = [];
      while (!stop) {
        await sem.run(async () => {
          urgentRuns++;
          if (!stop) next.push(sem.run(() => new Promise<void>((r) => setTimeout(r, 5)), true));
          await new Promise<void>((r) => setTimeout(r, 5));
        }, true);
      }
      await Promise.all(next);
    };
    const loop = urgentLoop();
    await tick();
    const started = Date.now();
    await sem.run(async () => {
      normalRan = true;
    });
    const waited = Date.now() - started;
    stop = true;
    await loop;
    expect(normalRan).toBe(true);
    expect(waited).toBeGreaterThanOrEqual(45);
    expect(urgentRuns).toBeGreaterThan(1);
  });
});
