import { PassThrough } from 'node:stream';
import { BufferBudget } from '@weir/hbone';
import { describe, expect, it } from 'vitest';
import { registerBufferBudgetMetrics } from './buffer-budget-metrics.js';
import { Registry } from './metrics.js';

const value = (name: string, text: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);

describe('buffer budget metrics', () => {
  it('export what the shared HBONE budget holds and shed, counted once per event across scrapes', async () => {
    const registry = new Registry();
    const budget = new BufferBudget({ maxPendingHandshakes: 1, maxSessionBytes: 1000, maxBytes: 10_000, checkIntervalMs: 60_000 });
    registerBufferBudgetMetrics(registry, budget);
    expect(budget.handshakeStarted()).toBe(true);
    expect(budget.handshakeStarted()).toBe(false);
    // A tunnel whose reader stopped, holding 5000 bytes: over the session's 1000.
    const tunnel = Object.assign(new PassThrough(), { closedWith: undefined as number | undefined });
    const closeable = Object.assign(tunnel, {
      close(code?: number) {
        tunnel.closedWith = code;
        tunnel.destroy();
      },
    });
    closeable.pause();
    closeable.write(Buffer.alloc(5000));
    budget.session('10.0.0.7:40000', 'inbound').track(closeable);
    budget.check();
    expect(tunnel.closedWith).toBe(11);
    const text = await registry.metrics();
    expect(value('weir_hbone_tunnels_reset_total', text)).toBe(1);
    expect(value('weir_hbone_handshakes_refused_total', text)).toBe(1);
    expect(value('weir_hbone_buffer_budget_bytes', text)).toBe(10_000);
    expect(value('weir_hbone_buffered_bytes', text)).toBe(0);
    expect(value('weir_hbone_tunnels_reset_total', await registry.metrics())).toBe(1);
  });
});
