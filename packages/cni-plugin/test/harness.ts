/**
 * A minimal CNI chain harness for the plugin's tests: a "node" netns holding the bridge, pod netns,
 * Debian's real loopback/bridge/host-local plugins, a fake Kubernetes API and a test node agent on
 * the plugin event socket. (To be replaced by @weir/topology's chain once it lands.)
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeApiServer } from '@weir/fake-apiserver';

export const CNI_BIN_DIR = '/usr/lib/cni';

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs the plugin under test the way a runtime does: env + stdin, stdout/exit code back. */
export type Invoke = (env: Record<string, string>, stdin: string) => Promise<RunResult>;

export function run(cmd: string, args: string[], opts: { env?: Record<string, string>; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ exitCode: code ?? -1, stdout, stderr }));
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.exitCode}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Fails (never skips) with what is missing when the test cannot run here. */
export function requireChainPrerequisites(): void {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (network namespaces and CNI plugins); run as root');
  for (const p of ['loopback', 'bridge', 'host-local']) {
    if (!existsSync(join(CNI_BIN_DIR, p))) {
      throw new Error(`${join(CNI_BIN_DIR, p)} is missing: install Debian's containernetworking-plugins (scripts/setup-host.sh)`);
    }
  }
}

const tag = `${process.pid % 100000}${Math.random().toString(36).slice(2, 5)}`;
let seq = 0;
/** A unique short name (interface names and netns names stay ≤ 15 chars). */
export function uniqueName(prefix: string): string {
  return `${prefix}${tag}${(seq++).toString(36)}`.slice(0, 15);
}

/** A test node agent: an HTTP server on `<runDir>/pluginevent.sock`, recording `/cmdadd` bodies. */
export class TestAgent {
  readonly events: unknown[] = [];
  /** How the next requests are answered: 200 `pod captured` / `pod not enrolled`, 200 with another body (`ok`), 500, or never. */
  mode: 'captured' | 'not-enrolled' | 'other' | 'fail' | 'hang' = 'captured';
  readonly #server: Server;

  private constructor() {
    this.#server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.events.push({
          method: req.method,
          url: req.url,
          contentType: req.headers['content-type'],
          body: JSON.parse(Buffer.concat(chunks).toString()) as unknown,
        });
        if (this.mode === 'hang') return; // never answers: the plugin's deadline must fire
        if (this.mode === 'fail') {
          res.writeHead(500, { 'Content-Type': 'text/plain' });
          res.end('failed to add pod: no ztunnel connection\n');
          return;
        }
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end(this.mode === 'captured' ? 'pod captured\n' : this.mode === 'other' ? 'ok\n' : 'pod not enrolled\n');
      });
    });
  }

  static async listen(socketPath: string): Promise<TestAgent> {
    const agent = new TestAgent();
    await new Promise<void>((resolve, reject) => {
      agent.#server.once('error', reject);
      agent.#server.listen(socketPath, resolve);
    });
    return agent;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/**
 * What a SIGKILLed agent leaves: its socket file with nobody listening (connect → ECONNREFUSED). A
 * child process listens and is killed, so the file is not unlinked as a clean close would.
 */
export async function staleSocket(socketPath: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`socket holder exited (${code}) before listening on ${socketPath}`)));
    child.stdout.once('data', () => resolve());
  });
  child.removeAllListeners('exit');
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  if (!existsSync(socketPath)) throw new Error(`${socketPath} vanished with its listener; cannot simulate a killed agent`);
}

export interface Pod {
  name: string;
  namespace: string;
  uid: string;
  containerId: string;
  netnsName: string;
  netnsPath: string;
}

/**
 * One simulated node: a netns holding the bridge (so the host's links are never touched), a fake API
 * server, and a run dir with the kubeconfig the agent would write. Pods are netns the test creates.
 */
export class ChainHarness {
  readonly pods: Pod[] = [];
  readonly bridge = uniqueName('wb');
  readonly subnet = `10.${100 + Math.floor(Math.random() * 100)}.${Math.floor(Math.random() * 250)}.0/24`;

  private constructor(
    readonly nodeNs: string,
    readonly dir: string,
    readonly runDir: string,
    readonly api: FakeApiServer,
  ) {}

  static async create(): Promise<ChainHarness> {
    requireChainPrerequisites();
    const dir = await mkdtemp(join(tmpdir(), 'weir-cni-test-'));
    const nodeNs = uniqueName('wcn');
    await must('ip', ['netns', 'add', nodeNs]);
    try {
      const api = await FakeApiServer.start();
      const h = new ChainHarness(nodeNs, dir, join(dir, 'run'), api);
      await mkdir(h.runDir);
      await api.kubeconfig(join(h.runDir, 'istio-cni-kubeconfig'));
      return h;
    } catch (err) {
      await run('ip', ['netns', 'del', nodeNs]);
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  get socketPath(): string {
    return join(this.runDir, 'pluginevent.sock');
  }

  /** Creates a pod netns and the pod object in the fake API. */
  async addPod(name: string, namespace: string, opts: { labels?: Record<string, string>; annotations?: Record<string, string> } = {}): Promise<Pod> {
    const netnsName = uniqueName('wcp');
    await must('ip', ['netns', 'add', netnsName]);
    const created = this.api.createPod({
      metadata: { name, namespace, labels: opts.labels ?? {}, annotations: opts.annotations ?? {} },
      spec: { nodeName: 'node-1', containers: [{ name: 'app', image: 'busybox' }] },
    });
    const pod: Pod = {
      name,
      namespace,
      uid: created.metadata.uid ?? '',
      containerId: `c${Math.random().toString(16).slice(2)}`,
      netnsName,
      netnsPath: `/var/run/netns/${netnsName}`,
    };
    this.pods.push(pod);
    return pod;
  }

  env(command: string, pod: Pod, overrides: Record<string, string> = {}): Record<string, string> {
    return {
      CNI_COMMAND: command,
      CNI_CONTAINERID: pod.containerId,
      CNI_NETNS: pod.netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_PATH: CNI_BIN_DIR,
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${pod.namespace};K8S_POD_NAME=${pod.name};K8S_POD_INFRA_CONTAINER_ID=${pod.containerId};K8S_POD_UID=${pod.uid}`,
      ...overrides,
    };
  }

  bridgeConf(cniVersion: string): Record<string, unknown> {
    return {
      cniVersion,
      name: 'weir-test',
      type: 'bridge',
      bridge: this.bridge,
      isGateway: true,
      ipMasq: false,
      ipam: { type: 'host-local', ranges: [[{ subnet: this.subnet }]], dataDir: join(this.dir, 'ipam') },
    };
  }

  /** Our entry in the conflist, as the installer writes it; libcni adds name, cniVersion, prevResult. */
  pluginConf(cniVersion: string, prevResult: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
    const conf: Record<string, unknown> = {
      cniVersion,
      name: 'weir-test',
      type: 'weir-cni',
      plugin_log_level: 'debug',
      cni_agent_run_dir: this.runDir,
      ambient_enabled: true,
      exclude_namespaces: ['istio-system', 'kube-system'],
      pod_namespace: 'istio-system',
      ...extra,
    };
    if (prevResult !== undefined) conf['prevResult'] = prevResult;
    return conf;
  }

  /** Runs a real plugin from /usr/lib/cni inside the node netns, as the runtime would on a node. */
  runReal(plugin: string, env: Record<string, string>, conf: unknown): Promise<RunResult> {
    return run('ip', ['netns', 'exec', this.nodeNs, join(CNI_BIN_DIR, plugin)], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...env },
      input: JSON.stringify(conf),
    });
  }

  /** The primary part of the chain: loopback (its own network) then bridge + host-local. Returns the bridge result. */
  async primaryAdd(pod: Pod, cniVersion: string): Promise<Record<string, unknown>> {
    const lo = await this.runReal('loopback', this.env('ADD', pod), { cniVersion, name: 'lo', type: 'loopback' });
    if (lo.exitCode !== 0) throw new Error(`loopback ADD failed: ${lo.stdout} ${lo.stderr}`);
    const br = await this.runReal('bridge', this.env('ADD', pod), this.bridgeConf(cniVersion));
    if (br.exitCode !== 0) throw new Error(`bridge ADD failed: ${br.stdout} ${br.stderr}`);
    return JSON.parse(br.stdout) as Record<string, unknown>;
  }

  async primaryDel(pod: Pod, cniVersion: string): Promise<void> {
    const br = await this.runReal('bridge', this.env('DEL', pod), this.bridgeConf(cniVersion));
    if (br.exitCode !== 0) throw new Error(`bridge DEL failed: ${br.stdout} ${br.stderr}`);
  }

  async close(): Promise<void> {
    const errors: string[] = [];
    for (const p of this.pods) {
      const r = await run('ip', ['netns', 'del', p.netnsName]);
      if (r.exitCode !== 0) errors.push(r.stderr);
    }
    const r = await run('ip', ['netns', 'del', this.nodeNs]);
    if (r.exitCode !== 0) errors.push(r.stderr);
    await this.api.close();
    await rm(this.dir, { recursive: true, force: true });
    if (errors.length > 0) throw new Error(`cleanup failed: ${errors.join('; ')}`);
  }
}
