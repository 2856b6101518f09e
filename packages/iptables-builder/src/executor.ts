import { spawn } from 'node:child_process';

export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number;
}

/** Runs one command. Inject another to run in a netns, over ssh, or to record in tests. */
export interface CommandExecutor {
  run(cmd: string, args: readonly string[], opts?: { input?: string }): Promise<CommandResult>;
}

/**
 * Runs commands in this process's network namespace with `child_process.spawn` (no shell, so no
 * quoting issues). A missing binary resolves with code 127 and the spawn error in `stderr`.
 */
export const localExecutor: CommandExecutor = {
  run(cmd, args, opts) {
    return new Promise((resolve) => {
      const child = spawn(cmd, [...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      // A command that exits without reading stdin makes the write fail with EPIPE; its exit code says more.
      child.stdin.on('error', () => undefined);
      child.on('error', (e) => resolve({ stdout: '', stderr: `${cmd}: ${e.message}`, code: 127 }));
      child.on('close', (code, signal) =>
        resolve({
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8') + (signal ? `${cmd}: killed by ${signal}\n` : ''),
          code: code ?? 128,
        }),
      );
      child.stdin.end(opts?.input ?? '');
    });
  },
};

/**
 * Runs commands inside the network namespace at `netnsPath` (e.g. `/var/run/netns/x` or
 * `/proc/<pid>/ns/net`) as `nsenter --net=<path> -- <cmd> <args…>`. nsenter switches only the
 * network namespace of the child, so mount namespace, binaries and files stay the caller's; the
 * Node process itself never changes namespace. Needs CAP_SYS_ADMIN (root).
 */
export function netnsExecutor(netnsPath: string, base: CommandExecutor = localExecutor): CommandExecutor {
  return {
    run: (cmd, args, opts) => base.run('nsenter', [`--net=${netnsPath}`, '--', cmd, ...args], opts),
  };
}
