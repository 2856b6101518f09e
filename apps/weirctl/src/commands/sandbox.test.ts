import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Topology, assertPrerequisites, listNetns, ownedByPrefix } from '@weir/topology';
import { afterAll, describe, expect, it } from 'vitest';
import { createSandboxCommand } from './sandbox.js';

const command = createSandboxCommand({ execStdio: 'io' });

async function sandbox(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await command.run(argv, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

describe('weirctl sandbox flags', () => {
  it('rejects bad input with exit status 2 and names the problem', async () => {
    await expect(command.run(['up', '--nodes', '0'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toBe('--nodes: at least 1 node (got "0")');
    await expect(command.run(['up', '--nodes', 'two'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toBe('--nodes: expected a whole number from 1 to 9 (got "two")');
    await expect(command.run(['up', '--node', '3'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toBe('unknown flag --node (did you mean --nodes?)');
    await expect(command.run(['restart', 'node-1', 'kubelet'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toMatch(/restart NODE ztunnel\|cni-agent: unknown component 'kubelet'/);
    await expect(command.run(['restart', 'node-1'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toMatch(/^expected 2 arguments, got 1: restart NODE ztunnel\|cni-agent/);
    await expect(command.run(['frobnicate'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toMatch(/unknown subcommand 'frobnicate'/);
    await expect(command.run(['exec', 'sleep', 'ls'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toBe('exec needs POD -- CMD [ARG…]');
    await expect(command.run(['logs', 'node-1', 'kubelet'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toMatch(/unknown component 'kubelet'/);
    await expect(command.run(['up', '--control-plane', 'istiod'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toMatch(/--control-plane: .*"local"\|"xds" \(got "istiod"\)/);
    await expect(command.run(['up', '--control-plane-bin', '/x'], { out: () => {}, err: () => {} }).catch((e: Error) => e.message)).resolves.toBe('--control-plane-bin needs --control-plane xds');
    const help = await sandbox('--help');
    expect(help.code).toBe(0);
    expect(help.out).toContain('exec POD|NODE -- CMD');
  });

  it('says plainly when no sandbox is up', async () => {
    const dir = join(tmpdir(), `wsb-none-${process.pid}`);
    expect(await sandbox('status', '--state-dir', dir)).toEqual({ code: 1, out: '', err: `no sandbox is up (state dir ${dir})\n` });
    expect(await sandbox('status', '--json', '--state-dir', dir)).toMatchObject({ code: 1, out: '{"up":false}\n' });
    expect((await sandbox('exec', '--state-dir', dir, 'sleep', '--', 'true')).err).toContain('no sandbox is up');
  });
});

describe('weirctl sandbox common flags', () => {
  it('takes --state-dir and --name before the subcommand, between it and its verb, or after, for every subcommand', async () => {
    const dir = join(tmpdir(), `wsb-where-${process.pid}`);
    // The state dir given is the one looked in: its name is in the error.
    const notUp = (sub: string): RegExp => new RegExp(`^weirctl sandbox ${sub}: .*no sandbox is up \\(no ${dir}/`);
    const statusNone = { code: 1, out: '', err: `no sandbox is up (state dir ${dir})\n` };
    expect(await sandbox('--state-dir', dir, '--name', 'wsb-x', 'status')).toEqual(statusNone);
    expect(await sandbox('--state-dir', dir, 'status', '--name', 'wsb-x')).toEqual(statusNone);
    expect(await sandbox(`--state-dir=${dir}`, 'status', '--json')).toMatchObject({ code: 1, out: '{"up":false}\n' });
    for (const argv of [
      ['--name', 'wsb-x', '--state-dir', dir, 'policy', 'apply', '/nonexistent.yaml'],
      ['policy', '--state-dir', dir, '--name', 'wsb-x', 'apply', '/nonexistent.yaml'],
      ['policy', 'apply', '/nonexistent.yaml', '--state-dir', dir, '--name', 'wsb-x'],
    ]) {
      const r = await sandbox(...argv);
      expect(r.code, argv.join(' ')).toBe(1);
      expect(r.err, argv.join(' ')).toMatch(/^weirctl sandbox policy: cannot read \/nonexistent\.yaml/);
    }
    for (const argv of [
      ['--state-dir', dir, 'policy', 'list'],
      ['policy', '--state-dir', dir, 'list', '--json'],
      ['--state-dir', dir, 'policy', 'delete', 'x'],
      ['--state-dir', dir, 'pod', 'add', 'p'],
      ['pod', '--state-dir', dir, 'add', 'p'],
      ['--state-dir', dir, 'label', 'ns/demo', 'a=b'],
      ['--state-dir', dir, 'logs', 'node-1', 'ztunnel'],
      ['--name', 'wsb-x', '--state-dir', dir, 'exec', 'sleep', '--', 'echo', '--name', 'kept'],
    ]) {
      const r = await sandbox(...argv);
      expect(r.code, argv.join(' ')).toBe(1);
      expect(r.err, argv.join(' ')).toMatch(notUp(argv.find((a) => ['policy', 'pod', 'label', 'logs', 'exec'].includes(a)) as string));
    }
    // Validated wherever they stand; a missing value or one after -- is no value.
    await expect(sandbox('--name', 'Bad!', 'status')).rejects.toThrow(/^--name: lowercase letters/);
    await expect(sandbox('status', '--state-dir')).rejects.toThrow('--state-dir needs a value');
    await expect(sandbox('exec', 'sleep', '--name', '--', 'true')).rejects.toThrow('--name needs a value');
  });
});

describe('weirctl sandbox without Weir components', () => {
  const name = `wsb${randomBytes(2).toString('hex')}-${process.pid}`;
  const dir = join(tmpdir(), `${name}-state`);
  const where = ['--state-dir', dir, '--name', name];
  const absent = ['--agent-bin', '/nonexistent/weir-cni-agent', '--ztunnel-bin', '/nonexistent/weir-ztunnel', '--cni-bin', '/nonexistent/weir-cni'];

  afterAll(async () => {
    await Topology.cleanupByPrefix(name, { stateRoot: dir });
  });

  it('builds the default topology, reports what is missing, runs commands in pods, and goes down cleanly', { timeout: 120_000 }, async () => {
    await assertPrerequisites();
    const up = await sandbox('up', ...where, ...absent);
    expect(up.err).toBe('');
    expect(up.code).toBe(0);
    expect(up.out).toContain('weir-cni-agent: NOT PRESENT, /nonexistent/weir-cni-agent is not a readable file');
    expect(up.out).toContain('node-1: weir-cni-agent is not running: /nonexistent/weir-cni-agent is not a readable file; pods are NOT captured');
    expect(up.out).toContain('weir-ztunnel: NOT PRESENT');

    const again = await sandbox('up', ...where, ...absent);
    expect(again.code).toBe(1);
    expect(again.err).toContain('a sandbox is already up');

    const status = await sandbox('status', '--json', ...where);
    expect(status.code).toBe(0);
    const json = JSON.parse(status.out) as {
      nodes: Array<{ name: string; netns: string; ip: string; zdsSocket: string; agentPid: number | null; ztunnelPid: number | null }>;
      pods: Array<{ name: string; namespace: string; node: string; ip: string; netns: string; enrolled: boolean; captured: boolean }>;
    };
    expect(json.nodes).toEqual([
      { name: 'node-1', netns: `/var/run/netns/${name}-node-1`, ip: '172.18.0.11', zdsSocket: join(dir, 'nodes', 'node-1', 'run', 'ztunnel.sock'), agentPid: null, ztunnelPid: null, notes: expect.any(Array) },
      { name: 'node-2', netns: `/var/run/netns/${name}-node-2`, ip: '172.18.0.12', zdsSocket: join(dir, 'nodes', 'node-2', 'run', 'ztunnel.sock'), agentPid: null, ztunnelPid: null, notes: expect.any(Array) },
    ]);
    expect(json.pods.map((p) => [`${p.namespace}/${p.name}`, p.node, p.enrolled, p.captured])).toEqual([
      ['demo/sleep', 'node-1', true, false],
      ['demo/httpbin', 'node-2', true, false],
      ['legacy/legacy-client', 'node-1', false, false],
    ]);
    const sleep = json.pods.find((p) => p.name === 'sleep');
    const httpbin = json.pods.find((p) => p.name === 'httpbin');
    expect(sleep?.ip).toMatch(/^10\.244\.1\.\d+$/);
    expect(httpbin?.netns).toBe(`/var/run/netns/${name}-demo-httpbin`);

    const curl = await sandbox('exec', ...where, 'sleep', '--', 'curl', '-sS', `http://${httpbin?.ip}:8000/get`);
    expect(curl.code).toBe(0);
    expect(JSON.parse(curl.out)).toMatchObject({ server: 'httpbin', path: '/get', client: { address: sleep?.ip } });
    expect((await sandbox('exec', ...where, 'legacy/legacy-client', '--', 'sh', '-c', 'echo oops >&2; exit 7'))).toEqual({ code: 7, out: '', err: 'oops\n' });
    expect((await sandbox('exec', ...where, 'node-2', '--', 'ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0')).out).toContain('inet 172.18.0.12/24');
    expect((await sandbox('exec', ...where, 'nosuchpod', '--', 'true')).err).toContain('no pod or node nosuchpod');

    const logs = await sandbox('logs', ...where, 'node-1', 'ztunnel');
    expect(logs).toMatchObject({ code: 1, err: expect.stringContaining('ztunnel does not run on node-1: weir-ztunnel is not running: /nonexistent/weir-ztunnel') });

    const text = await sandbox('status', ...where);
    expect(text.out).toMatch(/demo\/httpbin\s+node-2\s+10\.244\.2\.\d+\s+yes\s+no/);

    const down = await sandbox('down', ...where);
    // 3 pause + 3 app processes.
    expect(down).toEqual({ code: 0, out: 'sandbox down: stopped 6 processes, removed 6 network namespaces\n', err: '' });
    expect((await listNetns()).filter((n) => ownedByPrefix(n, name))).toEqual([]);
    expect(existsSync(dir)).toBe(false);
    expect(await sandbox('down', ...where)).toEqual({ code: 0, out: 'nothing to remove: no sandbox is up\n', err: '' });
  });

  it('up that fails half way removes everything and says why, quoting the component log', { timeout: 60_000 }, async () => {
    // Readable, but not a program Node can run: the agent dies at start.
    const up = await sandbox('up', ...where, ...absent, '--agent-bin', '/etc/hostname');
    expect(up.code).toBe(1);
    expect(up.err).toContain('weirctl sandbox up: sandbox up failed, everything it made was removed: gave up waiting for node-1.cni-agent to be ready');
    expect(up.err).toContain('the process exited; its log ends:\n  | ');
    expect((await listNetns()).filter((n) => ownedByPrefix(n, name))).toEqual([]);
    expect(existsSync(dir)).toBe(false);
  });

  it('--control-plane xds runs weir-test-control-plane on node-1: status shows it serving, logs control-plane, down stops it', { timeout: 90_000 }, async () => {
    const up = await sandbox('up', ...where, ...absent, '--control-plane', 'xds');
    expect(up.err).toBe('');
    expect(up.code).toBe(0);
    expect(up.out).toContain('node-1: starting weir-test-control-plane on 172.18.0.11:15012');
    expect(up.out).toContain('sandbox up (2 nodes, control plane https://172.18.0.11:15012)');
    const status = JSON.parse((await sandbox('status', '--json', ...where)).out) as { controlPlane: Record<string, unknown> };
    expect(status.controlPlane).toMatchObject({ mode: 'xds', address: 'https://172.18.0.11:15012', node: 'node-1', pid: expect.any(Number), serving: true, connected: [] });
    const pid = status.controlPlane.pid as number;
    expect(JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')).controlPlane).toMatchObject({ mode: 'xds', pid, process: 'control-plane', node: 'node-1' });
    expect((await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')).toContain(join(dir, 'local-xds.yaml'));
    // Its token and root, for ztunnels' AUTH_TOKEN and XDS_ROOT_CA.
    expect((await readFile(join(dir, 'control-plane', 'istio-token'), 'utf8')).length).toBeGreaterThan(20);
    expect(await readFile(join(dir, 'control-plane', 'root-cert.pem'), 'utf8')).toMatch(/^-----BEGIN CERTIFICATE-----/);
    expect((await sandbox('status', ...where)).out).toMatch(/^control plane: xds https:\/\/172\.18\.0\.11:15012, weir-test-control-plane on node-1 pid \d+, serving .*; ztunnels connected: none$/m);
    expect((await sandbox('logs', ...where, 'control-plane')).out).toContain('test control plane serving');

    const down = await sandbox('down', ...where);
    // The control plane + 3 pause + 3 app processes.
    expect(down.out).toBe('sandbox down: stopped 7 processes, removed 6 network namespaces\n');
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('a failed xds up stops the control plane it started', { timeout: 60_000 }, async () => {
    const up = await sandbox('up', ...where, ...absent, '--agent-bin', '/etc/hostname', '--control-plane', 'xds');
    expect(up.code).toBe(1);
    expect(up.out).toContain('starting weir-test-control-plane');
    expect(up.err).toContain('sandbox up failed, everything it made was removed: gave up waiting for node-1.cni-agent');
    const mine = (await readdir('/proc')).filter((pid) => /^\d+$/.test(pid)).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(join(dir, 'local-xds.yaml'));
      } catch {
        return false;
      }
    });
    expect(mine).toEqual([]);
    expect(existsSync(dir)).toBe(false);
  });

  it('down after a crash (no state file) removes what is left by name', { timeout: 60_000 }, async () => {
    const crashed = await Topology.create({ name: `${name}-x`, stateDir: join(dir, `${name}-x`) });
    await crashed.addNode({ name: 'node-1' });
    const down = await sandbox('down', '--state-dir', dir, '--name', `${name}-x`);
    expect(down.out).toBe('sandbox down: stopped 0 processes, removed 2 network namespaces\n');
    expect((await listNetns()).filter((n) => ownedByPrefix(n, `${name}-x`))).toEqual([]);
    expect(existsSync(dir) ? await readdir(dir) : []).toEqual([]);
  });
});

describe("weirctl sandbox with Weir's components", () => {
  const name = `wsf${randomBytes(2).toString('hex')}-${process.pid}`;
  const dir = join(tmpdir(), `${name}-state`);
  const where = ['--state-dir', dir, '--name', name];

  afterAll(async () => {
    await sandbox('down', ...where);
    await Topology.cleanupByPrefix(name, { stateRoot: dir });
  });

  it('captures the demo pods: sleep reaches httpbin over HBONE between the nodes, legacy stays plain', { timeout: 180_000 }, async () => {
    await assertPrerequisites();
    const up = await sandbox('up', ...where);
    expect(up.err).toBe('');
    // Built by turbo before this package's tests (they are devDependencies); by hand: npm run build -w <app>.
    expect(up.out).not.toContain('NOT PRESENT');
    expect(up.code).toBe(0);

    const status = JSON.parse((await sandbox('status', '--json', ...where)).out) as {
      nodes: Array<{ name: string; agentPid: number | null; ztunnelPid: number | null }>;
      pods: Array<{ name: string; ip: string; enrolled: boolean; captured: boolean }>;
    };
    for (const node of status.nodes) {
      expect(node.agentPid, `${node.name} agent`).toEqual(expect.any(Number));
      expect(node.ztunnelPid, `${node.name} ztunnel`).toEqual(expect.any(Number));
    }
    expect(status.pods.map((p) => [p.name, p.enrolled, p.captured])).toEqual([
      ['sleep', true, true],
      ['httpbin', true, true],
      ['legacy-client', false, false],
    ]);
    const ip = (pod: string): string => status.pods.find((p) => p.name === pod)?.ip ?? '';

    let followed = '';
    const following = command.run(['logs', ...where, 'node-1', 'ztunnel', '--follow'], { out: (t) => (followed += t), err: (t) => (followed += t) });
    const topology = await Topology.attach(join(dir, name));
    const meshWire = await topology.capture(topology.underlayNetnsPath, { name: 'mesh', filter: 'tcp' });
    const curl = await sandbox('exec', ...where, 'sleep', '--', 'curl', '-sS', '-m', '10', `http://${ip('httpbin')}:8000/get`);
    await meshWire.stop();
    expect(curl).toMatchObject({ code: 0, err: '' });
    expect(JSON.parse(curl.out)).toMatchObject({ server: 'httpbin', client: { address: ip('sleep') } });
    const outbound = (await sandbox('logs', ...where, 'node-1', 'ztunnel')).out;
    expect(outbound).toMatch(new RegExp(`connection complete .*src.workload=sleep .*dst.hbone_addr=${ip('httpbin').replaceAll('.', '\\.')}:15008 .*direction=outbound`));

    // Between the nodes only HBONE to 15008 crossed, and the request was not readable on the wire.
    expect(await meshWire.decode()).toContain(`> ${ip('httpbin')}.15008:`);
    expect(await meshWire.decode(['tcp port 8000'])).toBe('');
    expect((await meshWire.bytes()).includes('GET /get')).toBe(false);

    const plainWire = await topology.capture(topology.underlayNetnsPath, { name: 'plain', filter: 'tcp' });
    const legacy = await sandbox('exec', ...where, 'legacy-client', '--', 'curl', '-sS', '-m', '10', `http://${ip('httpbin')}:8000/get`);
    await plainWire.stop();
    // Not in the mesh: the legacy client's request crosses in the clear.
    expect((await plainWire.bytes()).includes('GET /get')).toBe(true);
    expect(legacy.code).toBe(0);
    expect(JSON.parse(legacy.out)).toMatchObject({ client: { address: ip('legacy-client') } });

    expect((await sandbox('logs', ...where, 'node-2', 'cni-agent')).out).toContain('name=httpbin');

    // `logs -f` printed the connection as it happened, and ends when ztunnel does.
    await expect.poll(() => followed, { timeout: 10_000 }).toContain('connection complete');
    const down = await sandbox('down', ...where);
    expect(down.out).toMatch(/^sandbox down: stopped 10 processes/);
    expect(await following).toBe(0);
    expect((await listNetns()).filter((n) => ownedByPrefix(n, name))).toEqual([]);
  });
});
