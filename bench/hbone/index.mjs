/* global process, console, setTimeout, clearTimeout, structuredClone */
// HBONE benchmark: TCP source → tunnel client → tunnel server → TCP sink, for Weir and, in the same
// run, a plain Node TLS pipe, stunnel, and Go's standard-library HTTP/2 CONNECT tunnel.
// Source and sink are iperf3; each tunnel side is its own process. Prints a table, then one JSON line.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const SECONDS = Number(process.env.HBONE_BENCH_SECONDS ?? 3);
// On a busy machine 1 s moves too few bytes to get the Node peers' data path optimised: their first
// measured run then cost up to 3x the CPU per GiB of the next one (old and new hbone alike).
const WARMUP = Number(process.env.HBONE_BENCH_WARMUP ?? 3);
const TUNNELS = Number(process.env.HBONE_BENCH_TUNNELS ?? 10_000);

let pki;
try {
  pki = await import('@weir/pki');
  await import('@weir/hbone');
} catch (err) {
  console.error(`build first: npm run build -w @weir/pki -w @weir/hbone (${err.message})`);
  process.exit(1);
}

const dir = mkdtempSync(join(tmpdir(), 'weir-bench-hbone-'));
const procs = new Set();
const cleanup = () => {
  for (const p of procs) p.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

function start(cmd, args, o = {}) {
  const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...o });
  procs.add(p);
  p.log = '';
  p.stdout.on('data', (b) => (p.log += b));
  p.stderr.on('data', (b) => (p.log += b));
  p.on('exit', () => procs.delete(p));
  p.on('error', (e) => {
    console.error(`${cmd} failed to start: ${e.message}`);
    process.exit(1);
  });
  return p;
}

function waitLine(p, re, ms = 30_000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${re} from ${p.spawnargs.join(' ')}:\n${p.log}`)), ms);
    const check = () => {
      const m = re.exec(p.log);
      if (m) {
        clearTimeout(t);
        p.stdout.off('data', check);
        resolve(m);
      }
    };
    p.stdout.on('data', check);
    p.once('exit', (c) => reject(new Error(`${p.spawnargs.join(' ')} exited ${c}:\n${p.log}`)));
    check();
  });
}

async function stop(...ps) {
  await Promise.all(ps.map((p) => new Promise((r) => (p.exitCode !== null ? r() : (p.once('exit', r), p.kill('SIGTERM'))))));
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitPort(port, ms = 15_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), r(true)));
      s.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listening on ${port}`);
}

// --- certificates -------------------------------------------------------------------------------
const ca = await pki.LocalCa.create({ trustDomain: 'cluster.local' });
const SERVER_ID = 'spiffe://cluster.local/ns/bench/sa/server';
const server = await ca.issueWorkloadCertificate({ identity: SERVER_ID });
const client = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/bench/sa/client' });
const f = {};
for (const [name, text] of Object.entries({ 'server.key': server.keyPem, 'server.crt': server.chainPem, 'client.key': client.keyPem, 'client.crt': client.chainPem, 'root.crt': ca.rootPem })) {
  f[name] = join(dir, name);
  writeFileSync(f[name], text);
}
const serverFiles = { key: f['server.key'], cert: f['server.crt'], ca: f['root.crt'] };
const clientFiles = { key: f['client.key'], cert: f['client.crt'], ca: f['root.crt'] };

// --- Go peer (standard library only) --------------------------------------------------------------
const goBin = join(dir, 'hbonepeer');
const goEnv = { ...process.env, GO111MODULE: 'off', GOFLAGS: '', GOCACHE: join(tmpdir(), 'weir-hbone-gocache'), GOPATH: join(tmpdir(), 'weir-hbone-gopath') };
const built = spawnSync('go', ['build', '-o', goBin, join(root, 'packages/hbone/test/peers/hbonepeer.go')], { env: goEnv, encoding: 'utf8' });
if (built.status !== 0) {
  console.error(`go build failed (golang-go installed?): ${built.stderr || built.error}`);
  process.exit(1);
}

// --- sink ---------------------------------------------------------------------------------------
const iperfPort = await freePort();
const iperf = start('iperf3', ['-s', '-p', String(iperfPort), '-B', '127.0.0.1']);
await waitPort(iperfPort);
// A TCP server that accepts and holds connections, for tunnel-open latency and idle tunnels.
const holder = net.createServer((s) => s.on('error', () => {}));
await new Promise((r) => holder.listen(0, '127.0.0.1', r));
const holdPort = holder.address().port;

// HBONE_BENCH_V8_FLAGS: V8 flags the Weir peers set on themselves at start (nodepeer.mjs reads it), as
// weir-ztunnel does with its defaults '--semi-space-growth-factor=1 --heap-growing-percent=300' (young
// generation kept at 1 MiB semi-spaces), to see hbone as embedded there. On node's command line the
// growth factor has no effect on Node 20: the young generation still grows to 16 MiB semi-spaces.
const V8_FLAGS = process.env.HBONE_BENCH_V8_FLAGS ?? '';
// HBONE_BENCH_NODE_ARGS: extra node options for the Weir peers (diagnostics: --trace-gc, --cpu-prof, …).
const NODE_ARGS = (process.env.HBONE_BENCH_NODE_ARGS ?? '').split(/\s+/).filter((x) => x !== '');
// HBONE_BENCH_GC=1: the Weir open-latency client and its server record their GC pauses, and the run
// prints which of the slowest opens overlapped one (diagnostic; the figures themselves are unchanged).
const GC_DIAG = Boolean(process.env.HBONE_BENCH_GC);
const node = (mode, cfg) => start(process.execPath, ['--expose-gc', ...NODE_ARGS, join(here, 'nodepeer.mjs'), mode, JSON.stringify(cfg)], { cwd: root });
const ready = async (p) => Number((await waitLine(p, /READY (\d+)/))[1]);
const local = (port) => ({ host: '127.0.0.1', port });

const systems = {
  weir: async (targetPort) => {
    const s = node('weir-server', serverFiles);
    const sp = await ready(s);
    const c = node('weir-front', { ...clientFiles, peer: local(sp), target: local(targetPort), expect: SERVER_ID });
    return { port: await ready(c), procs: [s, c] };
  },
  'node-tls': async (targetPort) => {
    const s = node('tls-server', { ...serverFiles, target: local(targetPort) });
    const sp = await ready(s);
    const c = node('tls-front', { ...clientFiles, peer: local(sp) });
    return { port: await ready(c), procs: [s, c] };
  },
  stunnel: async (targetPort) => {
    const [sp, cp] = [await freePort(), await freePort()];
    const common = ['foreground = yes', 'pid =', 'debug = 3', 'sslVersionMin = TLSv1.3', 'ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384', `CAfile = ${f['root.crt']}`, 'verifyChain = yes'];
    const sconf = join(dir, `stunnel-server-${sp}.conf`);
    writeFileSync(sconf, [...common, '[hbone]', `accept = 127.0.0.1:${sp}`, `connect = 127.0.0.1:${targetPort}`, `cert = ${f['server.crt']}`, `key = ${f['server.key']}`, 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1', ''].join('\n'));
    const cconf = join(dir, `stunnel-client-${cp}.conf`);
    writeFileSync(cconf, [...common, '[hbone]', 'client = yes', `accept = 127.0.0.1:${cp}`, `connect = 127.0.0.1:${sp}`, `cert = ${f['client.crt']}`, `key = ${f['client.key']}`, 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1', ''].join('\n'));
    const s = start('stunnel4', [sconf]);
    const c = start('stunnel4', [cconf]);
    await waitPort(sp);
    await waitPort(cp);
    return { port: cp, procs: [s, c] };
  },
  go: async (targetPort) => {
    const s = start(goBin, ['-mode', 'server', '-cert', f['server.crt'], '-key', f['server.key'], '-ca', f['root.crt']]);
    const sp = Number((await waitLine(s, /LISTENING \S+:(\d+)/))[1]);
    const c = start(goBin, ['-mode', 'client-front', '-peer', `127.0.0.1:${sp}`, '-target', `127.0.0.1:${targetPort}`, '-cert', f['client.crt'], '-key', f['client.key'], '-ca', f['root.crt'], '-expect', SERVER_ID]);
    const cp = Number((await waitLine(c, /LISTENING \S+:(\d+)/))[1]);
    return { port: cp, procs: [s, c], serverPort: sp };
  },
};

/** CPU seconds (user + system, all threads) a process has used so far. */
function cpuSeconds(p) {
  try {
    const stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

function iperfThroughput(port, streams, seconds = SECONDS) {
  const r = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J'], { encoding: 'utf8', timeout: (SECONDS + 30) * 1000 });
  let j;
  try {
    j = JSON.parse(r.stdout);
  } catch {
    throw new Error(`iperf3 through port ${port} gave no JSON: ${r.stderr}${r.stdout}`);
  }
  if (j.error) throw new Error(`iperf3 through port ${port}: ${j.error}`);
  return { gbps: j.end.sum_received.bits_per_second / 1e9, bytes: j.end.sum_received.bytes };
}

/** Throughput, and the tunnel processes' CPU per GiB moved: robust when the shared machine is busy. */
function measure(sys, streams) {
  const cpu0 = sys.procs.reduce((a, p) => a + cpuSeconds(p), 0);
  const t = iperfThroughput(sys.port, streams);
  const cpu = sys.procs.reduce((a, p) => a + cpuSeconds(p), 0) - cpu0;
  return { gbps: t.gbps, cpuPerGiB: cpu / (t.bytes / 2 ** 30) };
}

// HBONE_BENCH_ONLY=weir,go limits the throughput runs (for tuning); the JSON line needs all four.
const only = process.env.HBONE_BENCH_ONLY?.split(',');
// HBONE_BENCH_SKIP=throughput,rss skips those parts (for tuning the open path or memory; no JSON line).
const SKIP = new Set((process.env.HBONE_BENCH_SKIP ?? '').split(',').filter((x) => x !== ''));
const results = {};
for (const [name, setup] of Object.entries(systems)) {
  if ((only && !only.includes(name)) || SKIP.has('throughput')) continue;
  const sys = await setup(iperfPort);
  try {
    // Warm up (JIT, TLS sessions, windows) so the measured runs compare steady states.
    iperfThroughput(sys.port, 1, WARMUP);
    const [m1, m4] = [measure(sys, 1), measure(sys, 4)];
    results[name] = { s1: m1.gbps, s4: m4.gbps, cpu1: m1.cpuPerGiB, cpu4: m4.cpuPerGiB };
  } finally {
    await stop(...sys.procs);
  }
  const x = results[name];
  console.log(`${name.padEnd(9)} 1 stream ${x.s1.toFixed(2)} Gbit/s (${x.cpu1.toFixed(2)} CPU s/GiB)   4 streams ${x.s4.toFixed(2)} Gbit/s (${x.cpu4.toFixed(2)} CPU s/GiB)`);
}

if (only) process.exit(0);

// --- warm-session tunnel open latency -------------------------------------------------------------
// Weir and Go run side by side, each client holding a warm session to its own server, and take turns:
// ROUNDS rounds of PER_ROUND sequential opens each (CONNECT sent → 200 received, one open at a time,
// each tunnel closed gracefully before the next), the order alternating per round, so a load spike on
// the shared machine lands on both. p99 over all samples (ROUNDS × PER_ROUND, default 3000: the 30th
// worst, not the 3rd) and the spread of the per-round p50 and p99 ratios.
const ROUNDS = Number(process.env.HBONE_BENCH_OPEN_ROUNDS ?? 15);
const PER_ROUND = Number(process.env.HBONE_BENCH_OPEN_PER_ROUND ?? 200);
// Opens before measuring, on a session of their own, for both: a proxy runs with a warm JIT, as the
// throughput runs' warm-up assumes. Without it the samples include V8 compiling the open path.
const OPEN_WARMUP = Number(process.env.HBONE_BENCH_OPEN_WARMUP ?? 500);
// Then CHURN tunnels opened and closed gracefully (8 at a time) on the warm session: the CPU both
// tunnel processes spend per tunnel, the HBONE share of a mesh's per-connection cost (issue 10). In
// 6 rounds alternating Weir and Go, as the latency, so that load on the shared machine (which inflates
// CPU per operation too: cold caches) weighs on both alike.
const CHURN = Number(process.env.HBONE_BENCH_CHURN ?? 3000);
const CHURN_ROUNDS = 6;
/** Sends a command line and waits for the answer that matches `re` (ending in a newline) printed after it. */
async function ask(p, command, re, ms = 120_000) {
  const from = p.log.length;
  p.stdin.write(`${command}\n`);
  const end = Date.now() + ms;
  const answer = new RegExp(re.source, 'g');
  for (;;) {
    answer.lastIndex = from;
    const hit = answer.exec(p.log);
    if (hit) return hit;
    if (p.exitCode !== null) throw new Error(`${p.spawnargs.join(' ')} exited ${p.exitCode} before answering ${command}:\n${p.log.slice(from)}`);
    if (Date.now() > end) throw new Error(`no answer to ${command} from ${p.spawnargs.join(' ')} within ${ms} ms:\n${p.log.slice(from)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
/** CPU seconds both processes of a system use for one `churn n` command. */
async function churnRound(clientProc, serverProc, n) {
  const [c0, s0] = [cpuSeconds(clientProc), cpuSeconds(serverProc)];
  await ask(clientProc, `churn ${n}`, /CHURN-DONE \d+\n/);
  return { client: cpuSeconds(clientProc) - c0, server: cpuSeconds(serverProc) - s0 };
}
const ws = node('weir-server', serverFiles);
const wsp = await ready(ws);
const wl = node('weir-open-latency', { ...clientFiles, peer: local(wsp), target: local(holdPort), expect: SERVER_ID, warmup: OPEN_WARMUP });
const gs = start(goBin, ['-mode', 'server', '-cert', f['server.crt'], '-key', f['server.key'], '-ca', f['root.crt']]);
const gsp = Number((await waitLine(gs, /LISTENING \S+:(\d+)/))[1]);
const gl = start(goBin, ['-mode', 'open-latency', '-warmup', String(OPEN_WARMUP), '-peer', `127.0.0.1:${gsp}`, '-target', `127.0.0.1:${holdPort}`, '-cert', f['client.crt'], '-key', f['client.key'], '-ca', f['root.crt'], '-expect', SERVER_ID]);
// HBONE_BENCH_BARE=1: a bare node:http2 CONNECT client and server (nodepeer.mjs h2-open-latency and
// h2-server: no Weir code, Node's defaults) take their turn in the same rounds, measured the same way:
// what any HBONE on node:http2 gets, for scale. Off by default: a third system lengthens the pause
// between one system's rounds, and a round's first opens are slower after a pause (see below).
const BARE = Boolean(process.env.HBONE_BENCH_BARE);
const bs = BARE ? node('h2-server', serverFiles) : undefined;
const bl = BARE ? node('h2-open-latency', { ...clientFiles, peer: local(await ready(bs)), target: local(holdPort), warmup: OPEN_WARMUP }) : undefined;
await Promise.all([waitLine(wl, /OPEN-READY/, 60_000), waitLine(gl, /OPEN-READY/, 60_000), ...(BARE ? [waitLine(bl, /OPEN-READY/, 60_000)] : [])]);
const openPeers = { weir: [wl, ws], go: [gl, gs], ...(BARE ? { bare: [bl, bs] } : {}) };
const openSystems = Object.keys(openPeers);
const samples = Object.fromEntries(openSystems.map((x) => [x, []]));
const rounds = [];
// HBONE_BENCH_GC: each Weir open as [start, end] (wall clock ms), and the GC pauses of its client and server.
const gcDiag = { opens: [], client: [], server: [] };
const gcOf = async (p) => JSON.parse((await ask(p, 'gc', /GC (.*)\n/))[1]);
// HBONE_BENCH_SCHED=1: how long each peer's threads waited for a CPU while runnable (the kernel's
// /proc/<pid>/task/<tid>/schedstat: ns on CPU, ns runnable but waiting, timeslices) during its own
// rounds, per open + close; read between rounds, so nothing measured changes.
const SCHED_DIAG = Boolean(process.env.HBONE_BENCH_SCHED);
const schedOf = (p) => {
  const all = [0, 0, 0];
  let main = [0, 0, 0];
  for (const tid of readdirSync(`/proc/${p.pid}/task`)) {
    let v;
    try {
      v = readFileSync(`/proc/${p.pid}/task/${tid}/schedstat`, 'utf8').trim().split(' ').map(Number);
    } catch {
      continue; // a thread that exited meanwhile
    }
    for (let i = 0; i < 3; i++) all[i] += v[i];
    if (Number(tid) === p.pid) main = v;
  }
  return { all, main };
};
const schedDiag = { weir: { client: { all: [0, 0, 0], main: [0, 0, 0] }, server: { all: [0, 0, 0], main: [0, 0, 0] } } };
schedDiag.go = structuredClone(schedDiag.weir);
if (BARE) schedDiag.bare = structuredClone(schedDiag.weir);
const addSched = (acc, before, after) => {
  for (const k of ['all', 'main']) for (let i = 0; i < 3; i++) acc[k][i] += after[k][i] - before[k][i];
};
for (let r = 0; r < ROUNDS; r++) {
  const round = {};
  // Each system first in turn (weir, go alternating when there are two).
  for (const name of [...openSystems.slice(r % openSystems.length), ...openSystems.slice(0, r % openSystems.length)]) {
    const [cp, sp] = openPeers[name];
    const from = cp.log.length;
    const sched0 = SCHED_DIAG ? [schedOf(cp), schedOf(sp)] : undefined;
    const lat = JSON.parse((await ask(cp, `round ${PER_ROUND}`, /ROUND (.*)\n/))[1]);
    if (sched0 !== undefined) {
      addSched(schedDiag[name].client, sched0[0], schedOf(cp));
      addSched(schedDiag[name].server, sched0[1], schedOf(sp));
    }
    if (name === 'weir' && GC_DIAG) {
      const at = JSON.parse(/ROUNDAT (.*)\n/.exec(wl.log.slice(from))[1]);
      gcDiag.opens.push(...at.map((t, i) => [t, t + lat[i]]));
      gcDiag.client.push(...(await gcOf(wl)));
      gcDiag.server.push(...(await gcOf(ws)));
    }
    samples[name].push(...lat);
    round[name] = lat.sort((a, b) => a - b);
  }
  rounds.push(round);
}
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1)))];
const summary = (lat) => {
  const s = [...lat].sort((a, b) => a - b);
  return { count: s.length, p50_ms: Number(pct(s, 0.5).toFixed(4)), p90_ms: Number(pct(s, 0.9).toFixed(4)), p99_ms: Number(pct(s, 0.99).toFixed(4)) };
};
const weirOpen = summary(samples.weir);
const goOpen = summary(samples.go);
const bareOpen = BARE ? summary(samples.bare) : undefined;
// How many of a system's slowest 1% were the first open of a round: after a pause (the other systems'
// rounds, the orchestrator's commands) both processes are descheduled and their caches cold, and the
// first opens of a round are slower for every system (15 rounds: up to half of the 30 slowest).
const firstOfRound = (lat) => {
  const worst = lat.map((ms, i) => [ms, i]).sort((a, b) => b[0] - a[0]).slice(0, Math.max(1, Math.round(lat.length / 100)));
  return `${worst.filter(([, i]) => i % PER_ROUND === 0).length} of ${worst.length}`;
};
const spread = (p) => {
  const ratios = rounds.map((x) => pct(x.weir, p) / pct(x.go, p)).sort((a, b) => a - b);
  return { min: Number(ratios[0].toFixed(3)), median: Number(pct(ratios, 0.5).toFixed(3)), max: Number(ratios.at(-1).toFixed(3)) };
};
const roundSpread = { p50: spread(0.5), p99: spread(0.99) };
const churnSeconds = { weir: { client: 0, server: 0, n: 0 }, go: { client: 0, server: 0, n: 0 } };
for (let r = 0; r < CHURN_ROUNDS; r++) {
  const n = Math.floor(CHURN / CHURN_ROUNDS) + (r < CHURN % CHURN_ROUNDS ? 1 : 0);
  for (const name of r % 2 === 0 ? ['weir', 'go'] : ['go', 'weir']) {
    const x = await (name === 'weir' ? churnRound(wl, ws, n) : churnRound(gl, gs, n));
    churnSeconds[name].client += x.client;
    churnSeconds[name].server += x.server;
    churnSeconds[name].n += n;
  }
}
const us = (t) => ({ client: Number(((t.client / t.n) * 1e6).toFixed(1)), server: Number(((t.server / t.n) * 1e6).toFixed(1)) });
const weirChurn = us(churnSeconds.weir);
const goChurn = us(churnSeconds.go);
await stop(wl, gs, gl, ...(BARE ? [bl, bs] : []));
const ms = (x) => `${x.p50_ms.toFixed(3)}/${x.p90_ms.toFixed(3)}/${x.p99_ms.toFixed(3)}`;
console.log(`open p50/p90/p99 ms (${ROUNDS} interleaved rounds of ${PER_ROUND} opens after ${OPEN_WARMUP} warm-up): weir ${ms(weirOpen)}   go ${ms(goOpen)}`);
const sp = (x) => `${x.min}/${x.median}/${x.max}`;
console.log(`  weir ÷ go per round, min/median/max: p50 ${sp(roundSpread.p50)}   p99 ${sp(roundSpread.p99)}`);
console.log(`  of the slowest 1%, a round's first open: ${openSystems.map((x) => `${x} ${firstOfRound(samples[x])}`).join(', ')}`);
if (BARE) console.log(`  bare node:http2 (HBONE_BENCH_BARE, no Weir code) open p50/p90/p99 ms ${ms(bareOpen)}; weir ÷ bare p50 ${(weirOpen.p50_ms / bareOpen.p50_ms).toFixed(3)} p99 ${(weirOpen.p99_ms / bareOpen.p99_ms).toFixed(3)}`);
if (GC_DIAG) {
  // Of the slowest 1% and 10% of Weir opens, how many overlapped a GC pause in the client or server.
  const overlaps = (o, evs) => evs.some(([t, d]) => t < o[1] && t + d > o[0]);
  const byLatency = [...gcDiag.opens].sort((a, b) => b[1] - b[0] - (a[1] - a[0]));
  const share = (frac) => {
    const slow = byLatency.slice(0, Math.max(1, Math.round(byLatency.length * frac)));
    const c = slow.filter((o) => overlaps(o, gcDiag.client)).length;
    const sv = slow.filter((o) => overlaps(o, gcDiag.server)).length;
    const either = slow.filter((o) => overlaps(o, gcDiag.client) || overlaps(o, gcDiag.server)).length;
    return `${slow.length} slowest (≥ ${(slow.at(-1)[1] - slow.at(-1)[0]).toFixed(3)} ms): client GC ${c}, server GC ${sv}, either ${either}`;
  };
  const all = gcDiag.opens.filter((o) => overlaps(o, gcDiag.client) || overlaps(o, gcDiag.server)).length;
  const gcSum = (evs) => {
    const d = evs.map((e) => e[1]).sort((a, b) => a - b);
    return `${d.length} pauses (kinds ${[...new Set(evs.map((e) => e[2]))].join('/')}), median ${(d[Math.floor(d.length / 2)] ?? 0).toFixed(3)} ms, max ${(d.at(-1) ?? 0).toFixed(3)} ms`;
  };
  console.log(`  GC (HBONE_BENCH_GC): weir client ${gcSum(gcDiag.client)}; server ${gcSum(gcDiag.server)} during ${gcDiag.opens.length} opens (${all} overlapped one)`);
  console.log(`  ${share(0.01)}; ${share(0.1)}`);
}
if (SCHED_DIAG) {
  // µs per open + close: on a CPU, and runnable but waiting for one (all threads; Node's main thread in brackets).
  const per = (x, i) => ((x[i] / 1000) / (ROUNDS * PER_ROUND)).toFixed(1);
  const side = (d) => `on CPU ${per(d.all, 0)} (main ${per(d.main, 0)}), waiting ${per(d.all, 1)} (main ${per(d.main, 1)}) in ${(d.all[2] / (ROUNDS * PER_ROUND)).toFixed(1)} slices`;
  for (const name of openSystems) console.log(`  scheduler (HBONE_BENCH_SCHED) ${name} µs per open in the rounds: client ${side(schedDiag[name].client)}; server ${side(schedDiag[name].server)}`);
}
console.log(`CPU µs per tunnel open + close (${CHURN} in ${CHURN_ROUNDS} interleaved rounds, 8 at a time): weir client ${weirChurn.client} + server ${weirChurn.server}   go client ${goChurn.client} + server ${goChurn.server}`);

if (SKIP.has('rss')) {
  await stop(ws, iperf);
  process.exit(0);
}

// --- memory per idle tunnel (client + server process RSS growth) ----------------------------------
const rssOf = async (p) => {
  const before = p.log.length;
  p.stdin.write('rss\n');
  const re = /RSS (\d+) HEAP (\d+) YOUNG (\d+)/g;
  for (;;) {
    re.lastIndex = before;
    const m = re.exec(p.log);
    if (m) return { rss: Number(m[1]), heap: Number(m[2]), young: Number(m[3]) };
    await new Promise((r) => setTimeout(r, 20));
  }
};
/**
 * RSS growth of a client process opening TUNNELS idle tunnels through a server process (both report
 * after a GC at the start, the middle and the end), per tunnel in KiB, with the live JS heap and
 * young generation parts.
 */
async function idleGrowth(rc, rs) {
  const [, clientBaseText, clientBaseHeap, clientBaseYoung] = await waitLine(rc, /BASE (\d+) HEAP (\d+) YOUNG (\d+)/, 60_000);
  const clientBase = Number(clientBaseText);
  const serverBaseAll = await rssOf(rs);
  const serverBase = serverBaseAll.rss;
  rc.stdin.write('next\n');
  const clientMid = Number((await waitLine(rc, /MID (\d+)/, 180_000))[1]);
  const serverMid = (await rssOf(rs)).rss;
  rc.stdin.write('next\n');
  const [, clientEndText, nText, sessionsText, clientEndHeap, clientEndYoung] = await waitLine(rc, /END (\d+) (\d+) (\d+) HEAP (\d+) YOUNG (\d+)/, 180_000);
  const serverEndAll = await rssOf(rs);
  const serverEnd = serverEndAll.rss;
  await stop(rc, rs);
  const n = Number(nText);
  const kib = (bytes, count) => Number((bytes / count / 1024).toFixed(2));
  return {
    n,
    sessions: sessionsText,
    client: kib(Number(clientEndText) - clientBase, n),
    server: kib(serverEnd - serverBase, n),
    // Second half only: what each further tunnel costs once heaps and pools have their size.
    marginal: kib(Number(clientEndText) - clientMid + (serverEnd - serverMid), n - Math.floor(n / 2)),
    // Where the RSS growth is: live JS objects, V8's young generation (a one-off growth to its maximum,
    // spread over the tunnels), and the rest (native http2/nghttp2 stream state, sockets, allocator slack).
    heapClient: kib(Number(clientEndHeap) - Number(clientBaseHeap), n),
    heapServer: kib(serverEndAll.heap - serverBaseAll.heap, n),
    youngClient: kib(Number(clientEndYoung) - Number(clientBaseYoung), n),
    youngServer: kib(serverEndAll.young - serverBaseAll.young, n),
  };
}
// Weir: the server from the latency run (already warm).
const rss = await idleGrowth(node('weir-rss', { ...clientFiles, peer: local(wsp), target: local(holdPort), expect: SERVER_ID, n: TUNNELS }), ws);
const n = rss.n;
const perTunnelKiB = rss.client + rss.server;
console.log(`idle tunnels: ${n} on ${rss.sessions} sessions; RSS growth per tunnel: client ${rss.client} KiB + server ${rss.server} KiB = ${perTunnelKiB.toFixed(2)} KiB (marginal ${rss.marginal} KiB)`);
console.log(`  of which live JS heap: client ${rss.heapClient} KiB, server ${rss.heapServer} KiB; V8 young generation growth: client ${rss.youngClient} KiB, server ${rss.youngServer} KiB`);
// For scale: the same tunnels through a bare node:http2 client and server (no Weir code, Node's
// defaults, the streams piped as a first HBONE on node:http2 would), measured the same way.
const bareServer = node('h2-server', serverFiles);
const bare = await idleGrowth(node('h2-rss', { ...clientFiles, peer: local(await ready(bareServer)), target: local(holdPort), n: TUNNELS }), bareServer);
const barePerTunnelKiB = bare.client + bare.server;
console.log(
  `  bare node:http2 tunnel (no Weir code): client ${bare.client} KiB + server ${bare.server} KiB = ${barePerTunnelKiB.toFixed(2)} KiB per idle tunnel on ${bare.sessions} sessions (live JS heap ${bare.heapClient} + ${bare.heapServer} KiB, young generation ${bare.youngClient} + ${bare.youngServer} KiB); Weir ÷ bare ${(perTunnelKiB / barePerTunnelKiB).toFixed(2)}`,
);

holder.close();
await stop(iperf);
if (SKIP.size > 0) process.exit(0);
const r = (a, b) => Number((a / b).toFixed(3));
console.log(
  JSON.stringify({
    throughput_1s_vs_go: r(results.weir.s1, results.go.s1),
    throughput_1s_vs_stunnel: r(results.weir.s1, results.stunnel.s1),
    throughput_1s_vs_node_tls: r(results.weir.s1, results['node-tls'].s1),
    throughput_4s_vs_go: r(results.weir.s4, results.go.s4),
    open_p99_vs_go: r(weirOpen.p99_ms, goOpen.p99_ms),
    open_p90_vs_go: r(weirOpen.p90_ms, goOpen.p90_ms),
    open_p50_vs_go: r(weirOpen.p50_ms, goOpen.p50_ms),
    open_round_vs_go: roundSpread,
    open_cpu_vs_go: r(weirChurn.client + weirChurn.server, goChurn.client + goChurn.server),
    rss_per_tunnel_kib: Number(perTunnelKiB.toFixed(2)),
    rss_per_tunnel_kib_client: rss.client,
    rss_per_tunnel_kib_server: rss.server,
    rss_per_tunnel_kib_marginal: rss.marginal,
    heap_per_tunnel_kib_client: rss.heapClient,
    heap_per_tunnel_kib_server: rss.heapServer,
    young_gen_per_tunnel_kib_client: rss.youngClient,
    young_gen_per_tunnel_kib_server: rss.youngServer,
    rss_per_tunnel_kib_bare_h2: Number(barePerTunnelKiB.toFixed(2)),
    rss_per_tunnel_kib_bare_h2_client: bare.client,
    rss_per_tunnel_kib_bare_h2_server: bare.server,
    cpu_per_gib_1s_vs_go: r(results.weir.cpu1, results.go.cpu1),
    cpu_per_gib_4s_vs_go: r(results.weir.cpu4, results.go.cpu4),
    gbps: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, { s1: Number(v.s1.toFixed(3)), s4: Number(v.s4.toFixed(3)) }])),
    cpu_s_per_gib: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, { s1: Number(v.cpu1.toFixed(3)), s4: Number(v.cpu4.toFixed(3)) }])),
    open_ms: { weir: weirOpen, go: goOpen, ...(BARE ? { bare_h2: bareOpen } : {}) },
    open_cpu_us: { weir: weirChurn, go: goChurn },
    v8_flags: V8_FLAGS,
    open_warmup: OPEN_WARMUP,
    open_rounds: ROUNDS,
    open_per_round: PER_ROUND,
    tunnels: n,
    seconds: SECONDS,
    warmup_s: WARMUP,
  }),
);
process.exit(0);
