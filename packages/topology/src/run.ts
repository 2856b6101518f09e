import { spawn } from 'node:child_process';
import { TopologyError } from './errors.js';

/** PATH given to every child: libraries do not forward the caller's environment implicitly. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export const NETNS_DIR = '/var/run/netns';

export interface RunResult {
  stdout: string;
  stderr: string;
  /** Exit code, or null when the process died of a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface RunOptions {
  /** Environment of the child; PATH defaults to {@link DEFAULT_PATH}. */
  env?: Record<string, string>;
  /** Written to stdin, then stdin is closed. */
  input?: string | Buffer;
  /** Killed with SIGKILL after this long. Default 30 s. */
  timeoutMs?: number;
  /** Throw a TopologyError when the exit code is not 0. */
  check?: boolean;
}

/** Run a command to completion, capturing output. Never uses a shell. */
export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: { PATH: DEFAULT_PATH, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.stdin.on('error', () => {
      // The child may exit without reading its input (EPIPE); its exit status tells the story.
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new TopologyError('TOPOLOGY_COMMAND_FAILED', `cannot run ${cmd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result: RunResult = {
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
        code,
        signal,
      };
      if (timedOut) {
        reject(new TopologyError('TOPOLOGY_TIMEOUT', `${describe(cmd, args)} did not finish within ${timeoutMs} ms`));
      } else if (options.check && code !== 0) {
        reject(
          new TopologyError(
            'TOPOLOGY_COMMAND_FAILED',
            `${describe(cmd, args)} exited with ${code ?? signal}: ${result.stderr.trim() || result.stdout.trim()}`,
          ),
        );
      } else {
        resolve(result);
      }
    });
    child.stdin.end(options.input ?? '');
  });
}

/** The argv that runs `cmd args` inside the network namespace at `netnsPath` (and nothing else). */
export function netnsCommand(netnsPath: string, cmd: string, args: readonly string[]): { cmd: string; args: string[] } {
  return { cmd: 'nsenter', args: [`--net=${netnsPath}`, '--', cmd, ...args] };
}

/** Run a command inside a network namespace; resolves with its output and exit status. */
export function execInNetns(
  netnsPath: string,
  cmd: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const wrapped = netnsCommand(netnsPath, cmd, args);
  return run(wrapped.cmd, wrapped.args, options);
}

/** `ip -n <netns> ...`, throwing on failure. */
export async function ip(netnsName: string | undefined, args: readonly string[]): Promise<string> {
  const full = netnsName === undefined ? args : ['-n', netnsName, ...args];
  return (await run('ip', full, { check: true })).stdout;
}

function describe(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].join(' ');
}
