/* global process, console */
// The benches' profiling switches, the same in every bench that starts Node proxies:
//   BENCH_CPU_PROF=<dir>  each Node process started with cpuProfArgs() writes a V8 CPU profile there when
//                         it exits (<who>-<bench pid>.cpuprofile); printCpuProfiles() summarizes them
//   BENCH_PERF=<dir>      perfRecord() runs `perf record -g` on given processes for a measured stretch
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const PROFILE = join(dirname(fileURLToPath(import.meta.url)), 'profile.mjs');

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
