#!/usr/bin/env node
/* global process, console */
// Summarizes a sampling heap profile written by alloc-preload.mjs (BENCH_ALLOC_PROF): bytes allocated per
// function (self), top N, optionally per unit (e.g. per request). Usage: node bench/common/alloc-profile.mjs <file> [top=20] [units=1]
import { readFileSync } from 'node:fs';

/** { total, rows: [[function and location, bytes]] } by self size, largest first. */
export function allocSummary(file) {
  const prof = JSON.parse(readFileSync(file, 'utf8'));
  const self = new Map();
  let total = 0;
  const walk = (node) => {
    const cf = node.callFrame;
    const key = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(packages|apps)\//, '$1/')}:${cf.lineNumber + 1}`;
    if (node.selfSize > 0) self.set(key, (self.get(key) ?? 0) + node.selfSize);
    total += node.selfSize;
    for (const c of node.children) walk(c);
  };
  walk(prof.head);
  return { total, rows: [...self.entries()].sort((a, b) => b[1] - a[1]) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [file, topText, unitsText] = process.argv.slice(2);
  const units = Number(unitsText ?? 1);
  const { total, rows } = allocSummary(file);
  console.log(`allocated ${(total / units).toFixed(0)} bytes${units === 1 ? '' : ' per unit'} (sampled estimate)`);
  for (const [k, b] of rows.slice(0, Number(topText ?? 20))) console.log(`${((b / total) * 100).toFixed(1).padStart(5)}%  ${(b / units).toFixed(0).padStart(8)} B  ${k}`);
}
