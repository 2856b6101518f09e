/* global process */
// Loaded into a ztunnel with `--import` when BENCH_ALLOC_PROF is set (allocProfArgs in profiling.mjs): V8's
// sampling heap profiler, counting objects that a scavenge or mark-compact already freed too, so a profile is
// everything allocated on the JS heap while it ran (sampled every BENCH_ALLOC_PROF_INTERVAL bytes, V8 scales
// the samples back up). Each SIGUSR2 writes the profile since the last one to `<BENCH_ALLOC_PROF_OUT>-<n>.heapprofile`
// (written to a temporary name, then renamed) and starts the next.
import { writeFileSync, renameSync } from 'node:fs';
import { Session } from 'node:inspector';

const out = process.env.BENCH_ALLOC_PROF_OUT;
if (out) {
  const session = new Session();
  session.connect();
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (err, r) => (err ? reject(err) : resolve(r))));
  const interval = Number(process.env.BENCH_ALLOC_PROF_INTERVAL ?? 1024);
  const start = () => post('HeapProfiler.startSampling', { samplingInterval: interval, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true });
  let n = 0;
  await start();
  process.on('SIGUSR2', () => {
    const seq = n++;
    void post('HeapProfiler.stopSampling').then(({ profile }) => {
      writeFileSync(`${out}-${seq}.tmp`, JSON.stringify(profile));
      renameSync(`${out}-${seq}.tmp`, `${out}-${seq}.heapprofile`);
      return start();
    });
  });
}
