/**
 * Drives `weirctl sandbox` the way a user does: the built CLI as a child process, one unique sandbox
 * (`--name`, `--state-dir`) per suite and control-plane mode so suites never collide with each other or
 * with a user's sandbox in /var/run/weir-sandbox.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, constants, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const WEIRCTL = join(REPO_ROOT, 'apps/weirctl/dist/main.js');

/** The built artefacts the sandbox runs; a missing one is named with the command that builds it. */
const BUILT: Array<[path: string, build: string]> = [
  ['apps/weirctl/dist/main.js', '@weir/app-weirctl'],
  ['apps/ztunnel/dist/main.js', '@weir/app-ztunnel'],
  ['apps/ztunnel/dist/test-control-plane.js', '@weir/app-ztunnel'],
  ['apps/cni-agent/dist/main.js', '@weir/app-cni-agent'],
  ['apps/cni-plugin/dist/weir-cni', '@weir/app-cni-plugin'],
];

/** Fails (never skips) with what is missing: root, and the four built apps. */
export async function assertSandboxPrerequisites(): Promise<void> {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push(`root (running as uid ${process.getuid?.()}): the sandbox makes network namespaces`);
  for (const [path, pkg] of BUILT) {
    try {
      await access(join(REPO_ROOT, path), constants.R_OK);
    } catch {
      missing.push(`${path} is not built: npm run build -w ${pkg}`);
    }
  }
  if (missing.length > 0) throw new Error(`e2e prerequisites missing:\n  - ${missing.join('\n  - ')}`);
}

export interface RunResult {
  code: number;
  out: string;
  err: string;
}

export interface SandboxPod {
  name: string;
  namespace: string;
  node: string;
  ip: string;
  netns: string;
  enrolled: boolean;
  captured: boolean;
}

export interface SandboxNode {
  name: string;
  netns: string;
  ip: string;
  zdsSocket: string;
  agentPid: number | null;
  ztunnelPid: number | null;
  notes: string[];
}

/**
 * Where the sandbox's ztunnels get workloads, policies and certificates: `local` — LOCAL_XDS_PATH and a
 * CA on disk; `xds` — `weirctl sandbox up --control-plane xds`, weir-test-control-plane over Delta xDS
 * and Istio's CA API. Every suite runs in both.
 */
export type ControlPlaneMode = 'local' | 'xds';
export const CONTROL_PLANE_MODES: readonly ControlPlaneMode[] = ['local', 'xds'];

export type ControlPlaneStatus =
  | { mode: 'local'; localXdsPath: string; caCert: string }
  | { mode: 'xds'; address: string; node: string; pid: number | null; serving: boolean; detail: string; connected: string[]; rootCa: string; tokenFile: string };

export interface SandboxStatus {
  up: true;
  name: string;
  dir: string;
  controlPlane: ControlPlaneStatus;
  nodes: SandboxNode[];
  pods: SandboxPod[];
}

/** The parts of ztunnel's `/config_dump` the suites read. */
export interface ZtunnelConfigDump {
  config: { localXdsPath: string | null; xdsAddress: string | null };
  xds: {
    address: string;
    connected: boolean;
    ready: boolean;
    types: Array<{ typeUrl: string; resources: Array<{ name: string; version: string }>; systemVersionInfo: string; lastAck: unknown; lastNack: unknown }>;
  } | null;
  ca: { embedded: true } | { certificates: Array<{ identity: string; serial: string }> };
  certificates: Array<{ identity: string; serial?: string; chain?: string }>;
  policies: Array<{ name: string; namespace: string }>;
}

/** A long-running command inside a pod or node (a listener); `stop` ends its whole process group. */
export interface Background {
  readonly pid: number;
  output(): string;
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export class Sandbox {
  readonly name: string;
  readonly dir: string;
  readonly #background = new Set<Background>();

  constructor(
    tag: string,
    readonly mode: ControlPlaneMode = 'local',
  ) {
    // Netns names are <name>-<ns>-<pod>; keep the prefix short and unique per process.
    this.name = `we${tag}${mode === 'xds' ? 'x' : ''}${randomBytes(2).toString('hex')}-${process.pid}`;
    this.dir = join(tmpdir(), `${this.name}-state`);
  }

  get flags(): string[] {
    return ['--name', this.name, '--state-dir', this.dir];
  }

  /** `weirctl sandbox <sub> <args…> <location flags>` (the location flags go before `--`). */
  async weirctl(sub: string, args: readonly string[] = [], options: { timeoutMs?: number } = {}): Promise<RunResult> {
    const split = args.indexOf('--');
    // Location flags after the subcommand's own words (`policy apply FILE --name …`), before any `--`.
    const argv = split < 0 ? [sub, ...args, ...this.flags] : [sub, ...args.slice(0, split), ...this.flags, ...args.slice(split)];
    return run(process.execPath, [WEIRCTL, 'sandbox', ...argv], options.timeoutMs ?? 60_000);
  }

  /** `up` (with `--control-plane xds` in xds mode); with `npx`, exactly as the README's main-job command runs it (from the repository root). */
  async up(extra: readonly string[] = [], options: { npx?: boolean } = {}): Promise<RunResult> {
    await assertSandboxPrerequisites();
    if (this.mode === 'xds') extra = [...extra, '--control-plane', 'xds'];
    if (options.npx) {
      // The README's `npm run build` ends by linking the apps' bins (npm links a bin only once its
      // file exists, and `npm ci` ran before dist/ did); turbo has built dist/ already, so link only.
      const link = await run('npm', ['rebuild', '--ignore-scripts', '@weir/app-weirctl'], 120_000, REPO_ROOT);
      if (link.code !== 0) throw new Error(`linking weirctl's bin failed (exit ${link.code}):\n${link.out}${link.err}`);
    }
    const result = options.npx
      ? await run('npx', ['--no-install', 'weirctl', 'sandbox', 'up', ...this.flags, ...extra], 240_000, REPO_ROOT)
      : await this.weirctl('up', extra, { timeoutMs: 240_000 });
    if (result.code !== 0 || result.out.includes('NOT PRESENT')) {
      throw new Error(`weirctl sandbox up ${this.flags.join(' ')} failed (exit ${result.code}):\n${result.out}${result.err}`);
    }
    return result;
  }

  /** Stops our listeners first, then `weirctl sandbox down`. */
  async down(): Promise<RunResult> {
    for (const bg of [...this.#background]) await bg.stop();
    return this.weirctl('down', [], { timeoutMs: 120_000 });
  }

  async status(): Promise<SandboxStatus> {
    const result = await this.weirctl('status', ['--json']);
    if (result.code !== 0) throw new Error(`weirctl sandbox status failed (exit ${result.code}): ${result.out}${result.err}`);
    return JSON.parse(result.out) as SandboxStatus;
  }

  async pod(name: string): Promise<SandboxPod> {
    const pod = (await this.status()).pods.find((p) => p.name === name);
    if (!pod) throw new Error(`sandbox ${this.name} has no pod ${name}`);
    return pod;
  }

  async node(name: string): Promise<SandboxNode> {
    const node = (await this.status()).nodes.find((n) => n.name === name);
    if (!node) throw new Error(`sandbox ${this.name} has no node ${name}`);
    return node;
  }

  /** `weirctl sandbox exec TARGET -- cmd…` */
  exec(target: string, command: readonly string[], options: { timeoutMs?: number } = {}): Promise<RunResult> {
    return this.weirctl('exec', [target, '--', ...command], options);
  }

  /** Like exec, but a non-zero exit is an error quoting the output. */
  async execOk(target: string, command: readonly string[], options: { timeoutMs?: number } = {}): Promise<string> {
    const r = await this.exec(target, command, options);
    if (r.code !== 0) throw new Error(`exec ${target} -- ${command.join(' ')}: exit ${r.code}\n${r.out}${r.err}`);
    return r.out;
  }

  async logs(node: string, component: 'ztunnel' | 'cni-agent'): Promise<string> {
    const r = await this.weirctl('logs', [node, component]);
    if (r.code !== 0) throw new Error(`weirctl sandbox logs ${node} ${component}: exit ${r.code}: ${r.err}`);
    return r.out;
  }

  /** `weirctl sandbox logs control-plane` (xds mode). */
  async controlPlaneLog(): Promise<string> {
    return this.weirctlOk('logs', ['control-plane'], 30_000);
  }

  /** ztunnel's `/config_dump` from the node's admin port. */
  async configDump(node: string): Promise<ZtunnelConfigDump> {
    return JSON.parse(await this.execOk(node, ['curl', '-sS', '-m', '10', 'http://127.0.0.1:15000/config_dump'])) as ZtunnelConfigDump;
  }

  /** ztunnel's Prometheus text from the node's metrics port. */
  metrics(node: string): Promise<string> {
    return this.execOk(node, ['curl', '-sS', '-m', '10', 'http://127.0.0.1:15020/metrics']);
  }

  /** Start `weirctl sandbox exec TARGET -- cmd…` in the background, in its own process group. */
  background(target: string, command: readonly string[]): Background {
    const child = spawn(process.execPath, [WEIRCTL, 'sandbox', 'exec', ...this.flags, target, '--', ...command], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let text = '';
    child.stdout.on('data', (d: Buffer) => (text += d.toString()));
    child.stderr.on('data', (d: Buffer) => (text += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    let running = true;
    void exited.then(() => (running = false));
    const set = this.#background;
    const bg: Background = {
      pid: child.pid ?? -1,
      output: () => text,
      async waitForOutput(pattern, timeoutMs = 20_000) {
        const deadline = Date.now() + timeoutMs;
        while (!pattern.test(text)) {
          if (!running) throw new Error(`${target} -- ${command.join(' ')} exited before printing ${pattern}; output:\n${text}`);
          if (Date.now() > deadline) throw new Error(`${target} -- ${command.join(' ')} did not print ${pattern} in ${timeoutMs} ms; output:\n${text}`);
          await sleep(50);
        }
      },
      async stop() {
        set.delete(bg);
        if (!running || child.pid === undefined) return;
        try {
          process.kill(-child.pid, 'SIGTERM');
        } catch {
          return;
        }
        const done = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]);
        if (!done) {
          try {
            process.kill(-child.pid, 'SIGKILL');
          } catch {
            // Gone between the two signals.
          }
          await exited;
        }
      },
    };
    set.add(bg);
    return bg;
  }

  /** A TCP listener (socat) in TARGET that answers every connection with `banner` and closes. */
  async listener(target: string, port: number, banner: string, options: { ipv6?: boolean } = {}): Promise<Background> {
    const address = options.ipv6 ? `TCP6-LISTEN:${port},reuseaddr,fork,ipv6only=1` : `TCP-LISTEN:${port},reuseaddr,fork`;
    const bg = this.background(target, ['socat', '-d', '-d', address, `SYSTEM:echo ${banner}`]);
    await bg.waitForOutput(/listening on/);
    return bg;
  }

  /** Where the agent's `--pods-file` lives (uids of the pods). */
  get podsFilePath(): string {
    return join(this.dir, 'pods.yaml');
  }

  /** `weirctl sandbox policy apply FILE` with one policy (ztunnel's local-config shape). */
  async applyPolicy(policy: Record<string, unknown>): Promise<void> {
    const file = join(this.dir, `e2e-policy-${process.pid}-${randomBytes(3).toString('hex')}.json`);
    await writeFile(file, `${JSON.stringify({ policies: [policy] })}\n`);
    try {
      await this.weirctlOk('policy', ['apply', file], 60_000);
    } finally {
      await rm(file, { force: true });
    }
  }

  /** `weirctl sandbox policy delete NS/NAME` */
  async deletePolicy(ref: string): Promise<void> {
    await this.weirctlOk('policy', ['delete', ref], 60_000);
  }

  /** `weirctl sandbox label TARGET KEY=VALUE|KEY-…` (returns once the agents captured/released). */
  async label(target: string, ...changes: string[]): Promise<void> {
    await this.weirctlOk('label', [target, ...changes], 120_000);
  }

  async weirctlOk(sub: string, args: readonly string[], timeoutMs: number): Promise<string> {
    const r = await this.weirctl(sub, args, { timeoutMs });
    if (r.code !== 0) throw new Error(`weirctl sandbox ${sub} ${args.join(' ')}: exit ${r.code}\n${r.out}${r.err}`);
    return r.out;
  }
}

function run(cmd: string, argv: readonly string[], timeoutMs: number, cwd?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${argv.join(' ')} did not finish in ${timeoutMs} ms; output so far:\n${out}${err}`));
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? 128 + (signal ? 15 : 0), out, err });
    });
  });
}

/** Poll `check` until it returns a value (not undefined) or time runs out; the error names `what`. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`gave up after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await sleep(250);
  }
}
