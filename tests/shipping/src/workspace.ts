import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tests/shipping/src → ../../..). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export interface WorkspacePackage {
  name: string;
  dir: string;
  version: string;
  private: boolean;
  manifest: Record<string, unknown> & { dependencies?: Record<string, string> };
}

/** Every workspace package under packages/ and apps/. */
export function workspacePackages(): WorkspacePackage[] {
  const out: WorkspacePackage[] = [];
  for (const top of ['packages', 'apps']) {
    for (const d of readdirSync(join(repoRoot, top)).sort()) {
      const pj = join(repoRoot, top, d, 'package.json');
      if (!existsSync(pj)) continue;
      const manifest = JSON.parse(readFileSync(pj, 'utf8')) as WorkspacePackage['manifest'];
      out.push({
        name: String(manifest.name),
        dir: join(repoRoot, top, d),
        version: String(manifest.version),
        private: manifest.private === true,
        manifest,
      });
    }
  }
  return out;
}

/** The `@weir/*` packages that go to npm (every workspace not marked private). */
export function publicPackages(): WorkspacePackage[] {
  return workspacePackages().filter((p) => p.name.startsWith('@weir/') && !p.private);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, collecting its output; never throws for a non-zero exit. */
export function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : undefined;
    child.once('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(new Error(`${cmd} could not be started: ${err.message}`, { cause: err }));
    });
    child.once('close', (code) => {
      if (timer) clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
    // A child that exits without reading its input must not crash the test with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** Like run(), but a non-zero exit is an error naming the command and its output. */
export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} (in ${opts.cwd ?? process.cwd()}) exited ${r.code}:\n${(r.stderr + r.stdout).slice(-4000)}`);
  }
  return r;
}

/** `npm pack` of one workspace into `dest`; returns the tarball's absolute path. */
export async function pack(pkg: WorkspacePackage, dest: string): Promise<string> {
  const r = await runOk('npm', ['pack', '--json', '--pack-destination', dest], { cwd: pkg.dir });
  const [info] = JSON.parse(r.stdout) as { filename: string }[];
  if (!info) throw new Error(`npm pack of ${pkg.name} reported no tarball: ${r.stdout}`);
  return join(dest, info.filename);
}

/** Makes sure `names` and their dependencies are built (turbo; cached when nothing changed). */
export async function buildWorkspaces(names: string[]): Promise<void> {
  await runOk('npx', ['turbo', 'run', 'build', '--output-logs=errors-only', ...names.map((n) => `--filter=${n}...`)], {
    cwd: repoRoot,
    env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1', FORCE_COLOR: '0' },
  });
}
