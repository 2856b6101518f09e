// The container images, built for real with podman/buildah (deploy/images/build.mjs) from a debootstrap
// base, then run: each entrypoint answers --version, and the images' own HEALTHCHECKs pass when the
// agent and ztunnel run side by side in one pod (loopback only, no network), ztunnel getting its
// first (empty) snapshot from the agent over the shared ZDS socket directory.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildWorkspaces, repoRoot, run, runOk } from '../src/workspace.js';

// crun in Debian 12 refuses this machine's hybrid cgroup layout; runc (Debian's) runs it.
const PODMAN = ['--runtime', 'runc'];
// The container's default nofile/nproc limits need a capability this sandbox lacks.
const RUN = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096', '--health-interval', 'disable'];
const images: Record<string, string> = {};
const tag = `ship-${process.pid}`;
const cleanup: string[][] = [];

beforeAll(async () => {
  const missing: string[] = [];
  for (const tool of ['podman', 'buildah', 'debootstrap', 'runc']) {
    if ((await run('sh', ['-c', `command -v ${tool}`])).code !== 0) missing.push(tool);
  }
  if (missing.length > 0) throw new Error(`container image tests need ${missing.join(', ')}: run scripts/setup-host.sh`);
  const probe = await run('podman', [...PODMAN, 'info', '--format', '{{.Host.OCIRuntime.Name}}']);
  if (probe.code !== 0) throw new Error(`podman cannot run here: ${probe.stderr.trim()}`);
  await buildWorkspaces(['@weir/app-ztunnel', '@weir/app-cni-agent', '@weir/app-cni-plugin']);
  const r = await run('node', [join(repoRoot, 'deploy/images/build.mjs'), 'ztunnel', 'cni-agent', '--tag', tag], { cwd: repoRoot });
  if (r.code !== 0) throw new Error(`deploy/images/build.mjs failed:\n${r.stderr}${r.stdout}`);
  for (const line of r.stdout.trim().split('\n')) {
    const [component, ref] = line.split(' ');
    images[component!] = ref!;
  }
});

afterAll(async () => {
  for (const args of cleanup.reverse()) await run('podman', [...PODMAN, ...args]);
  for (const ref of Object.values(images)) await run('podman', ['rmi', '-f', ref]);
});

async function inspect(ref: string): Promise<Record<string, any>> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const r = await runOk('podman', ['image', 'inspect', ref]);
  return (JSON.parse(r.stdout) as Record<string, any>[])[0]!; // eslint-disable-line @typescript-eslint/no-explicit-any
}

describe.each([
  ['ztunnel', 'weir-ztunnel'],
  ['cni-agent', 'weir-cni-agent'],
])('%s image', (component, bin) => {
  it('is small-ish, declares a health check and an entrypoint on the host-copied Node', async () => {
    const info = await inspect(images[component]!);
    expect(info.Size, `${component} image size`).toBeLessThan(component === 'ztunnel' ? 260e6 : 480e6);
    expect((info.Healthcheck ?? info.Config.Healthcheck)?.Test?.join(' ')).toContain('fetch(');
    expect(info.Config.Entrypoint[0]).toBe('/usr/local/bin/node');
    const node = await runOk('podman', [...PODMAN, 'run', '--rm', ...RUN, '--network', 'none', '--entrypoint', '/usr/local/bin/node', images[component]!, '--version']);
    expect(node.stdout.trim()).toBe(process.version);
  });

  it('answers --version and exits', async () => {
    const name = `wv-${component}-${process.pid}`;
    cleanup.push(['rm', '-f', name]);
    // A binary that ignores --version starts its server instead: stop it after 20 s and say so.
    const r = await run('podman', [...PODMAN, 'run', '--rm', ...RUN, '--network', 'none', '--name', name, images[component]!, '--version'], { timeoutMs: 20_000 });
    expect(r.code, `${bin} --version did not exit 0 within 20 s; output:\n${r.stdout.slice(0, 1500)}${r.stderr.slice(0, 1500)}`).toBe(0);
    expect(r.stdout.trim()).toMatch(new RegExp(`^${bin} \\d+\\.\\d+\\.\\d+`));
  });
});

it('the agent image carries the weir-cni plugin executable, runnable without Node', async () => {
  const r = await run('podman', [...PODMAN, 'run', '--rm', '-i', ...RUN, '--network', 'none', '--entrypoint', '/opt/weir/cni/weir-cni', '-e', 'CNI_COMMAND=VERSION', images['cni-agent']!], { input: '{"cniVersion":"1.0.0"}' });
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout).supportedVersions).toContain('1.0.0');
});

it('agent and ztunnel side by side: ZDS handshake over the shared socket dir, both health checks pass', async () => {
  const pod = `wship-${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), 'weir-img-'));
  writeFileSync(join(dir, 'pods.yaml'), 'namespaces: []\npods: []\n');
  cleanup.push(['rm', '-f', '-t', '2', `${pod}-ztunnel`], ['rm', '-f', '-t', '2', `${pod}-agent`]);
  try {
    // One loopback-only network namespace for both (as in a pod): the agent's, joined by ztunnel.
    const common = [...RUN, '-d', '-v', `${dir}:/var/run/ztunnel`];
    await runOk('podman', [...PODMAN, 'run', ...common, '--network', 'none', '--name', `${pod}-agent`, '--cap-drop', 'ALL', '--cap-add', 'NET_ADMIN,NET_RAW,SYS_ADMIN,SYS_PTRACE,DAC_OVERRIDE',
      '-v', `${join(dir, 'pods.yaml')}:/etc/weir/pods.yaml:ro`, '-e', 'NODE_NAME=node-a', '-e', 'PODS_FILE=/etc/weir/pods.yaml', '-e', 'CNI_AGENT_RUN_DIR=/tmp', images['cni-agent']!]);
    await runOk('podman', [...PODMAN, 'run', ...common, '--network', `container:${pod}-agent`, '--name', `${pod}-ztunnel`, '--cap-drop', 'ALL', '--cap-add', 'NET_ADMIN,SYS_ADMIN,NET_RAW', '--read-only', '--tmpfs', '/tmp', '-e', 'NODE_NAME=node-a', images.ztunnel!]);
    const healthy = async (ctr: string): Promise<string> => {
      let last = '';
      for (let i = 0; i < 40; i++) {
        const h = await run('podman', [...PODMAN, 'healthcheck', 'run', ctr]);
        if (h.code === 0) return 'healthy';
        last = `${h.stdout}${h.stderr}`;
        await new Promise((r) => setTimeout(r, 1000));
      }
      const logs = await run('podman', ['logs', ctr]);
      return `unhealthy after 40 s (${last.trim()}); logs:\n${logs.stdout.slice(-2000)}${logs.stderr.slice(-2000)}`;
    };
    expect(await healthy(`${pod}-agent`)).toBe('healthy');
    expect(await healthy(`${pod}-ztunnel`)).toBe('healthy');
    const logs = await run('podman', ['logs', `${pod}-ztunnel`]);
    expect(`${logs.stdout}${logs.stderr}`).toMatch(/snapshot/i);
  } finally {
    await run('podman', [...PODMAN, 'rm', '-f', '-t', '2', `${pod}-ztunnel`, `${pod}-agent`]);
    rmSync(dir, { recursive: true, force: true });
  }
});
