import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { shellQuote, type CommandExecutor, type CommandResult } from '@weir/iptables-builder';

/**
 * Runs commands through one long-lived `sh` child (optionally `nsenter --net=<path> -- sh`) instead
 * of one child process per command. Commands run one at a time, in order; each gets its own
 * stdout, stderr and exit code, delimited by a random marker. Close it when done.
 */
export class ShellExecutor implements CommandExecutor {
  private readonly child: ChildProcessWithoutNullStreams;
  private out = '';
  private err = '';
  private exited: string | undefined;
  private pending: (() => void) | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(netnsPath?: string) {
    const argv = netnsPath === undefined ? ['sh', []] as const : ['nsenter', [`--net=${netnsPath}`, '--', 'sh']] as const;
    this.child = spawn(argv[0], [...argv[1]], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8').on('data', (d: string) => {
      this.out += d;
      this.pending?.();
    });
    this.child.stderr.setEncoding('utf8').on('data', (d: string) => {
      this.err += d;
      this.pending?.();
    });
    this.child.stdin.on('error', () => undefined);
    const gone = (why: string): void => {
      this.exited ??= why;
      this.pending?.();
    };
    this.child.on('error', (e) => gone(`${argv[0]}: ${e.message}`));
    this.child.on('close', (code, signal) => gone(`shell exited (${signal ?? code})`));
  }

  run(cmd: string, args: readonly string[], opts?: { input?: string }): Promise<CommandResult> {
    const next = this.queue.then(() => this.exec(cmd, args, opts?.input));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private exec(cmd: string, args: readonly string[], input: string | undefined): Promise<CommandResult> {
    const token = `__weir_${randomBytes(8).toString('hex')}_`;
    const line = [cmd, ...args].map(shellQuote).join(' ');
    const stdin =
      input === undefined ? ' </dev/null\n' : ` <<'${token}in'\n${input}${input.endsWith('\n') || input === '' ? '' : '\n'}${token}in\n`;
    const script = `${line}${stdin}__rc=$?; printf '%s%d\\n' '${token}' "$__rc"; printf '%s\\n' '${token}' >&2\n`;
    return new Promise((resolve) => {
      // Search only what arrived since the last look (a batch's output comes in many chunks).
      let outFrom = 0;
      let errFrom = 0;
      const check = (): void => {
        const oi = this.out.indexOf(token, outFrom);
        const code = oi < 0 ? undefined : /^(\d+)\n/.exec(this.out.slice(oi + token.length, oi + token.length + 12));
        const e = this.err.indexOf(`${token}\n`, errFrom);
        if (oi >= 0 && code && e >= 0) {
          this.pending = undefined;
          const stdout = this.out.slice(0, oi);
          const stderr = this.err.slice(0, e);
          this.out = this.out.slice(oi + token.length + code[0].length);
          this.err = this.err.slice(e + token.length + 1);
          resolve({ stdout, stderr, code: Number(code[1]) });
          return;
        }
        outFrom = oi >= 0 ? oi : Math.max(0, this.out.length - token.length);
        errFrom = e >= 0 ? e : Math.max(0, this.err.length - token.length - 1);
        if (this.exited !== undefined) {
          this.pending = undefined;
          resolve({ stdout: this.out, stderr: `${this.err}${cmd}: ${this.exited}`, code: 127 });
        }
      };
      this.pending = check;
      if (this.exited === undefined) this.child.stdin.write(script);
      check();
    });
  }

  get alive(): boolean {
    return this.exited === undefined;
  }

  /** Ends the shell (at EOF, once the last command finished). */
  close(): void {
    this.child.stdin.end();
  }
}

/**
 * A few long-lived shells that run commands for the agent, so that a capture spawns no process
 * from Node itself: spawning blocks Node's event loop until the child has exec'd, which on a loaded
 * node is tens to hundreds of milliseconds per spawn — a burst of captures would stall every other
 * pod's /cmdadd. Each command still forks inside its shell; that costs the shell, not the agent.
 */
export class ShellPool {
  private readonly idle: ShellExecutor[] = [];
  private readonly waiting: ((s: ShellExecutor) => void)[] = [];
  private created = 0;
  private closed = false;

  constructor(private readonly size: number) {}

  private async acquire(): Promise<ShellExecutor> {
    for (;;) {
      const shell = this.idle.pop();
      if (!shell) break;
      if (shell.alive) return shell;
      this.created--;
    }
    if (this.created < this.size) {
      this.created++;
      return new ShellExecutor();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(shell: ShellExecutor): void {
    if (this.closed || !shell.alive) {
      shell.close();
      this.created--;
      const next = this.waiting.shift();
      if (next) void this.acquire().then(next);
      return;
    }
    const next = this.waiting.shift();
    if (next) next(shell);
    else this.idle.push(shell);
  }

  /**
   * Starts every shell now (at agent start-up), so that the first burst of captures does not pay
   * for the spawns, each of which blocks the event loop, while pods wait for their /cmdadd answer.
   */
  warm(): void {
    while (!this.closed && this.created < this.size) {
      this.created++;
      this.idle.push(new ShellExecutor());
    }
  }

  /** Runs `fn` with one shell to itself (its commands run in order). */
  async with<T>(fn: (exec: CommandExecutor) => Promise<T>): Promise<T> {
    const shell = await this.acquire();
    try {
      return await fn(shell);
    } finally {
      this.release(shell);
    }
  }

  /** An executor taking a shell per command. */
  readonly executor: CommandExecutor = {
    run: (cmd, args, opts) => this.with((shell) => shell.run(cmd, args, opts)),
  };

  close(): void {
    this.closed = true;
    for (const shell of this.idle.splice(0)) shell.close();
  }
}
