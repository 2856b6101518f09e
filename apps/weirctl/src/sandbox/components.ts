/**
 * Every integration point between the sandbox and Weir's own binaries lives here: where the binaries
 * are, how the node agent and ztunnel are started on a node (flags, environment, sockets), how the CNI
 * plugin gets into the chain (the agent's installer puts it there, as in Istio), and the pod and workload
 * files they read. A component that is not built is reported as such, never stood in for.
 */
import { access, constants, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { TopologyNode, TopologyPod } from '@weir/topology';
import { isEnrolled, type NamespaceSpec } from './spec.js';
import type { ComponentInfo, ComponentName } from './state.js';

/** Where each component's app lives in the repository, and which file of it to run. */
const APPS: Record<ComponentName, { app: string; bin: string; prefer?: string; execed: boolean }> = {
  // Run with this Node: the file need not be executable.
  'weir-cni-agent': { app: 'cni-agent', bin: 'weir-cni-agent', execed: false },
  'weir-ztunnel': { app: 'ztunnel', bin: 'weir-ztunnel', execed: false },
  // Exec'd by the runtime: the single executable (a real host has no Node) when it is built.
  'weir-cni': { app: 'cni-plugin', bin: 'weir-cni', prefer: 'dist/weir-cni', execed: true },
  // Only with `--control-plane xds`: istiod's stand-in, shipped beside weir-ztunnel.
  'weir-test-control-plane': { app: 'ztunnel', bin: 'weir-test-control-plane', execed: false },
};

/** What every sandbox runs; `xds` mode adds weir-test-control-plane. */
export const COMPONENT_NAMES: readonly ComponentName[] = ['weir-cni-agent', 'weir-ztunnel', 'weir-cni'];

/** Readiness of the agent inside the node netns. */
const AGENT_READY_ADDRESS = '127.0.0.1:8000';
/** ztunnel's admin (`/config_dump`, its default) and metrics (its default `:15020`), in the node netns. */
export const ZTUNNEL_ADMIN_ADDRESS = '127.0.0.1:15000';
export const ZTUNNEL_METRICS_ADDRESS = '127.0.0.1:15020';
/** ztunnel's readiness (its default `:15021`), on the node's loopback. */
const ZTUNNEL_READY_URL = 'http://127.0.0.1:15021/healthz/ready';
/**
 * The test control plane listens on node-1's underlay address at istiod's port: every node reaches it,
 * and each sandbox has its own underlay, so parallel sandboxes never share the port.
 */
export const CONTROL_PLANE_PORT = 15012;
/** A name in the control plane's server certificate (it has no SAN for node addresses), as ztunnel's ALT_XDS_HOSTNAME. */
export const CONTROL_PLANE_HOSTNAME = 'istiod.istio-system.svc';
export const CONTROL_PLANE_PROCESS = 'control-plane';

/** Find the binaries: an explicit path wins; else the app's built `bin` in this repository. */
export async function locateComponents(overrides: Partial<Record<ComponentName, string>>, names: readonly ComponentName[] = COMPONENT_NAMES): Promise<ComponentInfo[]> {
  const root = await repoRoot();
  const found: ComponentInfo[] = [];
  for (const name of names) {
    const override = overrides[name];
    if (override !== undefined) {
      const path = resolve(override);
      found.push((await usableFile(path, APPS[name].execed)) ? { name, path, present: true, detail: path } : { name, present: false, detail: `${path} is not ${APPS[name].execed ? 'an executable' : 'a readable'} file` });
      continue;
    }
    const spec = APPS[name];
    if (root === undefined) {
      found.push({ name, present: false, detail: 'not found: weirctl is not running from the Weir repository; pass its path' });
      continue;
    }
    const appDir = join(root, 'apps', spec.app);
    const candidates: string[] = [];
    if (spec.prefer !== undefined) candidates.push(join(appDir, spec.prefer));
    try {
      const pkg = JSON.parse(await readFile(join(appDir, 'package.json'), 'utf8')) as { name?: string; bin?: Record<string, string> };
      const bin = pkg.bin?.[spec.bin];
      if (bin !== undefined) candidates.push(join(appDir, bin));
    } catch {
      // No app at all yet: reported below.
    }
    let path: string | undefined;
    for (const candidate of candidates) {
      if (await usableFile(candidate, spec.execed)) {
        path = candidate;
        break;
      }
    }
    found.push(
      path !== undefined
        ? { name, path, present: true, detail: path }
        : {
            name,
            present: false,
            detail: `not built yet (${candidates.map((c) => c.slice(root.length + 1)).join(' or ') || `apps/${spec.app}`} missing; npm run build -w @weir/app-${spec.app})`,
          },
    );
  }
  return found;
}

export interface SandboxFiles {
  dir: string;
  /** The test control plane's root-cert.pem and istio-token (xds mode). */
  controlPlaneDir: string;
  podsFile: string;
  localXds: string;
  caCert: string;
  caKey: string;
}

export function sandboxFiles(dir: string): SandboxFiles {
  return {
    dir,
    controlPlaneDir: join(dir, 'control-plane'),
    podsFile: join(dir, 'pods.yaml'),
    localXds: join(dir, 'local-xds.yaml'),
    caCert: join(dir, 'ca', 'ca.crt'),
    caKey: join(dir, 'ca', 'ca.key'),
  };
}

export interface NodeComponents {
  zdsSocket: string;
  runDir: string;
  agentProcess?: string;
  ztunnelProcess?: string;
  notes: string[];
}

/** Where a ztunnel gets its state and certificates: the shared files, or the test control plane. */
export type ZtunnelSource =
  | { mode: 'local' }
  | { mode: 'xds'; address: string; hostname: string; rootCa: string; tokenFile: string };

/**
 * Start weir-test-control-plane in the node's netns, serving the local-xds file it watches (workloads,
 * policies) over Delta xDS and issuing certificates as Istio's CA, with a bearer token; resolves once it
 * serves, with what ztunnels need to reach it.
 */
export async function startControlPlane(
  node: TopologyNode,
  component: ComponentInfo,
  files: SandboxFiles,
  say: (line: string) => void,
): Promise<{ process: string; pid: number; source: Extract<ZtunnelSource, { mode: 'xds' }> }> {
  if (!component.present || component.path === undefined) throw new Error(`--control-plane xds needs weir-test-control-plane: ${component.detail}`);
  const listen = `${node.ip}:${CONTROL_PLANE_PORT}`;
  say(`${node.name}: starting weir-test-control-plane on ${listen} (Delta xDS and CA, serving ${files.localXds})`);
  const proc = await node.spawn({
    name: CONTROL_PLANE_PROCESS,
    cmd: process.execPath,
    args: [component.path, '--config', files.localXds, '--out-dir', files.controlPlaneDir, '--listen', listen],
  });
  await waitFor(async () => /"xdsAddress"/.test(await readFile(proc.logFile, 'utf8')), 30_000, () => proc.running, `${proc.name} to serve on ${listen}`, proc.logFile);
  return {
    process: proc.name,
    pid: proc.pid,
    source: {
      mode: 'xds',
      address: `https://${listen}`,
      hostname: CONTROL_PLANE_HOSTNAME,
      rootCa: join(files.controlPlaneDir, 'root-cert.pem'),
      tokenFile: join(files.controlPlaneDir, 'istio-token'),
    },
  };
}

/**
 * Start the node agent, then ztunnel, inside the node's netns (the agent is host-network; ztunnel runs
 * beside it, its admin ports on the node's loopback). The agent installs the CNI plugin into the node's
 * conflist when it is ready, so pods created afterwards go through it.
 */
export async function startNodeComponents(
  node: TopologyNode,
  components: readonly ComponentInfo[],
  files: SandboxFiles,
  source: ZtunnelSource,
  say: (line: string) => void,
): Promise<NodeComponents> {
  const runDir = join(files.dir, 'nodes', node.name, 'run');
  await mkdir(runDir, { recursive: true });
  const zdsSocket = join(runDir, 'ztunnel.sock');
  const result: NodeComponents = { zdsSocket, runDir, notes: [] };
  const agent = components.find((c) => c.name === 'weir-cni-agent');
  const ztunnel = components.find((c) => c.name === 'weir-ztunnel');
  const plugin = components.find((c) => c.name === 'weir-cni');

  if (agent?.present && agent.path !== undefined) {
    if (!plugin?.present || plugin.path === undefined) result.notes.push(`weir-cni is not installed in the chain: ${plugin?.detail ?? 'unknown'}`);
    result.agentProcess = await startAgent(node, agent.path, plugin?.present ? plugin.path : undefined, files, result, say);
  } else {
    result.notes.push(`weir-cni-agent is not running: ${agent?.detail ?? 'unknown'}; pods are NOT captured`);
    if (plugin?.present) result.notes.push('weir-cni is not installed in the chain: the agent installs it');
  }

  if (ztunnel?.present && ztunnel.path !== undefined) {
    // Pods come next, and weir-cni fails an enrolled pod's ADD (fail closed) until ztunnel takes it over ZDS;
    // a runtime would retry the ADD, the sandbox creates each pod once, so the node's data plane must be up.
    result.ztunnelProcess = await startZtunnel(node, ztunnel.path, files, source, result, result.agentProcess !== undefined, say);
  } else {
    result.notes.push(`weir-ztunnel is not running: ${ztunnel?.detail ?? 'unknown'}`);
  }
  return result;
}

/** The capture options the sandbox starts every agent with (`startAgent`), for `doctor` when the agent does not answer. */
export const SANDBOX_AGENT_CAPTURE = { dnsCapture: false } as const;

/**
 * weir-cni-agent in the node's netns, with weir-cni installed into the node's chain when `pluginPath` is
 * given; resolves once it is ready (and the plugin is in the conflist), with its process name.
 */
export async function startAgent(
  node: TopologyNode,
  agentPath: string,
  pluginPath: string | undefined,
  files: SandboxFiles,
  where: { zdsSocket: string; runDir: string },
  say: (line: string) => void,
): Promise<string> {
  const args = [
    agentPath,
    'run',
    '--node-name', node.name,
    '--pods-file', files.podsFile,
    '--zds-socket', where.zdsSocket,
    '--run-dir', join(where.runDir, 'cni'),
    '--ready-address', AGENT_READY_ADDRESS,
  ];
  if (pluginPath !== undefined) args.push('--install', '--plugin-binary', pluginPath, '--cni-bin-dir', node.cniBinDir, '--cni-conf-dir', node.cniConfDir);
  say(`${node.name}: starting weir-cni-agent${pluginPath !== undefined ? ' (it installs weir-cni into the CNI chain)' : ''}`);
  // DNS capture off: the sandbox shows the seed's in-pod rule set exactly (`weirctl doctor` reads
  // this from the agent's /debug/config); the agent's own default (on, as Istio) is covered by its tests.
  const proc = await node.spawn({ name: `${node.name}.cni-agent`, cmd: process.execPath, args, env: { NODE_NAME: node.name, DNS_CAPTURE: String(SANDBOX_AGENT_CAPTURE.dnsCapture) } });
  await waitForAgent(node, proc, pluginPath !== undefined);
  return proc.name;
}

/**
 * weir-ztunnel in the node's netns, fed by the shared files or the test control plane; with `waitReady`,
 * resolves once its readiness answers (first snapshot from the agent, nothing pending). Returns its process name.
 */
export async function startZtunnel(
  node: TopologyNode,
  ztunnelPath: string,
  files: SandboxFiles,
  source: ZtunnelSource,
  where: { zdsSocket: string },
  waitReady: boolean,
  say: (line: string) => void,
): Promise<string> {
  say(`${node.name}: starting weir-ztunnel${source.mode === 'xds' ? ` (xDS and CA: ${source.address})` : ''}`);
  const env: Record<string, string> = { NODE_NAME: node.name, INPOD_UDS: where.zdsSocket, IPV6_ENABLED: 'false' };
  if (source.mode === 'local') {
    env.LOCAL_XDS_PATH = files.localXds;
    // One CA for every node, so HBONE between nodes verifies.
    env.WEIR_CA_CERT = files.caCert;
    env.WEIR_CA_KEY = files.caKey;
  } else {
    // As the Istio chart sets them for ztunnel; no local config or CA (ztunnel refuses two sources).
    Object.assign(env, {
      XDS_ADDRESS: source.address,
      CA_ADDRESS: source.address,
      XDS_ROOT_CA: source.rootCa,
      CA_ROOT_CA: source.rootCa,
      AUTH_TOKEN: source.tokenFile,
      ALT_XDS_HOSTNAME: source.hostname,
      ALT_CA_HOSTNAME: source.hostname,
      POD_NAME: `ztunnel-${node.name}`,
      POD_NAMESPACE: 'istio-system',
      INSTANCE_IP: node.ip,
      ISTIO_META_ENABLE_HBONE: 'true',
    });
  }
  const proc = await node.spawn({ name: `${node.name}.ztunnel`, cmd: process.execPath, args: [ztunnelPath], env });
  if (source.mode === 'local') {
    // The first ztunnel creates the shared CA; the next ones must load it, not race to create their own.
    await waitFor(async () => (await isFile(files.caCert)) && (await isFile(files.caKey)), 15_000, () => proc.running, `${proc.name} to create the CA at ${files.caCert}`, proc.logFile);
  }
  if (waitReady) {
    await waitFor(
      async () => (await node.exec('curl', ['-sf', '-o', '/dev/null', ZTUNNEL_READY_URL])).code === 0,
      60_000,
      () => proc.running,
      `${proc.name} to be ready (${ZTUNNEL_READY_URL})`,
      proc.logFile,
    );
  }
  return proc.name;
}

async function waitForAgent(node: TopologyNode, proc: { running: boolean; name: string; logFile: string }, installsPlugin: boolean): Promise<void> {
  await waitFor(
    async () => (await node.exec('curl', ['-sf', '-o', '/dev/null', `http://${AGENT_READY_ADDRESS}/readyz`])).code === 0,
    30_000,
    () => proc.running,
    `${proc.name} to be ready on ${AGENT_READY_ADDRESS}/readyz`,
    proc.logFile,
  );
  if (installsPlugin) {
    await waitFor(
      async () => JSON.parse(await readFile(node.conflistPath, 'utf8')).plugins.length > 1,
      15_000,
      () => proc.running,
      `${proc.name} to install weir-cni into ${node.conflistPath}`,
      proc.logFile,
    );
  }
}

/**
 * Once the pods exist: every enrolled pod has its in-pod rules, and ztunnel is ready (its first snapshot
 * arrived and no proxy is pending), so `up` returns a sandbox whose traffic is already captured.
 */
export async function waitForCapture(
  node: TopologyNode,
  wired: NodeComponents,
  enrolledPods: readonly TopologyPod[],
  hasCaptureRules: (pod: TopologyPod) => Promise<boolean>,
): Promise<void> {
  const processOf = (name: string | undefined) => (name === undefined ? undefined : node.processes.find((p) => p.name === name));
  const agent = processOf(wired.agentProcess);
  const ztunnel = processOf(wired.ztunnelProcess);
  if (agent) {
    for (const pod of enrolledPods) {
      await waitFor(() => hasCaptureRules(pod), 30_000, () => agent.running, `${agent.name} to capture ${pod.namespace}/${pod.name}`, agent.logFile);
    }
  }
  if (agent && ztunnel) {
    await waitFor(
      async () => (await node.exec('curl', ['-sf', '-o', '/dev/null', ZTUNNEL_READY_URL])).code === 0,
      30_000,
      () => ztunnel.running,
      `${ztunnel.name} to be ready (${ZTUNNEL_READY_URL})`,
      ztunnel.logFile,
    );
  }
}

/** A pod published before it exists in the topology (its uid is then passed to `addPod`). */
export interface ScheduledPod {
  name: string;
  namespace: string;
  uid: string;
  node: string;
  labels: Readonly<Record<string, string>>;
}

/** What the workload files are rendered from: the state's namespaces and policies, and the pods that exist now. */
export interface PublishedWorkloads {
  namespaces: readonly NamespaceSpec[];
  /** Labels from the state (they change with `label`); the pod's address, uid and netns from the topology. */
  pods: ReadonlyArray<{ pod: TopologyPod; node: string; labels: Readonly<Record<string, string>> }>;
  /**
   * Pods about to be created: as in Kubernetes, a pod is known (to the agent, through the pods file)
   * before its sandbox's CNI ADD asks the agent about it. No address or netns yet, so not in ztunnel's file.
   */
  scheduled?: ReadonlyArray<ScheduledPod>;
  /** ztunnel local-config policies, in their input shape. */
  policies: ReadonlyArray<Record<string, unknown>>;
}

/**
 * The files the agent (`--pods-file`) and ztunnel (`LOCAL_XDS_PATH`) read. Written as JSON, which YAML
 * parsers read as YAML; replaced atomically (both watch them), always whole from the state, so a label or
 * policy change is never lost to a later rewrite.
 */
export async function publishWorkloads(files: SandboxFiles, w: PublishedWorkloads): Promise<void> {
  const podsFile = {
    namespaces: w.namespaces.map((n) => ({ name: n.name, labels: n.labels })),
    pods: [
      ...w.pods.map(({ pod, node, labels }) => ({
        name: pod.name,
        namespace: pod.namespace,
        uid: pod.uid,
        labels: { ...labels },
        serviceAccount: 'default',
        node,
        ips: [pod.ip],
        netns: pod.netnsPath,
      })),
      ...(w.scheduled ?? []).map((p) => ({ name: p.name, namespace: p.namespace, uid: p.uid, labels: { ...p.labels }, serviceAccount: 'default', node: p.node })),
    ],
  };

  const localXds = {
    workloads: w.pods.map(({ pod, node, labels }) => ({
      uid: pod.uid,
      name: pod.name,
      namespace: pod.namespace,
      serviceAccount: 'default',
      trustDomain: 'cluster.local',
      workloadIps: [pod.ip],
      node,
      protocol: isEnrolled({ labels }, w.namespaces.find((n) => n.name === pod.namespace)) ? 'HBONE' : 'TCP',
    })),
    services: [],
    policies: w.policies,
  };
  await writeAtomic(files.podsFile, podsFile);
  await writeAtomic(files.localXds, localXds);
}

async function writeAtomic(path: string, value: unknown): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, path);
}

async function waitFor(check: () => Promise<boolean>, timeoutMs: number, alive: () => boolean, what: string, logFile: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (!alive()) throw new Error(`gave up waiting for ${what}: the process exited; its log ends:\n${await logTail(logFile)}`);
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what} after ${timeoutMs} ms; its log ends:\n${await logTail(logFile)}`);
    await sleep(100);
  }
}

/** The last lines of a log, quoted: a failed `up` removes the files, so the reason must travel in the error. */
async function logTail(logFile: string): Promise<string> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const lines = text.trimEnd().split('\n').slice(-15);
  return lines.map((l) => `  | ${l}`).join('\n') || '  | (empty)';
}

/** The repository root: the nearest ancestor of this file with `apps/` and a workspaces package.json. */
async function repoRoot(): Promise<string | undefined> {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { workspaces?: unknown };
      if (pkg.workspaces !== undefined) return dir;
    } catch {
      // Not here; go up.
    }
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

async function usableFile(path: string, executable: boolean): Promise<boolean> {
  try {
    await access(path, executable ? constants.X_OK : constants.R_OK);
    return await isFile(path);
  } catch {
    return false;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
