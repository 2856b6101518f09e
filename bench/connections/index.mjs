#!/usr/bin/env node
/* global process, console */
// `npm run bench -- connections [--pods 100] [--idle 10000]` (root): on node n1, 100 pods enrolled in
// one weir-ztunnel (pod a plus 99 more); pod b on n2 behind the other.
//   1. ztunnel RSS with 1 pod; 99 more handed over ZDS in a burst (ack latency, pods/s); RSS idle with
//      100 pods; the 99 removed in a burst (same figures) and handed over again
//   2. new connections per second from a to an HTTP server in b (wrk -c8, `Connection: close`, so every
//      request is a new TCP connection, hence a new HBONE stream), weir vs direct vs the Go tunnel; per proxy
//      process its CPU µs per connection and its share of the run on a CPU and waiting for one, the machine's
//      busy share, wrk's per-request latency and TCP events (nstat: SYN retransmits, overflows, resets)
//   3. both ztunnels' RSS at 0, 1,000 and 10,000 concurrent idle connections a → b (through the mesh)
// Last line: one JSON object.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { printGoal } from '../common/goal.mjs';
import { buildGoPeer, captureToggle, cpuSeconds, enroll, machine, peerCerts, quantile, round, rssKiB, runMeshBench, sleep, startPeerTunnel, waitFor } from '../common/mesh.mjs';
import { perfRecord } from '../common/profiling.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: { pods: { type: 'string', default: '100' }, idle: { type: 'string', default: '10000' }, seconds: { type: 'string', default: process.env.BENCH_SECONDS ?? '3' } },
});
const PODS = Number(values.pods);
const IDLE = Number(values.idle);
const SECONDS = Number(values.seconds);

/** RSS of a pid, median of 5 samples 300 ms apart (the heap breathes). */
async function settledRss(pid) {
  const s = [];
  for (let i = 0; i < 5; i++) {
    s.push(rssKiB(pid));
    await sleep(300);
  }
  return s.sort((x, y) => x - y)[2];
}

/**
 * BENCH_MEM_BREAKDOWN: where a ztunnel's resident memory is (from /proc/<pid>/smaps, read from outside): the node
 * binary's pages (shared, file-backed), V8's heap (its 256 KiB pages, and code pages), malloc (the brk heap and the
 * other anonymous mappings: thread arenas, stacks), in MiB.
 */
function memBreakdown(pid) {
  const kib = { node: 0, libs: 0, v8: 0, brk: 0, other: 0 };
  let bucket;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) {
      const size = (parseInt(m[2], 16) - parseInt(m[1], 16)) / 1024;
      const [, , , perms, name] = m;
      bucket = name === process.execPath || name.endsWith('/node') ? 'node' : name === '[heap]' ? 'brk' : name.startsWith('/') ? 'libs' : name === '' && (size === 256 || perms.includes('x')) ? 'v8' : 'other';
      continue;
    }
    const r = /^Rss:\s+(\d+)/.exec(line);
    if (r) kib[bucket] += Number(r[1]);
  }
  return Object.entries(kib).map(([k, v]) => `${k} ${(v / 1024).toFixed(1)}`).join(', ');
}
const breakdown = (label, pid) => {
  if (process.env.BENCH_MEM_BREAKDOWN) console.log(`  memory of ${label} (MiB): ${memBreakdown(pid)}`);
};

const TCP_EVENTS = ['TcpRetransSegs', 'TcpExtTCPSynRetrans', 'TcpExtListenOverflows', 'TcpExtListenDrops', 'TcpAttemptFails', 'TcpEstabResets', 'TcpOutRsts', 'TcpExtTW', 'TcpExtTWRecycled', 'TcpExtTCPTimeWaitOverflow', 'TcpExtDelayedACKs', 'TcpExtTCPAbortOnData', 'TcpExtTCPAbortOnClose', 'TcpExtPAWSEstab', 'TcpExtTCPChallengeACK'];

/** Absolute TCP counters (nstat, history untouched) summed over the given pods/nodes. */
async function tcpCounters(where) {
  const sum = {};
  for (const w of where) {
    const out = (await w.exec('nstat', ['-asz'], { check: false })).stdout;
    for (const m of out.matchAll(/^(\w+)\s+(\d+)/gm)) if (TCP_EVENTS.includes(m[1])) sum[m[1]] = (sum[m[1]] ?? 0) + Number(m[2]);
  }
  return sum;
}
const tcpDelta = (x, y) => Object.fromEntries(TCP_EVENTS.map((k) => [k, (y[k] ?? 0) - (x[k] ?? 0)]).filter(([, v]) => v !== 0));
const tcpLine = (d, conns) => Object.entries(d).map(([k, v]) => `${k.replace(/^Tcp(Ext)?/, '')} ${((v / conns) * 1000).toFixed(1)}`).join(', ');

/** Machine-wide CPU jiffies from /proc/stat: [busy, total]. */
function machineCpu() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((x, y) => x + y, 0);
  return [total - f[3] - f[4], total];
}

/** ns a process's threads spent runnable but waiting for a CPU (schedstat; threads alive now). */
function runqNs(pid) {
  let wait = 0;
  let tids = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  for (const tid of tids) {
    try {
      wait += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
    } catch {
      // The thread exited between readdir and read.
    }
  }
  return wait;
}

const t0 = Date.now();
const fillers = Array.from({ length: PODS - 1 }, (_, i) => `f${i + 1}`);
await runMeshBench({ tag: 'conn', pods: { n1: ['a', ...fillers], n2: ['b'] }, defer: fillers, tools: ['wrk', 'go', 'curl', 'ss'] }, async (mesh) => {
  const [n1, n2] = mesh.nodes;
  const [z1, z2] = mesh.ztunnels;
  const { a, b } = mesh.pods;
  console.log(`setup: ${PODS} pods on n1 and 1 on n2 created, a and b enrolled, in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await sleep(3000);
  const idle1 = await settledRss(z1.pid);
  // ztunnel's side of enrollment: the other pods handed over in one burst (ZDS add → ztunnel's ack), then
  // removed in one burst (ZDS del → ack), then handed over again for the rest of the bench.
  const burst = async (op) => {
    const t = process.hrtime.bigint();
    const lat = await Promise.all(
      fillers.map(async (p) => {
        const s = process.hrtime.bigint();
        await (op === 'add' ? enroll(mesh, n1, mesh.pods[p]) : n1.zds.removeWorkload(mesh.pods[p].uid));
        return Number(process.hrtime.bigint() - s) / 1e6;
      }),
    );
    lat.sort((x, y) => x - y);
    return { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), perS: fillers.length / (Number(process.hrtime.bigint() - t) / 1e9) };
  };
  const add = await burst('add');
  await sleep(5000); // enrollment's garbage: let the heap settle before calling it idle
  const idle100 = await settledRss(z1.pid);
  breakdown(`ztunnel n1, idle, ${PODS} pods`, z1.pid);
  const del = await burst('del');
  await sleep(3000);
  const afterDel = await settledRss(z1.pid);
  await burst('add');
  const perPod = (idle100 - idle1) / fillers.length;
  console.log(`ZDS burst of ${fillers.length} pods to ztunnel n1: add p50 ${add.p50.toFixed(1)} ms p99 ${add.p99.toFixed(1)} ms, ${add.perS.toFixed(1)} pods/s; delete p50 ${del.p50.toFixed(1)} ms p99 ${del.p99.toFixed(1)} ms, ${del.perS.toFixed(1)} pods/s`);
  console.log(`ztunnel n1 RSS: 1 pod ${(idle1 / 1024).toFixed(1)} MiB, ${PODS} pods ${(idle100 / 1024).toFixed(1)} MiB (${perPod.toFixed(0)} KiB per pod), after deleting ${fillers.length} ${(afterDel / 1024).toFixed(1)} MiB`);
  console.log(`ztunnel n1 RSS, idle, ${PODS} pods enrolled: ${(idle100 / 1024).toFixed(1)} MiB   (n2, 1 pod: ${((await settledRss(z2.pid)) / 1024).toFixed(1)} MiB)`);

  // --- new connections per second ----------------------------------------------------------------
  const certs = await peerCerts(mesh);
  const goBin = buildGoPeer(mesh.dir);
  await b.spawn({ name: 'http-server', cmd: process.execPath, args: [join(here, '../common/http-server.mjs'), '8080'] });
  await b.spawn({ name: 'hold-server', cmd: process.execPath, args: [join(here, '../common/hold-server.mjs'), '9000'] });
  await waitFor('servers in b', async () => (await b.exec('ss', ['-Hltn', 'sport = :8080 or sport = :9000'])).stdout.trim().split('\n').length >= 2);
  const go = await startPeerTunnel(mesh, 'go', { from: n1, to: n2, target: `${b.ip}:8080`, certs, goBin, port: 16201 });
  const paths = {
    direct: { url: `http://${b.ip}:8080/`, capture: false, procs: [] },
    weir: { url: `http://${b.ip}:8080/`, capture: true, procs: mesh.ztunnels },
    go: { url: `http://${go.host}:${go.port}/`, capture: false, procs: go.procs.map((p, i) => ({ name: `go-${i === 0 ? 'n1' : 'n2'}`, pid: p.pid })) },
  };
  // Per proxy process over the measured run: CPU µs per connection, and its CPU time ÷ wall time. One
  // ztunnel near 100% is its one event-loop thread saturated: the rate cannot grow past it whatever the cores.
  const cpuPerConn = {};
  const setCapture = captureToggle(mesh, [a, b]);
  // Where a connection can stall without CPU: SYN retransmits, listen queue overflows, resets, TIME-WAIT
  // collisions (nstat in the pods' and nodes' netns, summed).
  const nstatWhere = [a, b, n1, n2];
  const rate = {};
  for (const [name, path] of Object.entries(paths)) {
    await setCapture(path.capture);
    await a.exec('wrk', ['-t1', '-c8', '-d2s', '-H', 'Connection: close', path.url], { timeoutMs: 30_000, check: false });
    // BENCH_PERF: both ztunnels during the measured Weir run.
    const perf = path.capture ? perfRecord(mesh.ztunnels, 'newconn', SECONDS) : undefined;
    const tcp0 = await tcpCounters(nstatWhere);
    const cpu0 = path.procs.map((p) => cpuSeconds(p.pid));
    const q0 = path.procs.map((p) => runqNs(p.pid));
    const m0 = machineCpu();
    const w0 = process.hrtime.bigint();
    const r = await a.exec('wrk', ['-t1', '-c8', `-d${SECONDS}s`, '--latency', '-H', 'Connection: close', path.url], { timeoutMs: (SECONDS + 30) * 1000, check: false });
    const wall = Number(process.hrtime.bigint() - w0) / 1e9;
    const cpu = path.procs.map((p, i) => cpuSeconds(p.pid) - cpu0[i]);
    const q = path.procs.map((p, i) => (runqNs(p.pid) - q0[i]) / 1e9);
    const m1 = machineCpu();
    const machineBusy = (m1[0] - m0[0]) / Math.max(1, m1[1] - m0[1]);
    const tcp = tcpDelta(tcp0, await tcpCounters(nstatWhere));
    await perf;
    const m = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
    if (!m) throw new Error(`wrk through ${name} gave no rate:\n${r.stdout}${r.stderr}`);
    const errors = /Socket errors: (.*)/.exec(r.stdout)?.[1];
    rate[name] = Number(m[1]);
    const conns = Math.max(1, rate[name] * wall);
    let cost = '';
    if (path.procs.length > 0) {
      const total = cpu.reduce((x, y) => x + y, 0);
      cpuPerConn[name] = {
        total: round((total / conns) * 1e6, 0),
        ...Object.fromEntries(path.procs.map((p, i) => [p.name, { us: round((cpu[i] / conns) * 1e6, 0), busy: round(cpu[i] / wall, 2), runq: round(q[i] / wall, 2) }])),
      };
      cost = `   CPU µs per connection ${cpuPerConn[name].total} (${path.procs.map((p, i) => `${p.name} ${((cpu[i] / conns) * 1e6).toFixed(0)} µs, on a CPU ${((cpu[i] / wall) * 100).toFixed(0)}% / waiting for one ${((q[i] / wall) * 100).toFixed(0)}% of the run`).join('; ')})`;
    }
    cost += `; machine ${(machineBusy * 100).toFixed(0)}% busy`;
    console.log(`new connections/s ${name.padEnd(7)} ${rate[name].toFixed(0).padStart(6)}${errors ? `   (socket errors: ${errors})` : ''}${cost}`);
    const lat = [...r.stdout.matchAll(/^\s+(50|90|99)%\s+(\S+)\s*$/gm)].map((m) => `p${m[1]} ${m[2]}`).join(', ');
    console.log(`  ${name}: per request (connect to response) ${lat}; TCP events (nstat, per 1000 connections): ${tcpLine(tcp, conns) || 'none'}`);
  }

  // --- idle connections ------------------------------------------------------------------------------
  await setCapture(true);
  const accepted = async () => Number([...(await mesh.topo.process('hold-server').readLog()).matchAll(/ACCEPTED (\d+)/g)].at(-1)?.[1] ?? 0);
  await sleep(3000); // the new-connection run's sockets close and their memory settles
  const rss = { 0: [await settledRss(z1.pid), await settledRss(z2.pid)] };
  breakdown('ztunnel n1, 0 connections', z1.pid);
  breakdown('ztunnel n2, 0 connections', z2.pid);
  const steps = [1000, IDLE].filter((n, i, xs) => n <= IDLE && xs.indexOf(n) === i);
  let held = 0;
  for (const n of steps) {
    const more = n - held;
    const c = await a.spawn({ name: `hold-client-${n}`, cmd: process.execPath, args: [join(here, '../common/hold-client.mjs'), b.ip, '9000', String(more)] });
    const line = await c.waitForOutput(/OPENED \d+/, 240_000);
    if ((await c.readLog()).includes('FAILED')) console.log(`hold-client: ${(await c.readLog()).trim().split('\n').join('; ')}`);
    held = n;
    await waitFor(`${n} connections accepted in b`, async () => (await accepted()) >= n, 240_000).catch(async (err) => {
      throw new Error(`${err.message} (b has ${await accepted()}; ${line})`);
    });
    await sleep(2000);
    rss[n] = [await settledRss(z1.pid), await settledRss(z2.pid)];
    breakdown(`ztunnel n1, ${n} connections`, z1.pid);
    breakdown(`ztunnel n2, ${n} connections`, z2.pid);
  }
  console.log('idle connections a → b   ztunnel n1 RSS MiB   ztunnel n2 RSS MiB');
  for (const [n, [r1, r2]] of Object.entries(rss)) console.log(`${String(n).padStart(24)}   ${(r1 / 1024).toFixed(1).padStart(18)}   ${(r2 / 1024).toFixed(1).padStart(18)}`);
  const per = (i) => (rss[IDLE][i] - rss[0][i]) / IDLE;
  const perConn = per(0) + per(1);
  console.log(`RSS per idle connection: n1 (outbound) ${per(0).toFixed(2)} KiB + n2 (inbound) ${per(1).toFixed(2)} KiB = ${perConn.toFixed(2)} KiB`);
  printGoal(`ztunnel RSS idle with ${PODS} pods`, idle100 / 1024, { max: 80, unit: 'MiB', digits: 1 });
  printGoal((bound) => `${bound} per idle connection (both ztunnels together)`, perConn, { max: 8, unit: 'KiB' });
  console.log(machine());
  return {
    ztunnel_rss_idle_100pods_mib: round(idle100 / 1024, 1),
    rss_per_conn_kib: round(perConn, 2),
    rss_per_conn_kib_outbound: round(per(0), 2),
    rss_per_conn_kib_inbound: round(per(1), 2),
    ztunnel_rss_per_pod_kib: round(perPod, 0),
    ztunnel_rss_1pod_mib: round(idle1 / 1024, 1),
    ztunnel_rss_after_delete_mib: round(afterDel / 1024, 1),
    zds_add_p50_ms: round(add.p50, 1),
    zds_add_p99_ms: round(add.p99, 1),
    zds_add_pods_per_s: round(add.perS, 1),
    zds_del_p99_ms: round(del.p99, 1),
    zds_del_pods_per_s: round(del.perS, 1),
    newconn_per_s: round(rate.weir, 0),
    newconn_per_s_vs_go: round(rate.weir / rate.go),
    newconn_per_s_vs_direct: round(rate.weir / rate.direct),
    conn_per_s: Object.fromEntries(Object.entries(rate).map(([k, v]) => [k, round(v, 0)])),
    newconn_cpu_us: cpuPerConn,
    rss_mib: Object.fromEntries(Object.entries(rss).map(([k, [r1, r2]]) => [k, { n1: round(r1 / 1024, 1), n2: round(r2 / 1024, 1) }])),
    pods: PODS,
    idle: IDLE,
  };
});
