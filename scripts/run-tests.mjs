#!/usr/bin/env node
// Runs every workspace's tests through turborepo and ends with one plain summary line
// ("N passed, N failed") summed over the vitest runs, keeping turbo's exit status.
import { spawn } from 'node:child_process';

const args = ['turbo', 'run', 'test', '--concurrency=2', '--continue', ...process.argv.slice(2)];
const child = spawn('npx', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1', FORCE_COLOR: '0' } });

let passed = 0;
let failed = 0;
let skipped = 0;
let carry = '';
const ansi = /\u001b\[[0-9;]*m/g;
function scan(chunk) {
  const text = carry + chunk.toString('utf8');
  const lines = text.split('\n');
  carry = lines.pop() ?? '';
  for (const raw of lines) {
    const line = raw.replace(ansi, '');
    // vitest: "      Tests  2 failed | 40 passed | 1 skipped (43)"
    const m = /^(?:\S+:\s*)?\s*Tests\s+(.*)\((\d+)\)\s*$/.exec(line);
    if (!m) continue;
    for (const part of m[1].split('|')) {
      const p = /(\d+)\s+(passed|failed|skipped|todo)/.exec(part);
      if (!p) continue;
      const n = Number(p[1]);
      if (p[2] === 'passed') passed += n;
      else if (p[2] === 'failed') failed += n;
      else skipped += n;
    }
  }
}
child.stdout.on('data', (d) => { process.stdout.write(d); scan(d); });
child.stderr.on('data', (d) => { process.stderr.write(d); scan(d); });
child.on('close', (code) => {
  scan('\n');
  const status = code ?? 1;
  console.log(`\ntests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  if (status === 0 && failed > 0) process.exit(1);
  if (status === 0 && passed === 0) {
    console.error('tests: no test ran');
    process.exit(1);
  }
  process.exit(status);
});
