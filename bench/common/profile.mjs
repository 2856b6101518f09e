#!/usr/bin/env node
/* global process, console */
// Summarizes a V8 .cpuprofile (from BENCH_CPU_PROF): self time per function, top N, with location.
// Usage: node bench/common/profile.mjs <file.cpuprofile> [top=25]
import { readFileSync } from 'node:fs';

const [file, topText] = process.argv.slice(2);
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map();
const dt = prof.timeDeltas;
for (let i = 0; i < prof.samples.length; i++) {
  const n = byId.get(prof.samples[i]);
  const cf = n.callFrame;
  const key = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(packages|apps)\//, '$1/')}:${cf.lineNumber + 1}`;
  self.set(key, (self.get(key) ?? 0) + (dt[i] ?? 0));
}
// Percentages of the busy time: a long-running server's profile is mostly (idle).
const idle = self.get('(idle) :0') ?? 0;
self.delete('(idle) :0');
const total = [...self.values()].reduce((a, b) => a + b, 0);
console.log(`busy ${(total / 1000).toFixed(0)} ms of ${((total + idle) / 1000).toFixed(0)} ms sampled (idle left out below)`);
for (const [k, us] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, Number(topText ?? 25))) {
  console.log(`${((us / total) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${k}`);
}
