import { Registry as PromRegistry, collectDefaultMetrics as promDefaults } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { Counter, Registry, ZtunnelMetrics } from './metrics.js';

const names = (text: string): string[] => [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!).sort();

describe('ZtunnelMetrics', () => {
  it('process metrics: the same metric names as prom-client collectDefaultMetrics, plus the ztunnel ones', async () => {
    const reference = new PromRegistry();
    promDefaults({ register: reference });
    const m = new ZtunnelMetrics({ processMetrics: true });
    const ours = names(await m.text());
    for (const n of names(await reference.metrics())) expect(ours, n).toContain(n);
    expect(ours).toContain('istio_tcp_connections_opened_total');
    expect(ours).toContain('workload_manager_active_proxy_count');
  });

  it('process CPU counts up from the process CPU time', async () => {
    const m = new ZtunnelMetrics({ processMetrics: true });
    // 30 ms of this process's CPU, not of the wall clock: on a loaded machine it may get less of the wall.
    const start = process.cpuUsage();
    const used = (): number => {
      const d = process.cpuUsage(start);
      return (d.user + d.system) / 1000;
    };
    while (used() < 30);
    const value = (name: string, text: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
    const text = await m.text();
    expect(value('process_cpu_seconds_total', text)).toBeGreaterThan(0.02);
    expect(value('process_cpu_seconds_total', text)).toBeCloseTo(value('process_cpu_user_seconds_total', text) + value('process_cpu_system_seconds_total', text), 6);
  });

  it('without process metrics only ztunnel metrics', async () => {
    const ours = names(await new ZtunnelMetrics().text());
    expect(ours.filter((n) => n.startsWith('process_') || n.startsWith('nodejs_'))).toEqual([]);
  });

  it('its classes are prom-client own (a registry from prom-client takes them)', async () => {
    const r = new PromRegistry();
    new Counter({ name: 'weir_test_total', help: 'test', registers: [r] }).inc(2);
    expect(await r.metrics()).toContain('weir_test_total 2');
    expect(new Registry()).toBeInstanceOf(PromRegistry);
  });
});
