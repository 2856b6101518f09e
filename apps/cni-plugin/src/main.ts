#!/usr/bin/env node
/**
 * weir-cni: the chained CNI plugin binary. The container runtime execs it with CNI_* variables and
 * the network config on stdin; it prints a result (or a CNI error) on stdout and exits.
 */
import { readFileSync } from 'node:fs';
import { isatty } from 'node:tty';
import { lineLogger, runCni } from '@weir/cni-plugin';

/** LOG_FORMAT, when set, checked with zod (loaded only then: it costs an exec ~8 ms of CPU). */
async function logFormat(): Promise<{ ok: true; format: 'text' | 'json' } | { ok: false; errors: string[] }> {
  if (process.env['LOG_FORMAT'] === undefined) return { ok: true, format: 'text' };
  const z = await import('zod');
  const parsed = z.object({ LOG_FORMAT: z.enum(['text', 'json']) }).safeParse(process.env);
  if (parsed.success) return { ok: true, format: parsed.data.LOG_FORMAT };
  return { ok: false, errors: parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`) };
}

async function readStdin(): Promise<Buffer> {
  // VERSION may be exec'd with a terminal or nothing on stdin.
  if (isatty(0)) return Buffer.alloc(0);
  try {
    // One blocking read to EOF: the runtime writes the config and closes the pipe. Cheaper at start-up
    // than process.stdin, whose stream machinery costs ~5–10 ms of CPU per exec.
    return readFileSync(0);
  } catch (err) {
    // A non-blocking stdin (EAGAIN) is read as a stream.
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
  }
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function main(): Promise<number> {
  const appEnv = await logFormat();
  if (!appEnv.ok) {
    for (const e of appEnv.errors) process.stderr.write(`weir-cni: ${e}\n`);
    return 2;
  }
  const stdin = await readStdin();
  const outcome = await runCni(
    { env: process.env, stdin },
    {
      logger: (level) => lineLogger(level, (line) => process.stderr.write(line), { format: appEnv.format }),
    },
  );
  if (outcome.stdout !== '') process.stdout.write(`${outcome.stdout}\n`);
  return outcome.exitCode;
}

// Exit as soon as the answer is written (stdout is a pipe, written synchronously on Linux): the
// runtime waits for the exit, and no lingering handle may hold a pod's sandbox creation.
main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stdout.write(`${JSON.stringify({ cniVersion: '1.1.0', code: 999, msg: `weir-cni crashed: ${String(err)}` })}\n`);
    process.exit(1);
  },
);
