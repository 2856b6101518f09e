#!/usr/bin/env node
/**
 * weir-cni: the chained CNI plugin binary. The container runtime execs it with CNI_* variables and
 * the network config on stdin; it prints a result (or a CNI error) on stdout and exits.
 */
import { readFileSync } from 'node:fs';
import { isatty } from 'node:tty';
import { lineLogger, runCni } from '@weir/cni-plugin';
import * as z from 'zod';

const appEnvSchema = z.object({
  LOG_FORMAT: z.enum(['text', 'json']).default('text'),
});

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
  // The default needs no parse (zod compiles a parser on first use, ~4 ms of CPU per exec).
  const appEnv = process.env['LOG_FORMAT'] === undefined ? { success: true as const, data: { LOG_FORMAT: 'text' as const } } : appEnvSchema.safeParse(process.env);
  if (!appEnv.success) {
    for (const issue of appEnv.error.issues) process.stderr.write(`weir-cni: ${issue.path.join('.')}: ${issue.message}\n`);
    return 2;
  }
  const stdin = await readStdin();
  const outcome = await runCni(
    { env: process.env, stdin },
    {
      logger: (level) => lineLogger(level, (line) => process.stderr.write(line), { format: appEnv.data.LOG_FORMAT }),
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
