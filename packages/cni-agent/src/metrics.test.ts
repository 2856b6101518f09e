import { describe, expect, it } from 'vitest';
import { AgentMetrics } from './metrics.js';

/** Value of an unlabelled sample line `name value` in Prometheus text. */
function sample(text: string, name: string): string | undefined {
  return new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1];
}

describe('AgentMetrics', () => {
  it('serves its own metrics current on every scrape and the process metrics collected at most once a second', async () => {
    const m = new AgentMetrics();
    m.podsEnrolled.set(1);
    const first = await m.registry.metrics();
    expect(sample(first, 'weir_cni_agent_pods_enrolled')).toBe('1');
    const cpu = sample(first, 'process_cpu_user_seconds_total');
    expect(cpu).toBeDefined();
    // Well-formed: every metric block starts with its HELP line after a blank line, one trailing newline.
    expect(first.endsWith('\n') && !first.endsWith('\n\n')).toBe(true);
    for (const block of first.trimEnd().split('\n\n')) expect(block).toMatch(/^# HELP \S+ /);

    // Burn 30 ms of this process's user CPU (not of the wall clock: under load the process may get
    // little of it) so that a fresh collection would show a different CPU time.
    const user0 = process.cpuUsage().user;
    while (process.cpuUsage().user - user0 < 30_000) Math.sqrt(Math.random());
    m.podsEnrolled.set(2);
    const second = await m.registry.metrics();
    expect(sample(second, 'weir_cni_agent_pods_enrolled')).toBe('2');
    expect(sample(second, 'process_cpu_user_seconds_total')).toBe(cpu);

    await new Promise((r) => setTimeout(r, 1050));
    const third = await m.registry.metrics();
    expect(sample(third, 'process_cpu_user_seconds_total')).not.toBe(cpu);
  });

  it('without process metrics serves only its own', async () => {
    const text = await new AgentMetrics({ processMetrics: false }).registry.metrics();
    expect(text).toMatch(/^weir_cni_agent_pods_enrolled 0$/m);
    expect(text).not.toMatch(/process_cpu/);
  });
});
