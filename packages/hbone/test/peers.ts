import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Child processes and temp dirs a test file started; `stopAll` kills and removes them (call in afterAll). */
export class Peers {
  readonly #procs: ChildProcess[] = [];
  readonly #dirs: string[] = [];
  readonly logs = new Map<ChildProcess, string>();

  async tmp(prefix: string): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), `weir-hbone-${prefix}-`));
    this.#dirs.push(d);
    return d;
  }

  async files(dir: string, files: Record<string, string>): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const [name, content] of Object.entries(files)) {
      out[name] = join(dir, name);
      await writeFile(out[name], content);
    }
    return out;
  }

  /** Starts `cmd`; fails with a message naming the tool when it is not installed. */
  spawn(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): ChildProcess {
    const p = spawn(cmd, args, { env: o.env ?? process.env, cwd: o.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#procs.push(p);
    let log = '';
    const keep = (b: Buffer): void => {
      log = (log + b.toString()).slice(-20_000);
      this.logs.set(p, log);
    };
    p.stdout?.on('data', keep);
    p.stderr?.on('data', keep);
    p.on('error', (err) => {
      keep(Buffer.from(`spawn ${cmd} failed: ${err.message} (is it installed? see scripts/setup-host.sh)\n`));
    });
    return p;
  }

  /** Runs `cmd` to completion; resolves with its exit code and output. */
  run(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string; timeoutMs?: number } = {}): Promise<{ code: number | null; out: string }> {
    return new Promise((resolve, reject) => {
      const p = spawn(cmd, args, { env: o.env ?? process.env, cwd: o.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
      this.#procs.push(p);
      let out = '';
      p.stdout.on('data', (b: Buffer) => (out += b.toString()));
      p.stderr.on('data', (b: Buffer) => (out += b.toString()));
      const timer = setTimeout(() => p.kill('SIGKILL'), o.timeoutMs ?? 60_000);
      p.on('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`${cmd} could not be run: ${err.message} (is it installed? see scripts/setup-host.sh)`));
      });
      p.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      });
      p.stdin.end(o.input ?? '');
    });
  }

  logOf(p: ChildProcess): string {
    return this.logs.get(p) ?? '';
  }

  async stopAll(): Promise<void> {
    await Promise.all(
      this.#procs.map(
        (p) =>
          new Promise<void>((r) => {
            if (p.exitCode !== null || p.signalCode !== null || p.pid === undefined) return r();
            const t = setTimeout(() => p.kill('SIGKILL'), 2000);
            p.once('exit', () => {
              clearTimeout(t);
              r();
            });
            p.kill('SIGTERM');
          }),
      ),
    );
    for (const d of this.#dirs) await rm(d, { recursive: true, force: true });
  }
}

/** A port free right now on 127.0.0.1, for tools that cannot bind port 0 and report it. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Waits until something accepts TCP on 127.0.0.1:port, or the process exits (then fails with its log). */
export async function waitForPort(port: number, proc: ChildProcess, peers: Peers, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`${what} exited (${proc.exitCode ?? proc.signalCode}) before listening on ${port}:\n${peers.logOf(proc)}`);
    }
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        r(true);
      });
      s.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`${what} did not listen on ${port} within ${ms} ms:\n${peers.logOf(proc)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
