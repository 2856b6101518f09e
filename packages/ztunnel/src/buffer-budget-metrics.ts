import type { BufferBudget } from '@weir/hbone';
import { Counter, Gauge, type Registry } from './metrics.js';

/**
 * The HBONE buffer budget on /metrics: what paused tunnels hold now and what was shed. Read from the
 * budget at scrape time (nothing on the data path).
 */
export function registerBufferBudgetMetrics(registry: Registry, budget: BufferBudget): void {
  let seen = { resets: 0, refused: 0, handshakesRefused: 0 };
  const held = new Gauge({
    name: 'weir_hbone_buffered_bytes',
    help: 'Bytes held by HBONE tunnels whose reader is not keeping up, at the last buffer budget check',
    registers: [registry],
    collect() {
      const s = budget.stats();
      held.set(s.heldBytes);
      holding.set(s.holdingTunnels);
      limit.set(s.limits.maxBytes);
      resets.inc(s.resets - seen.resets);
      refused.inc(s.refused - seen.refused);
      handshakes.inc(s.handshakesRefused - seen.handshakesRefused);
      seen = { resets: s.resets, refused: s.refused, handshakesRefused: s.handshakesRefused };
    },
  });
  const holding = new Gauge({ name: 'weir_hbone_buffering_tunnels', help: 'HBONE tunnels holding bytes at the last buffer budget check', registers: [registry] });
  const limit = new Gauge({ name: 'weir_hbone_buffer_budget_bytes', help: 'The process-wide HBONE buffer budget', registers: [registry] });
  const resets = new Counter({ name: 'weir_hbone_tunnels_reset_total', help: 'HBONE tunnels reset because the buffer budget was exceeded', registers: [registry] });
  const refused = new Counter({ name: 'weir_hbone_streams_refused_total', help: 'HBONE streams refused (503 inbound, ERR_HBONE_BUFFER_BUDGET outbound) while over the buffer budget', registers: [registry] });
  const handshakes = new Counter({ name: 'weir_hbone_handshakes_refused_total', help: 'Connections to 15008 closed because too many TLS handshakes were in progress', registers: [registry] });
}
