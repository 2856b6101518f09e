#!/usr/bin/env node
/**
 * weir-cni: the chained CNI plugin binary. The container runtime execs it with CNI_* variables and
 * the network config on stdin; it prints a result (or a CNI error) on stdout and exits.
 */
import { readFileSync, writeSync } from 'node:fs';
import { isatty } from 'node:tty';
import { lineLogger, runCni } from '@weir/cni-plugin';
import * as z from 'zod/mini';

/** The one variable the plugin reads besides CNI_*: its own name, so no unrelated setting can reach it. */
const LOG_FORMAT_VAR = 'WEIR_CNI_LOG_FORMAT';

/**
 * The log format from WEIR_CNI_LOG_FORMAT, checked with zod (zod/mini: a few KiB in the bundle, where
 * classic zod costs an exec ~30 ms of CPU). The plugin inherits the container runtime's environment, and a
 * log setting must never fail a pod's ADD or DEL: a bad value is reported and text is used.
 */
function logFormat(env: NodeJS.ProcessEnv): { format: 'text' | 'json'; warning?: string } {
  const value = env[LOG_FORMAT_VAR];
  if (value === undefined || value === '') return { format: 'text' };
  const parsed = z.enum(['text', 'json']).safeParse(value);
  if (parsed.success) return { format: parsed.data };
  return { format: 'text', warning: `${LOG_FORMAT_VAR} ${JSON.stringify(value)} ignored (text or json), logging as text` };
}

/**
 * Writes all of `text` to `fd` synchronously: fs.writeSync rather than process.stdout/stderr, whose
 * streams cost each exec ~7 ms of CPU to create. A pipe the runtime left non-blocking may answer
 * EAGAIN when full: wait a millisecond and go on (for at most 5 s).
 */
function writeAll(fd: number, text: string): void {
  let rest = Buffer.from(text, 'utf8');
  const deadline = Date.now() + 5000;
  while (rest.length > 0) {
    try {
      rest = rest.subarray(writeSync(fd, rest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN' || Date.now() > deadline) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

/** A log line to stderr; a log that cannot be written (nobody reading) never fails the command. */
function logLine(line: string): void {
  try {
    writeAll(2, line);
  } catch {
    // The runtime keeps only stdout's result; a lost log line changes nothing for the pod.
  }
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
  const { format, warning } = logFormat(process.env);
  let warned = false;
  const stdin = await readStdin();
  const outcome = await runCni(
    { env: process.env, stdin },
    {
      logger: (level) => {
        const logger = lineLogger(level, logLine, { format });
        // Once, whichever logger the command ends up using (the config's level may silence it).
        if (warning !== undefined && !warned) {
          warned = true;
          logger.warn({ variable: LOG_FORMAT_VAR }, warning);
        }
        return logger;
      },
    },
  );
  if (outcome.stdout !== '') writeAll(1, `${outcome.stdout}\n`);
  return outcome.exitCode;
}

// Exit as soon as the answer is written (writeAll is synchronous): the
// runtime waits for the exit, and no lingering handle may hold a pod's sandbox creation.
main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    writeAll(1, `${JSON.stringify({ cniVersion: '1.1.0', code: 999, msg: `weir-cni crashed: ${String(err)}` })}\n`);
    process.exit(1);
  },
);
