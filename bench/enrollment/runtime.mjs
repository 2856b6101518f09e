/* global process */
// The simulated node's container runtime, as far as CNI goes. index.mjs starts it inside the node's
// netns (nsenter --net), so the plugins it execs run there as a runtime's would. One JSON request
// per stdin line, one JSON answer per stdout line:
//   {id, op: 'exec', bin, env, stdin} → {id, ms, code, signal, stdout, stderr}: ms from just before
//     spawn to the child's exit (its stdout and stderr are collected until they close);
//   {id, op: 'cpu'} → {id, self, children}: this process's CPU seconds and those of the plugins it
//     exec'd and reaped (cutime + cstime), i.e. the plugins' CPU.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { processCpu } from '../common/proc.mjs';

const reply = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

function exec({ id, bin, env, stdin }) {
  const t0 = process.hrtime.bigint();
  let exitMs;
  let stdout = '';
  let stderr = '';
  let child;
  try {
    child = spawn(bin, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    reply({ id, error: err.message });
    return;
  }
  child.on('exit', () => {
    exitMs = Number(process.hrtime.bigint() - t0) / 1e6;
  });
  child.stdout.on('data', (b) => (stdout += b));
  child.stderr.on('data', (b) => (stderr += b));
  child.on('error', (err) => reply({ id, error: err.message }));
  child.on('close', (code, signal) => reply({ id, ms: exitMs, code, signal, stdout, stderr: stderr.slice(-4000) }));
  child.stdin.on('error', () => {});
  child.stdin.end(stdin);
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const req = JSON.parse(line);
  if (req.op === 'exec') exec(req);
  else if (req.op === 'cpu') reply({ id: req.id, ...processCpu(process.pid) });
  else reply({ id: req.id, error: `unknown op ${req.op}` });
});
process.stdin.on('end', () => process.exit(0));
