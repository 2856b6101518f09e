import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCni } from '../src/index.js';
import { ChainHarness, TestAgent } from './harness.js';

let h: ChainHarness;
let agent: TestAgent;
beforeAll(async () => {
  h = await ChainHarness.create();
  agent = await TestAgent.listen(h.socketPath);
  h.api.setNamespaceLabels('mesh', { 'istio.io/dataplane-mode': 'ambient' });
  h.api.setNamespaceLabels('plain', {});
});
afterAll(async () => {
  await agent?.close();
  await h?.close();
});

const fds = () => readdirSync('/proc/self/fd').length;

it('runCni leaves no file descriptor or socket behind, agent or API, success or failure', async () => {
  const plain = await h.addPod('fd-plain', 'plain');
  const mesh = await h.addPod('fd-mesh', 'mesh');
  const prev = await h.primaryAdd(plain, '1.0.0');
  const conf = (extra: Record<string, unknown> = {}) => JSON.stringify(h.pluginConf('1.0.0', prev, extra));
  const agentDown = conf({ cni_agent_run_dir: h.dir, kubeconfig: join(h.runDir, 'istio-cni-kubeconfig') });
  // Warm up lazy module loading (agent client, kube client) before counting.
  await runCni({ env: h.env('ADD', plain), stdin: conf() });
  await runCni({ env: h.env('ADD', plain), stdin: agentDown });
  const before = fds();
  for (let i = 0; i < 5; i++) {
    expect((await runCni({ env: h.env('ADD', plain), stdin: conf() })).exitCode).toBe(0);
    expect((await runCni({ env: h.env('ADD', mesh), stdin: conf() })).exitCode).toBe(0);
    // Agent unreachable: a failed connect, then the API lookup (TLS-less here, but a real connection).
    expect((await runCni({ env: h.env('ADD', plain), stdin: agentDown })).exitCode).toBe(0);
    expect((await runCni({ env: h.env('ADD', mesh), stdin: agentDown })).exitCode).toBe(1);
  }
  // The agent's ends of the plugin's connections close once it reads their EOF: wait for that
  // (at most 5 s) rather than a fixed 200 ms; a leak still fails.
  for (const end = Date.now() + 5000; fds() !== before && Date.now() < end; ) await new Promise((r) => setTimeout(r, 20));
  expect(fds()).toBe(before);
  // The warm-up and both pods of every round reached the agent.
  expect(agent.events).toHaveLength(11);
});
