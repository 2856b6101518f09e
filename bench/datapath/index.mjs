#!/usr/bin/env node
/* global process, console */
// `npm run bench -- datapath` (root): pod → pod TCP throughput across two simulated nodes, iperf3 in
// the pods as source and sink, 1 and 4 parallel streams, for four paths in the same run:
//   direct   the same pods with capture off (no proxy)
//   weir     capture on: a → 15001 (ztunnel n1) → HBONE mTLS → b:15008 (ztunnel n2) → iperf3 in b
//   stunnel  capture off; a connects explicitly to a stunnel client in n1's netns → TLS 1.3 → stunnel
//            server in n2's netns → iperf3 in b
//   go       the same with Go's standard-library HTTP/2 CONNECT tunnel (hbonepeer.go, mTLS, h2)
// Besides Gbit/s, the proxy processes' CPU seconds per GiB moved, and the ztunnels' own garbage collections per
// GiB (a GC regression shows there before anywhere else). Last line: one JSON object.
import { parseArgs } from 'node:util';
import { printGoal } from '../common/goal.mjs';
import { buildGoPeer, captureToggle, cpuSeconds, machine, peerCerts, round, runMeshBench, startPeerTunnel, waitFor, ztunnelGc } from '../common/mesh.mjs';
import { perfRecord } from '../common/profiling.mjs';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: process.env.BENCH_SECONDS ?? '3' }, rounds: { type: 'string', default: process.env.BENCH_ROUNDS ?? '2' } } });
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);

await runMeshBench({ tag: 'dp', pods: { n1: ['a'], n2: ['b'] }, tools: ['iperf3', 'stunnel4', 'go', 'curl', 'ss'] }, async (mesh) => {
  const [n1, n2] = mesh.nodes;
  const { a, b } = mesh.pods;
  const certs = await peerCerts(mesh);
  const goBin = buildGoPeer(mesh.dir);
  const sink = await b.spawn({ name: 'iperf3-sink', cmd: 'iperf3', args: ['-s', '-p', '5201'] });
  await waitFor('iperf3 sink', async () => (await b.exec('ss', ['-Hltn', 'sport = :5201'])).stdout.trim() !== '');
  const target = `${b.ip}:5201`;
  const stunnel = await startPeerTunnel(mesh, 'stunnel', { from: n1, to: n2, target, certs, port: 16001 });
  const go = await startPeerTunnel(mesh, 'go', { from: n1, to: n2, target, certs, goBin, port: 16011 });

  const paths = {
    direct: { host: b.ip, port: 5201, capture: false, procs: [] },
    weir: { host: b.ip, port: 5201, capture: true, procs: mesh.ztunnels },
    stunnel: { host: stunnel.host, port: stunnel.port, capture: false, procs: stunnel.procs },
    go: { host: go.host, port: go.port, capture: false, procs: go.procs },
  };
  const setCapture = captureToggle(mesh, [a, b]);

  const ztunnelGcNow = () => ztunnelGc([n1, n2]);

  async function iperf(path, streams, seconds) {
    const r = await a.exec('iperf3', ['-c', path.host, '-p', String(path.port), '-t', String(seconds), '-P', String(streams), '-J'], { timeoutMs: (seconds + 30) * 1000, check: false });
    let j;
    try {
      j = JSON.parse(r.stdout);
    } catch {
      throw new Error(`iperf3 to ${path.host}:${path.port} gave no JSON: ${r.stderr}${r.stdout.slice(0, 500)}`);
    }
    if (j.error) throw new Error(`iperf3 to ${path.host}:${path.port}: ${j.error}`);
    return { bits: j.end.sum_received.bits_per_second, bytes: j.end.sum_received.bytes };
  }

  // Per stream count: rounds of every path in turn, so a load spike hits all paths alike; the best
  // round per path counts (the least disturbed by the rest of the machine), CPU/GiB summed over all.
  const results = {};
  for (const name of Object.keys(paths)) results[name] = { 1: { gbps: [], cpu: 0, bytes: 0 }, 4: { gbps: [], cpu: 0, bytes: 0 } };
  const gcs = { 1: { major: 0, minor: 0, seconds: 0 }, 4: { major: 0, minor: 0, seconds: 0 } };
  for (const name of Object.keys(paths)) {
    await setCapture(paths[name].capture);
    await iperf(paths[name], 1, 1); // warm-up: JIT, TLS sessions, pools, windows
  }
  for (const streams of [1, 4]) {
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, path] of Object.entries(paths)) {
        await setCapture(path.capture);
        const gc0 = name === 'weir' ? await ztunnelGcNow() : undefined;
        const cpu0 = path.procs.reduce((s, p) => s + cpuSeconds(p.pid), 0);
        // BENCH_PERF: each ztunnel during its first measured round.
        const perf = name === 'weir' && round === 0 ? perfRecord(path.procs, `${streams}s`, SECONDS) : undefined;
        const t = await iperf(path, streams, SECONDS);
        await perf;
        const cpu = path.procs.reduce((s, p) => s + cpuSeconds(p.pid), 0) - cpu0;
        if (gc0) {
          const gc1 = await ztunnelGcNow();
          for (const k of ['major', 'minor', 'seconds']) gcs[streams][k] += gc1[k] - gc0[k];
        }
        const x = results[name][streams];
        x.gbps.push(t.bits / 1e9);
        x.cpu += cpu;
        x.bytes += t.bytes;
      }
    }
  }
  await setCapture(false);
  await sink.stop();

  const best = (name, s) => Math.max(...results[name][s].gbps);
  const cpuPerGiB = (name, s) => (paths[name].procs.length === 0 ? null : results[name][s].cpu / (results[name][s].bytes / 2 ** 30));
  console.log(`datapath: pod a (n1) → pod b (n2), iperf3, ${SECONDS} s × ${ROUNDS} rounds per path, best round; ${machine()}`);
  console.log('path      1 stream Gbit/s  CPU s/GiB   4 streams Gbit/s  CPU s/GiB   rounds (1s | 4s)');
  for (const name of Object.keys(paths)) {
    const c1 = paths[name].procs.length ? cpuPerGiB(name, 1).toFixed(2) : '-';
    const c4 = paths[name].procs.length ? cpuPerGiB(name, 4).toFixed(2) : '-';
    const rs = (s) => results[name][s].gbps.map((g) => g.toFixed(2)).join(' ');
    console.log(`${name.padEnd(9)} ${best(name, 1).toFixed(2).padStart(15)}  ${c1.padStart(9)}   ${best(name, 4).toFixed(2).padStart(16)}  ${c4.padStart(9)}   ${rs(1)} | ${rs(4)}`);
  }
  const gcPerGiB = (s) => {
    const gib = results.weir[s].bytes / 2 ** 30;
    return { major: round(gcs[s].major / gib, 1), minor: round(gcs[s].minor / gib, 1), seconds: round(gcs[s].seconds / gib, 3) };
  };
  const gcLine = (s) => `${gcPerGiB(s).major} major + ${gcPerGiB(s).minor} minor, ${gcPerGiB(s).seconds} s`;
  console.log(`weir ztunnels' GCs per GiB (both, from /metrics): 1 stream ${gcLine(1)}; 4 streams ${gcLine(4)}`);
  const out = {
    datapath_1s_vs_go: round(best('weir', 1) / best('go', 1)),
    datapath_1s_vs_ctls: round(best('weir', 1) / best('stunnel', 1)),
    datapath_4s_vs_go: round(best('weir', 4) / best('go', 4)),
    datapath_1s_vs_direct: round(best('weir', 1) / best('direct', 1)),
    cpu_per_gib_1s_vs_go: round(cpuPerGiB('weir', 1) / cpuPerGiB('go', 1)),
    cpu_per_gib_1s_vs_ctls: round(cpuPerGiB('weir', 1) / cpuPerGiB('stunnel', 1)),
    cpu_per_gib_4s_vs_go: round(cpuPerGiB('weir', 4) / cpuPerGiB('go', 4)),
    gbps: Object.fromEntries(Object.keys(paths).map((n) => [n, { s1: round(best(n, 1)), s4: round(best(n, 4)) }])),
    cpu_s_per_gib: Object.fromEntries(['weir', 'stunnel', 'go'].map((n) => [n, { s1: round(cpuPerGiB(n, 1)), s4: round(cpuPerGiB(n, 4)) }])),
    ztunnel_gc_per_gib: { s1: gcPerGiB(1), s4: gcPerGiB(4) },
    seconds: SECONDS,
    rounds: ROUNDS,
  };
  printGoal('1 stream vs go', out.datapath_1s_vs_go, { min: 1.2 });
  printGoal('1 stream vs stunnel', out.datapath_1s_vs_ctls, { min: 1.0 });
  printGoal('4 streams vs go', out.datapath_4s_vs_go, { min: 1.2 });
  return out;
});
