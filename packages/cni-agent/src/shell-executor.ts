import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { CommandExecutor, CommandResult } from '@weir/iptables-builder';

function quote(word: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * Runs a sequence of commands through ONE `nsenter --net=<path> -- sh` child instead of one nsenter
 * per command: a capture runs ~6 commands in the pod netns, and on a loaded node each extra
 * spawn+nsenter costs tens of milliseconds. Commands run one at a time, in order; each gets its own
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
    const line = [cmd, ...args].map(quote).join(' ');
    const stdin =
      input === undefined ? ' </dev/null\n' : ` <<'${token}in'\n${input}${input.endsWith('\n') || input === '' ? '' : '\n'}${token}in\n`;
    const script = `${line}${stdin}__rc=$?; printf '%s%d\\n' '${token}' "$__rc"; printf '%s\\n' '${token}' >&2\n`;
    return new Promise((resolve) => {
      const check = (): void => {
        const o = new RegExp(`${token}(\\d+)\\n`).exec(this.out);
        const e = this.err.indexOf(`${token}\n`);
        if (o && e >= 0) {
          this.pending = undefined;
          const stdout = this.out.slice(0, o.index);
          const stderr = this.err.slice(0, e);
          this.out = this.out.slice(o.index + o[0].length);
          this.err = this.err.slice(e + token.length + 1);
          resolve({ stdout, stderr, code: Number(o[1]) });
          return;
        }
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

  /** Ends the shell (at EOF, once the last command finished). */
  close(): void {
    this.child.stdin.end();
  }
}
