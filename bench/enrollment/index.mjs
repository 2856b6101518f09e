#!/usr/bin/env node
// `npm run bench -- enrollment [--pods 100] [--concurrency 8]` (root): enrollment latency of the node
// agent, from /cmdadd received to 200 sent, for pods enrolled one at a time (the baseline) and for a
// burst of pods on one node. Real netns (topology + CNI chain), real iptables, a ZDS peer that acks.
import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { KubeConfig } from '@kubernetes/client-node';
import { createNodeAgent, KubePodSource } from '@weir/cni-agent';
import { FakeApiServer } from '@weir/fake-apiserver';
import { ZdsClient } from '@weir/redirect-protocol';
import { Topology } from '@weir/topology';

const { values } = parseArgs({
  options: { pods: { type: 'string', default: '100' }, concurrency: { type: 'string', default: '8' }, baseline: { type: 'string', default: '5' } },
});
const burstSize = Number(values.pods);
const baselineSize = Number(values.baseline);
if (process.getuid?.() !== 0) {
  console.error('bench enrollment needs root (netns, iptables)');
  process.exit(1);
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
const ms = (n) => `${n.toFixed(1)} ms`;

function cmdAdd(socketPath, pod) {
  const body = JSON.stringify({
    Netns: pod.netnsPath,
    PodName: pod.name,
    PodNamespace: pod.namespace,
    IPs: [{ Interface: 0, Address: { IP: pod.ip, Mask: '////AA==' }, Gateway: '' }],
  });
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/cmdadd', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, ms: Number(process.hrtime.bigint() - start) / 1e6 }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const name = `wbe${process.pid % 10000}`;
const dir = await mkdtemp(join(tmpdir(), 'weir-bench-enroll-'));
const topo = await Topology.create({ name });
const api = await FakeApiServer.start();
let agent;
const peer = new ZdsClient({ path: join(dir, 'ztunnel.sock'), backoff: { initialMs: 10, maxMs: 100 } });
let code = 0;
try {
  const node = await topo.addNode({ name: 'n1' });
  api.createNamespace('bench', { 'istio.io/dataplane-mode': 'ambient' });
  const total = baselineSize + burstSize;
  const t0 = Date.now();
  const pods = [];
  for (let i = 0; i < total; i++) {
    const uid = randomUUID();
    api.createPod({ metadata: { name: `p${i}`, namespace: 'bench', uid }, spec: { nodeName: 'n1', containers: [] }, status: { phase: 'Pending' } });
    pods.push(await node.addPod({ name: `p${i}`, namespace: 'bench', uid }));
  }
  console.log(`setup: ${total} pods (netns + bridge/host-local CNI chain) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const kc = new KubeConfig();
  kc.loadFromFile(await api.kubeconfig(join(dir, 'kubeconfig')));
  const cpu0 = cpuSeconds();
  agent = createNodeAgent({
    nodeName: 'n1',
    source: new KubePodSource({ kubeConfig: kc, nodeName: 'n1' }),
    runDir: join(dir, 'run'),
    zdsSocket: join(dir, 'ztunnel.sock'),
    rules: { hostNetnsPath: node.netnsPath },
    health: false,
    driftIntervalMs: 0,
    concurrency: Number(values.concurrency),
  });
  await agent.start();
  let snapshot;
  const snapped = new Promise((r) => (snapshot = r));
  peer.start({
    onAdd: async (ev) => ev.netns.close(),
    onKeep: async () => {},
    onDel: async () => {},
    onSnapshotSent: async () => snapshot(),
  });
  await snapped;
  const sock = join(dir, 'run', 'pluginevent.sock');

  const base = [];
  for (const pod of pods.slice(0, baselineSize)) {
    const r = await cmdAdd(sock, pod);
    if (r.status !== 200) throw new Error(`baseline /cmdadd for ${pod.name} answered ${r.status}`);
    base.push(r.ms);
  }
  base.sort((a, b) => a - b);

  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const tb = process.hrtime.bigint();
  const results = await Promise.all(pods.slice(baselineSize).map((pod) => cmdAdd(sock, pod)));
  const wall = Number(process.hrtime.bigint() - tb) / 1e6;
  loop.disable();
  const failed = results.filter((r) => r.status !== 200).length;
  const lat = results.map((r) => r.ms).sort((a, b) => a - b);
  // Pods answered 500 (timeout under load) stay pending and are retried by the agent: wait for them.
  const settleStart = Date.now();
  let captured = 0;
  while ((captured = agent.pods().filter((p) => p.state === 'captured').length) < total && Date.now() - settleStart < 60_000) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const settleMs = Date.now() - settleStart;

  const p50 = quantile(lat, 0.5);
  const p99 = quantile(lat, 0.99);
  const b50 = quantile(base, 0.5);
  console.log(`baseline (one pod at a time, n=${base.length}): p50 ${ms(b50)}, max ${ms(base.at(-1))}`);
  console.log(`burst of ${burstSize} (capture concurrency ${values.concurrency}): p50 ${ms(p50)}, p99 ${ms(p99)}, max ${ms(lat.at(-1))}, all done in ${ms(wall)}, non-200: ${failed}`);
  console.log(`ratio burst/baseline: p50 ${(p50 / b50).toFixed(2)}x, p99 ${(p99 / b50).toFixed(2)}x`);
  console.log(`captured: ${captured}/${total} (${failed ? `the ${failed} answered non-200 were retried by the agent, all captured ${ms(wall + settleMs)} after the burst` : 'all by their 200'}); goal p99 <= 250 ms: ${p99 <= 250 ? 'met' : 'NOT met'}`);
  console.log(`agent event loop delay during the burst: p50 ${ms(loop.percentile(50) / 1e6)}, p99 ${ms(loop.percentile(99) / 1e6)}, max ${ms(loop.max / 1e6)}`);
  // CPU per pod: this process (agent, fake API, ZDS peer) plus the agent's command shells and what
  // they ran (reaped once the agent stops), from agent start to stop, over every pod captured.
  await agent.stop();
  agent = undefined;
  await new Promise((r) => setTimeout(r, 1000));
  const cpu = cpuSeconds();
  const cpuPerPodMs = (((cpu.self - cpu0.self) + (cpu.children - cpu0.children)) * 1000) / total;
  console.log(`CPU per pod (agent process + its commands, load-independent): ${ms(cpuPerPodMs)} (agent process ${ms(((cpu.self - cpu0.self) * 1000) / total)}, commands ${ms(((cpu.children - cpu0.children) * 1000) / total)})`);
  const load = (await import('node:os')).loadavg()[0];
  console.log(`machine load average during the run: ${load.toFixed(1)} on ${(await import('node:os')).cpus().length} cores`);
  // The issue's keys. Note: p99 here is /cmdadd received → 200 sent over the agent's socket (the plugin
  // exec and its Node start-up are bench cni-plugin's), against a ZDS peer that acks at once (no ztunnel).
  console.log(
    JSON.stringify({
      enroll_p99_ms: Number(p99.toFixed(1)),
      enroll_p50_ms: Number(p50.toFixed(1)),
      // Until every pod of the burst is captured (the non-200 ones by the agent's retry).
      enroll_pods_per_s: Number((burstSize / ((wall + (failed ? settleMs : 0)) / 1000)).toFixed(1)),
      enroll_baseline_p50_ms: Number(b50.toFixed(1)),
      burst: burstSize,
      concurrency: Number(values.concurrency),
      non_200: failed,
      captured,
      enroll_cpu_ms_per_pod: Number(cpuPerPodMs.toFixed(1)),
    }),
  );
  if (captured !== total) code = 1;
} catch (err) {
  console.error(err);
  code = 1;
} finally {
  await agent?.stop();
  await peer.close();
  await api.close();
  await topo.destroy();
  await rm(dir, { recursive: true, force: true });
}
process.exit(code);

/** utime+stime of this process and of its reaped children (/proc/self/stat), in seconds. */
function cpuSeconds() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const hz = 100;
  // Fields after the comm: state is [0], utime [11], stime [12], cutime [13], cstime [14].
  return { self: (Number(f[11]) + Number(f[12])) / hz, children: (Number(f[13]) + Number(f[14])) / hz };
}
