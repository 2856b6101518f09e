#!/usr/bin/env node
/* global process, console, setImmediate, setTimeout, AbortController */
// `node bench/connections/connect-cost.mjs [--other <dir>/packages/netns/dist/index.js] [--prof]` (root):
// the per-connection cost of what ztunnel does with @weir/netns for each proxied connection, in one process:
// a connect made inside a pod netns (mark 1337, TCP_NODELAY, Istio keepalive 180/180/9, a per-connection
// abort signal) to a listener in that netns reached through a nat REDIRECT, and SO_ORIGINAL_DST on the
// accepted side (ztunnel's outbound listener under REDIRECT). Prints CPU µs per connection (both ends, accept and close included) and, with --prof, JS heap
// bytes allocated per connection (V8 sampling heap profiler, freed objects counted). With --other, the same
// against another build of @weir/netns (e.g. a copy of the tree before a change), rounds interleaved.
import { spawnSync } from 'node:child_process';
import { Session } from 'node:inspector';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({ options: { other: { type: 'string' }, prof: { type: 'boolean', default: false }, n: { type: 'string', default: '400' }, rounds: { type: 'string', default: '6' } } });
if (process.getuid?.() !== 0) {
  console.error('connect-cost needs root (a network namespace and a nat rule in it)');
  process.exit(1);
}
const N = Number(values.n);
const KA = Object.freeze({ idleS: 180, intervalS: 180, count: 9 });
const builds = { this: await import(pathToFileURL(join(here, '../../packages/netns/dist/index.js')).href) };
if (values.other) builds.other = await import(pathToFileURL(values.other).href);
const ns = `wcc${process.pid % 100000}`;
const sh = (cmd, args) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error}`);
};
sh('ip', ['netns', 'add', ns]);
try {
  sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  sh('ip', ['netns', 'exec', ns, 'iptables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', '127.0.0.1', '--dport', '9999', '-j', 'REDIRECT', '--to-ports', '9000']);
  const lib = builds.this;
  const handles = Object.fromEntries(Object.entries(builds).map(([k, b]) => [k, b.openNetns(`/run/netns/${ns}`)]));
  const server = await lib.listenTcp({ netns: handles.this, host: '127.0.0.1', port: 9000 });
  const accepted = [];
  server.on('connection', (s) => accepted.push(s.on('error', () => {})));
  // Both builds called alike, as ztunnel calls connectTcp (keepalive in the connect call, the abort signal made
  // only for a connect that waits).
  const connect = (name) =>
    builds[name].connectTcp({ netns: handles[name], family: 4, mark: 1337, host: '127.0.0.1', port: 9999, noDelay: true, timeoutMs: 10_000, keepalive: KA, signal: () => new AbortController().signal });
  const session = new Session();
  session.connect();
  const post = (m, p) => new Promise((res, rej) => session.post(m, p, (e, r) => (e ? rej(e) : res(r))));
  const totals = Object.fromEntries(Object.keys(builds).map((k) => [k, { cpu: 0, bytes: 0, n: 0 }]));
  const round = async (name, measure) => {
    const b = builds[name];
    const held = [];
    if (measure && values.prof) await post('HeapProfiler.startSampling', { samplingInterval: 256, includeObjectsCollectedByMinorGC: true, includeObjectsCollectedByMajorGC: true });
    const c0 = process.cpuUsage();
    for (let i = 0; i < N; i++) {
      held.push(await connect(name));
      while (accepted.length === 0) await new Promise((r) => setImmediate(r));
      const a = accepted.shift();
      b.originalDst(a);
      held.push(a);
    }
    const c = process.cpuUsage(c0);
    if (measure) {
      let bytes = 0;
      if (values.prof) {
        const walk = (node) => {
          bytes += node.selfSize;
          node.children.forEach(walk);
        };
        walk((await post('HeapProfiler.stopSampling')).profile.head);
      }
      Object.assign(totals[name], { cpu: totals[name].cpu + c.user + c.system, bytes: totals[name].bytes + bytes, n: totals[name].n + N });
    }
    for (const s of held) s.destroy();
    await new Promise((r) => setTimeout(r, 50));
  };
  const names = Object.keys(builds);
  for (const n of names) await round(n, false);
  for (let r = 0; r < Number(values.rounds); r++) for (const n of r % 2 ? [...names].reverse() : names) await round(n, true);
  for (const [n, t] of Object.entries(totals)) {
    console.log(`${n.padEnd(6)} CPU ${(t.cpu / t.n).toFixed(1)} µs per connection${values.prof ? `, JS heap ${(t.bytes / t.n).toFixed(0)} B per connection (profiler on: CPU inflated)` : ''} (${t.n} connections)`);
  }
  server.close();
  for (const h of Object.values(handles)) h.close();
} finally {
  spawnSync('ip', ['netns', 'del', ns]);
}
