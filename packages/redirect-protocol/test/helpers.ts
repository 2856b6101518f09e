import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) throw new Error(`${what} needs root (network namespaces, raw fds); run the tests as root`);
}

/** A network namespace made with `ip netns add`, removed by cleanup(). */
export function createNetns(name: string): string {
  try {
    execFileSync('ip', ['netns', 'add', name], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`ip netns add ${name} failed (needs root and iproute2): ${(err as Error).message}`);
  }
  return `/var/run/netns/${name}`;
}

export function deleteNetns(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'pipe' });
  } catch {
    // already gone
  }
}

/** A child process whose stdout is JSON lines, collected as they come. */
export class JsonChild {
  readonly events: Record<string, unknown>[] = [];
  readonly proc: ChildProcess;
  stderr = '';
  exited = false;

  constructor(cmd: string, args: string[]) {
    this.proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc.on('exit', () => (this.exited = true));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      this.events.push(JSON.parse(line) as Record<string, unknown>);
    });
    this.proc.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }

  /** Waits until pred matches `count` events; the error message shows what did arrive. */
  async waitFor(pred: (e: Record<string, unknown>) => boolean, count = 1, timeoutMs = 10_000): Promise<Record<string, unknown>[]> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const hits = this.events.filter(pred);
      if (hits.length >= count) return hits;
      if (Date.now() > end || this.exited) {
        throw new Error(
          `child ${this.proc.spawnargs.join(' ')}: wanted ${count} matching events, got ${JSON.stringify(this.events)}; stderr: ${this.stderr}`,
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.exited) return Promise.resolve();
    return new Promise((resolve) => {
      this.proc.once('exit', () => resolve());
      this.proc.kill(signal);
    });
  }
}

export const fixture = (name: string): string => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
