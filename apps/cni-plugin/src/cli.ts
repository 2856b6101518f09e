/**
 * weir-cni's process logic: the container runtime execs it with CNI_* variables and the network
 * config on stdin; it prints a result (or a CNI error) on stdout and exits. Importing this has no
 * side effects, so the single executable can evaluate it into its start-up snapshot.
 */
import { lineLogger, runCni } from '@weir/cni-plugin';
import * as z from 'zod';

const appEnvSchema = z.object({
  LOG_FORMAT: z.enum(['text', 'json']).default('text'),
});

async function readStdin(): Promise<Buffer> {
  // VERSION may be exec'd with a terminal or nothing on stdin.
  if (process.stdin.isTTY) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function main(): Promise<number> {
  const appEnv = appEnvSchema.safeParse(process.env);
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

/**
 * Runs one CNI command and exits as soon as the answer is written (stdout is a pipe, written
 * synchronously on Linux): the runtime waits for the exit, and no lingering handle may hold a pod's
 * sandbox creation.
 */
export function runMain(): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stdout.write(`${JSON.stringify({ cniVersion: '1.1.0', code: 999, msg: `weir-cni crashed: ${String(err)}` })}\n`);
      process.exit(1);
    },
  );
}
