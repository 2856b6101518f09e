/* global process, console, setTimeout */
// The benches' profiling switches, the same in every bench that starts Node proxies:
//   BENCH_CPU_PROF=<dir>  each Node process started with cpuProfArgs() writes a V8 CPU profile there when
//                         it exits (<who>-<bench pid>.cpuprofile); printCpuProfiles() summarizes them
//   BENCH_PERF=<dir>      perfRecord() runs `perf record -g` on given processes for a measured stretch
//   BENCH_ALLOC_PROF=<dir> each Node process started with allocProfArgs() runs V8's sampling heap profiler
//                         (freed objects included); allocMark() cuts a profile per process, so a measured
//                         stretch gives the JS heap bytes allocated per request and where
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const PROFILE = join(here, 'profile.mjs');
const ALLOC_PRELOAD = pathToFileURL(join(here, 'alloc-preload.mjs')).href;

/** BENCH_CPU_PROF as an absolute path (the children run with other working directories), or undefined. */
export function cpuProfDir() {
  const dir = process.env.BENCH_CPU_PROF;
  return dir ? resolve(dir) : undefined;
}

/** Node flags that make the process `who` write its CPU profile on exit; none without BENCH_CPU_PROF. */
export function cpuProfArgs(who) {
  const dir = cpuProfDir();
  if (dir === undefined) return [];
  mkdirSync(dir, { recursive: true });
  return ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${who}-${process.pid}.cpuprofile`];
}

/** Self time per function (profile.mjs, idle left out) of every profile this bench's processes wrote. */
export function printCpuProfiles(top = 15) {
  const dir = cpuProfDir();
  if (dir === undefined) return;
  for (const f of readdirSync(dir).filter((x) => x.endsWith(`-${process.pid}.cpuprofile`)).sort()) {
    console.log(`--- ${f} (self time, top ${top}) ---`);
    console.log(spawnSync(process.execPath, [PROFILE, join(dir, f), String(top)], { encoding: 'utf8' }).stdout.trimEnd());
  }
}

/**
 * With BENCH_PERF: `perf record -g` at 999 Hz on each process ({ name, pid }) for `seconds`, to
 * <dir>/perf-<name>-<label>.data (read with `perf report -i`). Resolves when every recording ended; a
 * failed recording is reported on stderr, not thrown (the bench's figures do not depend on it).
 */
export function perfRecord(procs, label, seconds) {
  const dir = process.env.BENCH_PERF;
  if (!dir) return Promise.resolve();
  mkdirSync(dir, { recursive: true });
  return Promise.all(
    procs.map(
      ({ name, pid }) =>
        new Promise((done) => {
          const out = join(resolve(dir), `perf-${name}-${label}.data`);
          const p = spawn('perf', ['record', '-q', '-F', '999', '-g', '-o', out, '-p', String(pid), '--', 'sleep', String(seconds)], { stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          p.stderr.on('data', (d) => (err += d));
          p.once('error', (e) => (err += e.message));
          p.once('close', (c) => {
            if (c !== 0) console.error(`perf record of ${name} (pid ${pid}) failed, exit ${c}: ${err.trim()}`);
            done();
          });
        }),
    ),
  );
}

/** BENCH_ALLOC_PROF as an absolute path, or undefined. */
export function allocProfDir() {
  const dir = process.env.BENCH_ALLOC_PROF;
  return dir ? resolve(dir) : undefined;
}

/** Node flags and env that make the process `who` profile its allocations (alloc-preload.mjs); none without BENCH_ALLOC_PROF. */
export function allocProfArgs(who) {
  const dir = allocProfDir();
  if (dir === undefined) return { args: [], env: {} };
  mkdirSync(dir, { recursive: true });
  return { args: ['--import', ALLOC_PRELOAD], env: { BENCH_ALLOC_PROF_OUT: join(dir, `alloc-${who}-${process.pid}`) } };
}

const allocSeq = new Map();
/**
 * Each process ({ name, pid }, started with allocProfArgs(name)) writes the allocations since its last
 * mark (SIGUSR2); resolves to the files, in order, once all are written.
 */
export async function allocMark(procs) {
  const dir = allocProfDir();
  const files = procs.map(({ name, pid }) => {
    const seq = allocSeq.get(name) ?? 0;
    allocSeq.set(name, seq + 1);
    process.kill(pid, 'SIGUSR2');
    return join(dir, `alloc-${name}-${process.pid}-${seq}.heapprofile`);
  });
  const until = Date.now() + 30_000;
  while (!files.every((f) => existsSync(f))) {
    if (Date.now() > until) throw new Error(`allocation profiles not written within 30 s: ${files.join(', ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return files;
}
