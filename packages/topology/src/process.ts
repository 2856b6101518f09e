import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TopologyError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import { DEFAULT_PATH, netnsCommand } from './run.js';

export interface SpawnOptions {
  /** Names the process in logs, state and the default log file (`<stateDir>/logs/<name>.log`). */
  name: string;
  /** Network namespace path the process runs in (a pod's or node's `netnsPath`). */
  netns: string;
  cmd: string;
  args?: readonly string[];
  /** The child's whole environment; PATH defaults to a standard system PATH. */
  env?: Record<string, string>;
  cwd?: string;
  /** stdout and stderr go here (truncated at start). */
  logFile?: string;
  /** cgroup v2 directory the process joins before it execs (pods put their processes in theirs). */
  cgroup?: string;
}

/** What survives in the state file, enough to find and stop the process from another process. */
export interface ProcessRecord {
  name: string;
  pid: number;
  /** `/proc/<pid>/stat` start time, guarding against signalling a recycled pid. */
  startTime: number;
  netns: string;
  logFile: string;
  cmd: string;
  args: string[];
  cgroup?: string;
}

export interface ProcessExit {
  /** Exit code; null when killed by a signal or when the process was not our child. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

const POLL_MS = 50;

/** A real process inside a netns, in its own process group, its output captured to a log file. */
export class SupervisedProcess {
  #exited: Promise<ProcessExit> | undefined;
  #done = false;

  private constructor(
    readonly record: ProcessRecord,
    private readonly child: ChildProcess | undefined,
    childExit: Promise<ProcessExit> | undefined,
    private readonly logger: Logger,
  ) {
    if (childExit) {
      this.#exited = childExit.then((exit) => {
        this.#done = true;
        this.logger.info({ process: record.name, pid: record.pid, ...exit }, 'process exited');
        return exit;
      });
    }
  }

  /**
   * Settles when the process is gone. For an attached handle (not our child) the code is unknown, and
   * /proc is polled only once someone asks, so a handle never keeps the caller's event loop alive.
   */
  get exited(): Promise<ProcessExit> {
    this.#exited ??= this.#pollExit();
    return this.#exited;
  }

  get name(): string {
    return this.record.name;
  }
  get pid(): number {
    return this.record.pid;
  }
  get logFile(): string {
    return this.record.logFile;
  }
  get netns(): string {
    return this.record.netns;
  }
  get running(): boolean {
    return !this.#done && isSameProcess(this.record.pid, this.record.startTime);
  }

  static async start(options: SpawnOptions & { logFile: string }, logger: Logger = silentLogger): Promise<SupervisedProcess> {
    const args = [...(options.args ?? [])];
    let argv = netnsCommand(options.netns, options.cmd, args);
    if (options.cgroup !== undefined) {
      // Join the cgroup before exec so that everything the program forks is in it too.
      argv = { cmd: 'sh', args: ['-c', 'echo $$ > "$0" && exec "$@"', `${options.cgroup}/cgroup.procs`, argv.cmd, ...argv.args] };
    }
    await mkdir(dirname(options.logFile), { recursive: true });
    const fd = openSync(options.logFile, 'w');
    let child: ChildProcess;
    let childExit: Promise<ProcessExit>;
    try {
      child = spawn(argv.cmd, argv.args, {
        env: { PATH: DEFAULT_PATH, ...options.env },
        cwd: options.cwd,
        stdio: ['ignore', fd, fd],
        // Own process group: stop() signals the whole group, and the process outlives a crashed parent
        // (crash recovery finds it by netns).
        detached: true,
      });
      // Listen before any await: a program that fails at once exits before the next tick.
      childExit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (err) {
      throw new TopologyError('TOPOLOGY_PROCESS_FAILED', `cannot start process ${options.name} (${options.cmd}): ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      closeSync(fd);
    }
    const pid = child.pid as number;
    const record: ProcessRecord = {
      name: options.name,
      pid,
      // -1 when it is already gone: no later process at that pid can match.
      startTime: (await readStartTime(pid)) ?? -1,
      netns: options.netns,
      logFile: options.logFile,
      cmd: options.cmd,
      args,
      ...(options.cgroup !== undefined ? { cgroup: options.cgroup } : {}),
    };
    logger.info({ process: options.name, pid, netns: options.netns, cmd: options.cmd, args }, 'process started');
    return new SupervisedProcess(record, child, childExit, logger);
  }

  /** A handle on a process started by another (or an earlier) process, from its record. */
  static attach(record: ProcessRecord, logger: Logger = silentLogger): SupervisedProcess {
    return new SupervisedProcess(record, undefined, undefined, logger);
  }

  /** Let the caller's event loop end while the process keeps running (e.g. `weirctl sandbox up`). */
  unref(): void {
    this.child?.unref();
  }

  /** Send `signal` to the process group, then SIGKILL after `timeoutMs`. Resolves when it is gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5000): Promise<ProcessExit> {
    // Not running: `exited` settles at once (a child's exit event is due; a handle's poll sees it gone).
    if (!this.running) return this.exited;
    this.logger.info({ process: this.name, pid: this.pid, signal }, 'stopping process');
    this.#signalGroup(signal);
    const first = await this.#exitWithin(timeoutMs);
    if (first) return first;
    this.logger.warn({ process: this.name, pid: this.pid, timeoutMs }, 'process ignored signal, sending SIGKILL');
    this.#signalGroup('SIGKILL');
    const second = await this.#exitWithin(5000);
    if (second) return second;
    throw new TopologyError('TOPOLOGY_TIMEOUT', `process ${this.name} (pid ${this.pid}) survived SIGKILL for 5 s`);
  }

  async readLog(): Promise<string> {
    try {
      return await readFile(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** Wait until the log contains `pattern`; returns the first matching line. Fails early if the process exits. */
  async waitForOutput(pattern: RegExp | string, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const log = await this.readLog();
      const line = log.split('\n').find((l) => (typeof pattern === 'string' ? l.includes(pattern) : pattern.test(l)));
      if (line !== undefined) return line;
      if (!this.running) {
        throw new TopologyError('TOPOLOGY_PROCESS_FAILED', `process ${this.name} exited before printing ${String(pattern)}; log: ${tail(log)}`);
      }
      if (Date.now() > deadline) {
        throw new TopologyError('TOPOLOGY_TIMEOUT', `process ${this.name} did not print ${String(pattern)} within ${timeoutMs} ms; log: ${tail(log)}`);
      }
      await sleep(POLL_MS);
    }
  }

  /** The exit, or undefined after `ms`; the timer is cancelled either way so it holds no event loop. */
  async #exitWithin(ms: number): Promise<ProcessExit | undefined> {
    const timer = new AbortController();
    try {
      return await Promise.race([this.exited, sleep(ms, undefined, { signal: timer.signal })]);
    } finally {
      timer.abort();
    }
  }

  #signalGroup(signal: NodeJS.Signals): void {
    if (!isSameProcess(this.record.pid, this.record.startTime)) return;
    try {
      process.kill(-this.record.pid, signal);
    } catch {
      try {
        process.kill(this.record.pid, signal);
      } catch {
        // Gone between the check and the signal.
      }
    }
  }

  async #pollExit(): Promise<ProcessExit> {
    while (isSameProcess(this.record.pid, this.record.startTime)) await sleep(POLL_MS);
    this.#done = true;
    return { code: null, signal: null };
  }
}

/** Start time (clock ticks since boot) from /proc/<pid>/stat, undefined when the pid does not exist. */
export async function readStartTime(pid: number): Promise<number | undefined> {
  try {
    return parseStartTime(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Live (not a zombie) and the same process as recorded. */
export function isSameProcess(pid: number, startTime: number): boolean {
  let stat: string;
  try {
    // Synchronous on purpose: `running` is a getter, and /proc reads do not wait on a disk.
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return false;
  return parseStartTime(stat) === startTime;
}

function parseStartTime(stat: string): number | undefined {
  // Fields after "(comm) ": state is field 3, starttime is field 22.
  const value = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  return Number.isFinite(value) ? value : undefined;
}

function tail(log: string): string {
  const trimmed = log.trim();
  return trimmed.length > 600 ? `…${trimmed.slice(-600)}` : trimmed || '(empty)';
}
