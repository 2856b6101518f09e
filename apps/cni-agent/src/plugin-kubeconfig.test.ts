import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KubeConfig } from '@kubernetes/client-node';
import { silentLogger } from '@weir/cni-agent';
import { createTestPki, FakeApiServer, type TestPki } from '@weir/fake-apiserver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniInstaller } from './installer.js';
import { renderPluginKubeconfig } from './plugin-kubeconfig.js';

const PLUGIN = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../cni-plugin/dist/weir-cni');
const SA = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Execs the real plugin binary as a runtime does: CNI_* variables, the network config on stdin. */
function runPlugin(env: Record<string, string>, stdin: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(PLUGIN, [], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('close', (code) => done({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

/**
 * A service account dir laid out as kubelet projects it: `token` and `ca.crt` are symlinks into
 * `..data`, itself a symlink to a timestamped dir; a rotation swaps `..data` with one rename.
 */
async function projectServiceAccount(dir: string, files: Record<string, string>, generation: number): Promise<void> {
  const gen = join(dir, `..gen_${generation}`);
  await mkdir(gen, { recursive: true });
  for (const [name, text] of Object.entries(files)) {
    await writeFile(join(gen, name), text);
    if (!existsSync(join(dir, name))) await symlink(join('..data', name), join(dir, name));
  }
  await symlink(`..gen_${generation}`, join(dir, '..data_tmp'));
  await rename(join(dir, '..data_tmp'), join(dir, '..data'));
}

async function until(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * The plugin kubeconfig the agent writes in-cluster, used by the real weir-cni binary on the "host"
 * (where the agent container's /var/run/secrets does not exist) with the agent down, against the fake
 * API over HTTPS with a bearer token.
 */
describe('plugin kubeconfig for the host (agent down → API fallback)', () => {
  let pki: TestPki;
  let api: FakeApiServer;
  let dir: string;
  let root: string;
  let installer: CniInstaller | undefined;
  const saved = { host: process.env['KUBERNETES_SERVICE_HOST'], port: process.env['KUBERNETES_SERVICE_PORT'] };

  beforeAll(async () => {
    if (!existsSync(PLUGIN)) throw new Error(`${PLUGIN} is missing: build it with npm run build -w @weir/app-cni-plugin`);
    pki = await createTestPki();
    api = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 'tok-1' });
    dir = await mkdtemp(join(tmpdir(), 'weir-plugin-kc-'));
    // The agent container's root: its service account files are under root + /var/run/secrets/….
    root = join(dir, 'container');
    await mkdir(join(root, SA), { recursive: true });
    await projectServiceAccount(join(root, SA), { 'ca.crt': pki.ca, token: 'tok-1\n', namespace: 'weir-system' }, 1);
  });
  afterAll(async () => {
    await installer?.unwatch();
    await api?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('lets a pod outside the mesh start and still fails an enrolled pod, and follows token rotation', async () => {
    api.createNamespace('apps', { 'istio.io/dataplane-mode': 'ambient' });
    api.createNamespace('plain');
    api.createPod({ metadata: { name: 'web-0', namespace: 'apps', uid: 'u-web' }, spec: { containers: [{ name: 'app', image: 'x' }] } });
    api.createPod({ metadata: { name: 'db-0', namespace: 'plain', uid: 'u-db' }, spec: { containers: [{ name: 'app', image: 'x' }] } });

    // What main.ts does in-cluster: loadFromCluster (server from KUBERNETES_SERVICE_HOST/PORT), then the installer.
    const port = new URL(api.url).port;
    process.env['KUBERNETES_SERVICE_HOST'] = '127.0.0.1';
    process.env['KUBERNETES_SERVICE_PORT'] = port;
    const kc = new KubeConfig();
    try {
      kc.loadFromCluster(root);
    } finally {
      for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    const runDir = join(dir, 'host', 'run');
    const confDir = join(dir, 'host', 'net.d');
    await mkdir(confDir, { recursive: true });
    await writeFile(join(confDir, '10-bridge.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'bridge' }] }));
    const kubeconfigPath = join(runDir, 'istio-cni-kubeconfig');
    installer = new CniInstaller({
      pluginSource: PLUGIN,
      pluginType: 'weir-cni',
      binDir: join(dir, 'host', 'bin'),
      confDir,
      pluginConfig: { name: 'weir-cni', cni_agent_run_dir: runDir, ambient_enabled: true, kubernetes: { kubeconfig: kubeconfigPath } },
      kubeconfig: { path: kubeconfigPath, render: () => renderPluginKubeconfig(kc) },
      stateFile: join(runDir, 'installer-state.json'),
      logger: silentLogger,
      debounceMs: 20,
      resyncMs: 0,
    });
    await installer.install();
    expect((await stat(kubeconfigPath)).mode & 0o777).toBe(0o600);
    const written = await readFile(kubeconfigPath, 'utf8');
    expect(written).not.toContain('/var/run/secrets');
    expect(JSON.parse(written)).toMatchObject({
      clusters: [{ cluster: { server: `https://127.0.0.1:${port}`, 'certificate-authority-data': Buffer.from(pki.ca).toString('base64') } }],
      users: [{ user: { token: 'tok-1' } }],
    });

    // The network config the runtime hands the plugin: the conflist entry the installer wrote.
    const conflist = JSON.parse(await readFile(join(confDir, '10-bridge.conflist'), 'utf8')) as { plugins: Record<string, unknown>[] };
    const entry = conflist.plugins.at(-1)!;
    const add = (namespace: string, name: string) =>
      runPlugin(
        {
          CNI_COMMAND: 'ADD',
          CNI_CONTAINERID: `c-${name}`,
          CNI_NETNS: join(dir, 'no-such-netns'),
          CNI_IFNAME: 'eth0',
          CNI_PATH: '/opt/cni/bin',
          CNI_ARGS: `K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${name}`,
        },
        JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', ...entry, prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.9.0.5/24' }] } }),
      );

    // On the host the agent container's files are not there; nothing listens on pluginevent.sock.
    await rename(root, `${root}.away`);
    try {
      const plain = await add('plain', 'db-0');
      expect(plain.code, plain.stdout + plain.stderr).toBe(0);
      expect(JSON.parse(plain.stdout)).toMatchObject({ ips: [{ address: '10.9.0.5/24' }] });
      expect(plain.stderr).toContain('pod not ambient enabled (checked with the API, node agent unreachable)');
      const enrolled = await add('apps', 'web-0');
      expect(enrolled.code).toBe(1);
      expect(JSON.parse(enrolled.stdout)).toMatchObject({ code: 11 });
      expect(api.requests.filter((r) => r.path.startsWith('/api/v1/namespaces/')).every((r) => r.authorization === 'Bearer tok-1' && r.status === 200)).toBe(true);

      // What the agent wrote before (client-node's exportConfig): paths into the container, so the same ADD failed.
      await writeFile(kubeconfigPath, kc.exportConfig());
      const before = await add('plain', 'db-0');
      expect(before.code).toBe(1);
      expect(before.stdout).toMatch(/\/var\/run\/secrets\/kubernetes\.io\/serviceaccount\/\S+ cannot be read: ENOENT/);
    } finally {
      await rename(`${root}.away`, root);
    }

    // Rotation: kubelet swaps the projected token; the installer rewrites the kubeconfig.
    await installer.refreshKubeconfig(true);
    installer.watch();
    await projectServiceAccount(join(root, SA), { 'ca.crt': pki.ca, token: 'tok-2\n', namespace: 'weir-system' }, 2);
    await until('kubeconfig with the rotated token', async () => (await readFile(kubeconfigPath, 'utf8')).includes('"token": "tok-2"'));
    expect((await stat(kubeconfigPath)).mode & 0o777).toBe(0o600);
    // The API now accepts only the new token (same address).
    await api.close();
    api = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 'tok-2', port: Number(port) });
    api.createNamespace('plain');
    api.createPod({ metadata: { name: 'db-0', namespace: 'plain', uid: 'u-db' }, spec: { containers: [{ name: 'app', image: 'x' }] } });
    const rotated = await add('plain', 'db-0');
    expect(rotated.code, rotated.stdout + rotated.stderr).toBe(0);
    expect(api.requests[0]?.authorization).toBe('Bearer tok-2');
  });

  it('inlines client certificates and keeps what the plugin cannot use, so it fails naming the field', async () => {
    await writeFile(join(dir, 'client.crt'), pki.clientCert);
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'c', server: 'https://10.0.0.1:6443', skipTLSVerify: false, caData: Buffer.from(pki.ca).toString('base64'), tlsServerName: 'kubernetes' }],
      users: [{ name: 'u', certFile: join(dir, 'client.crt'), keyData: Buffer.from(pki.clientKey).toString('base64'), exec: { command: 'aws', apiVersion: 'client.authentication.k8s.io/v1' } }],
      contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
      currentContext: 'x',
    });
    const out = await renderPluginKubeconfig(kc);
    const doc = JSON.parse(out.content) as { clusters: { cluster: Record<string, unknown> }[]; users: { user: Record<string, unknown> }[] };
    expect(doc.clusters[0]?.cluster).toEqual({ server: 'https://10.0.0.1:6443', 'certificate-authority-data': Buffer.from(pki.ca).toString('base64'), 'tls-server-name': 'kubernetes' });
    expect(doc.users[0]?.user).toMatchObject({
      'client-certificate-data': Buffer.from(pki.clientCert).toString('base64'),
      'client-key-data': Buffer.from(pki.clientKey).toString('base64'),
      exec: { command: 'aws' },
    });
    expect(out.sources).toEqual([join(dir, 'client.crt')]);
    expect(out.warnings).toEqual(['users[].user.exec']);
  });
});
