import { randomUUID } from 'node:crypto';
import { open, readFile, rm, rmdir } from 'node:fs/promises';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import {
  Topology,
  checkPrerequisites,
  execInNetns,
  formatMissing,
  httpEcho,
  isSameProcess,
  listNetns,
  ownedByPrefix,
  readState,
  type ProcessRecord,
  type TeardownReport,
  type TopologyPod,
} from '@weir/topology';
import {
  COMPONENT_NAMES,
  ZTUNNEL_ADMIN_ADDRESS,
  locateComponents,
  publishWorkloads,
  sandboxFiles,
  startControlPlane,
  startNodeComponents,
  waitForCapture,
  type ZtunnelSource,
} from './components.js';
import { defaultSpec, isEnrolled, type PodSpec } from './spec.js';
import { ztunnelDump } from '../in-netns.js';
import {
  createSandboxState,
  readSandboxState,
  stateFile,
  writeSandboxState,
  type ComponentInfo,
  type ComponentName,
  type ControlPlaneMode,
  type SandboxState,
} from './state.js';

export const DEFAULT_SANDBOX_DIR = '/var/run/weir-sandbox';
/** Prefix of every netns of the sandbox (`weir-sbx-node-1`, `weir-sbx-demo-sleep`, …). */
export const DEFAULT_SANDBOX_NAME = 'weir-sbx';

export interface SandboxLocation {
  /** Holds state.json, the pods and workload files, the CA, node run dirs and the topology state. */
  dir: string;
  name: string;
}

/** An expected failure: printed as is, exit status 1. */
export class SandboxError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SandboxError';
  }
}

export interface UpOptions {
  nodes: number;
  binaries: Partial<Record<ComponentName, string>>;
  /** `local` (default): ztunnels read LOCAL_XDS_PATH and share a CA on disk; `xds`: a test control plane serves both. */
  controlPlane?: ControlPlaneMode;
}

/** Build the default sandbox; everything it starts keeps running after this process exits. */
export async function sandboxUp(where: SandboxLocation, options: UpOptions, say: (line: string) => void): Promise<{ state: SandboxState; ips: Record<string, string> }> {
  const missing = await checkPrerequisites();
  if (missing.length > 0) throw new SandboxError(formatMissing(missing));
  // The common case, with the clearest message; the exclusive create below settles races.
  if ((await readSandboxState(where.dir).catch(() => 'corrupt')) !== undefined) {
    throw new SandboxError(`a sandbox is already up (${stateFile(where.dir)}); run weirctl sandbox down first`);
  }
  const leftovers = (await listNetns()).filter((n) => ownedByPrefix(n, where.name));
  if (leftovers.length > 0) {
    throw new SandboxError(`network namespaces of an earlier sandbox are still there (${leftovers.join(', ')}); run weirctl sandbox down first`);
  }
  const mode = options.controlPlane ?? 'local';
  const components = await locateComponents(options.binaries, mode === 'xds' ? [...COMPONENT_NAMES, 'weir-test-control-plane'] : COMPONENT_NAMES);
  const controlPlaneComponent = components.find((c) => c.name === 'weir-test-control-plane');
  // Without it there is nothing to serve xDS: refuse before building anything.
  if (controlPlaneComponent && !controlPlaneComponent.present) throw new SandboxError(`--control-plane xds needs weir-test-control-plane: ${controlPlaneComponent.detail}`);
  const spec = defaultSpec(options.nodes);
  const files = sandboxFiles(where.dir);
  const state: SandboxState = {
    version: 1,
    name: where.name,
    createdAt: new Date().toISOString(),
    topologyStateDir: join(where.dir, where.name),
    files: { podsFile: files.podsFile, localXds: files.localXds, caCert: files.caCert, caKey: files.caKey },
    components,
    controlPlane: { mode: 'local' },
    namespaces: spec.namespaces,
    policies: [],
    pods: spec.pods,
    nodes: [],
  };
  // Written first and exclusively: from here on `down` can remove whatever a failure or crash leaves, and
  // a concurrent `up` stops before touching anything.
  if (!(await createSandboxState(where.dir, state))) {
    throw new SandboxError(`a sandbox is already up (${stateFile(where.dir)}); run weirctl sandbox down first`);
  }
  await publishWorkloads(files, { namespaces: spec.namespaces, pods: [], policies: [] });
  let topology: Topology | undefined;
  try {
    topology = await Topology.create({ name: where.name, stateDir: state.topologyStateDir });
    let source: ZtunnelSource = { mode: 'local' };
    for (const name of spec.nodes) {
      const node = await topology.addNode({ name });
      say(`node ${name}: netns ${node.netns}, address ${node.ip}, pod CIDR ${node.podCidr}`);
      if (controlPlaneComponent && name === spec.nodes[0]) {
        // On the first node, before any ztunnel. The topology records the process as it spawns, so a
        // failed or interrupted `up` stops it in `down` like every other process (SIGTERM, then SIGKILL).
        const started = await startControlPlane(node, controlPlaneComponent, files, say);
        source = started.source;
        const { address, hostname, rootCa, tokenFile } = source;
        state.controlPlane = { mode: 'xds', node: name, process: started.process, pid: started.pid, address, hostname, outDir: files.controlPlaneDir, rootCa, tokenFile };
        await writeSandboxState(where.dir, state);
      }
      const wired = await startNodeComponents(node, components, files, source, say);
      state.nodes.push({ name, ...wired });
      await writeSandboxState(where.dir, state);
    }
    const created: Array<{ pod: TopologyPod; node: string; labels: Record<string, string> }> = [];
    for (const podSpec of state.pods) {
      // Known to the agent before its CNI ADD asks about it, as a pod is in the API before kubelet creates its sandbox.
      const uid = randomUUID();
      const scheduled = [{ name: podSpec.name, namespace: podSpec.namespace, uid, node: podSpec.node, labels: podSpec.labels }];
      await publishWorkloads(files, { namespaces: state.namespaces, pods: created, scheduled, policies: state.policies });
      const pod = await topology.node(podSpec.node).addPod({ name: podSpec.name, namespace: podSpec.namespace, labels: podSpec.labels, uid });
      await startApp(pod, podSpec);
      created.push({ pod, node: podSpec.node, labels: podSpec.labels });
      await publishWorkloads(files, { namespaces: state.namespaces, pods: created, policies: state.policies });
      const enrolled = isEnrolled(podSpec, state.namespaces.find((n) => n.name === podSpec.namespace));
      const app = podSpec.app.kind === 'http-echo' ? `, HTTP echo on :${podSpec.app.port}` : '';
      say(`pod ${podSpec.namespace}/${podSpec.name} on ${podSpec.node}: ${pod.ip}${enrolled ? ' (enrolled: ambient)' : ''}${app}`);
    }
    if (state.nodes.some((n) => n.agentProcess !== undefined)) say('waiting for the enrolled pods to be captured and ztunnel to be ready');
    for (const wired of state.nodes) {
      const node = topology.node(wired.name);
      const enrolled = node.pods.filter((pod) => isEnrolled(pod, state.namespaces.find((n) => n.name === pod.namespace)));
      await waitForCapture(node, wired, enrolled, (pod) => hasCaptureRules(pod.netnsPath));
    }
  } catch (err) {
    await sandboxDown(where).catch(() => undefined);
    throw new SandboxError(`sandbox up failed, everything it made was removed: ${(err as Error).message}`, { cause: err });
  }
  // The sandbox outlives this command.
  for (const proc of topology.processes) proc.unref();
  for (const component of components) say(`${component.name}: ${component.present ? component.detail : `NOT PRESENT, ${component.detail}`}`);
  for (const node of state.nodes) for (const note of node.notes) say(`${node.name}: ${note}`);
  return { state, ips: Object.fromEntries(topology.pods.map((p) => [`${p.namespace}/${p.name}`, p.ip])) };
}

export async function startApp(pod: TopologyPod, spec: PodSpec): Promise<void> {
  const name = `${spec.namespace}.${spec.name}.app`;
  if (spec.app.kind === 'http-echo') {
    const proc = await pod.spawn({ name, ...httpEcho({ port: spec.app.port, name: spec.name }) });
    await proc.waitForOutput('listening on');
  } else {
    await pod.spawn({ name, cmd: 'sleep', args: ['infinity'] });
  }
}

export interface SandboxStatus {
  name: string;
  dir: string;
  createdAt: string;
  components: ComponentInfo[];
  controlPlane: ControlPlaneStatus;
  nodes: Array<{ name: string; netns: string; ip: string; zdsSocket: string; agentPid: number | null; ztunnelPid: number | null; notes: string[] }>;
  pods: Array<{ name: string; namespace: string; node: string; ip: string | null; netns: string | null; enrolled: boolean; captured: boolean }>;
}

export type ControlPlaneStatus =
  | { mode: 'local'; localXdsPath: string; caCert: string }
  | {
      mode: 'xds';
      address: string;
      node: string;
      pid: number | null;
      /** Answers gRPC over TLS that verifies with its root-cert.pem under its certificate's name. */
      serving: boolean;
      detail: string;
      /** Nodes whose ztunnel reports a live xDS stream to it (`/config_dump` `xds.connected`). */
      connected: string[];
      rootCa: string;
      tokenFile: string;
    };

/** What runs now: process ids only for live processes, `captured` from the rules actually in each pod. */
export async function sandboxStatus(where: SandboxLocation): Promise<SandboxStatus | undefined> {
  const state = await readSandboxState(where.dir);
  if (state === undefined) return undefined;
  const topology = await Topology.attach(state.topologyStateDir);
  const livePid = (name: string | undefined): number | null => {
    const proc = name === undefined ? undefined : topology.process(name);
    return proc?.running ? proc.pid : null;
  };
  const nodes = state.nodes.map((n) => {
    const node = topology.node(n.name);
    return { name: n.name, netns: node.netnsPath, ip: node.ip, zdsSocket: n.zdsSocket, agentPid: livePid(n.agentProcess), ztunnelPid: livePid(n.ztunnelProcess), notes: n.notes };
  });
  const pods = await Promise.all(
    state.pods.map(async (spec) => {
      const pod = topology.pod(spec.namespace, spec.name);
      return {
        name: spec.name,
        namespace: spec.namespace,
        node: spec.node,
        ip: pod?.ip ?? null,
        netns: pod?.netnsPath ?? null,
        enrolled: isEnrolled(spec, state.namespaces.find((n) => n.name === spec.namespace)),
        captured: pod ? await hasCaptureRules(pod.netnsPath) : false,
      };
    }),
  );
  const controlPlane = await controlPlaneStatus(state, topology, livePid);
  return { name: state.name, dir: where.dir, createdAt: state.createdAt, components: state.components, controlPlane, nodes, pods };
}

async function controlPlaneStatus(state: SandboxState, topology: Topology, livePid: (name: string | undefined) => number | null): Promise<ControlPlaneStatus> {
  const cp = state.controlPlane;
  if (cp.mode === 'local') return { mode: 'local', localXdsPath: state.files.localXds, caCert: state.files.caCert };
  const pid = livePid(cp.process);
  const netns = topology.node(cp.node).netnsPath;
  const { host, port } = splitAddress(cp.address);
  // An unimplemented method answers HTTP 200 with a grpc-status: TLS (verified) and gRPC both work.
  const probe = await execInNetns(netns, 'curl', [
    '-sS', '-o', '/dev/null', '-w', '%{http_code}', '-m', '3', '--http2', '-X', 'POST', '-H', 'content-type: application/grpc',
    '--cacert', cp.rootCa, '--connect-to', `${cp.hostname}:${port}:${host}:${port}`, `https://${cp.hostname}:${port}/grpc.health.v1.Health/Check`,
  ]).catch((err: unknown) => ({ code: 1, stdout: '', stderr: (err as Error).message }));
  const serving = probe.code === 0 && probe.stdout === '200';
  const detail = serving ? `serving (TLS verified with ${cp.rootCa} as ${cp.hostname})` : `NOT serving: ${probe.stderr.trim().replace(/^curl: \(\d+\) /, '') || `HTTP ${probe.stdout}`}`;
  const connected: string[] = [];
  await Promise.all(
    state.nodes.map(async (n) => {
      if (livePid(n.ztunnelProcess) === null) return;
      const dump = await ztunnelDump(topology.node(n.name).netnsPath, ZTUNNEL_ADMIN_ADDRESS);
      if (dump.ok && dump.dump.xds?.connected === true) connected.push(n.name);
    }),
  );
  connected.sort();
  return { mode: 'xds', address: cp.address, node: cp.node, pid, serving, detail, connected, rootCa: cp.rootCa, tokenFile: cp.tokenFile };
}

/** `https://host:port` → its parts. */
function splitAddress(url: string): { host: string; port: string } {
  const rest = url.replace(/^https?:\/\//, '');
  const i = rest.lastIndexOf(':');
  return { host: rest.slice(0, i), port: rest.slice(i + 1) };
}

/** In-pod capture rules present, in any backend (iptables-nft, iptables-legacy, nftables). */
export async function hasCaptureRules(netnsPath: string): Promise<boolean> {
  const dump = await execInNetns(netnsPath, 'sh', ['-c', 'iptables-save 2>/dev/null; iptables-legacy-save 2>/dev/null; nft list tables 2>/dev/null; true']);
  return /ISTIO_|istio-ambient/.test(dump.stdout);
}

/** The netns of a pod (`name` or `namespace/name`) or of a node. */
export async function resolveTarget(where: SandboxLocation, ref: string): Promise<{ label: string; netns: string }> {
  const state = await requireState(where);
  const topology = await Topology.attach(state.topologyStateDir);
  const [namespace, name] = ref.includes('/') ? ref.split('/', 2) : [undefined, ref];
  const pods = topology.pods.filter((p) => p.name === name && (namespace === undefined || p.namespace === namespace));
  if (pods.length > 1) throw new SandboxError(`pod name ${ref} is ambiguous: ${pods.map((p) => `${p.namespace}/${p.name}`).join(', ')}`);
  const pod = pods[0];
  if (pod) return { label: `${pod.namespace}/${pod.name}`, netns: pod.netnsPath };
  const node = topology.nodes.find((n) => n.name === ref);
  if (node) return { label: node.name, netns: node.netnsPath };
  throw new SandboxError(`no pod or node ${ref} (pods: ${topology.pods.map((p) => `${p.namespace}/${p.name}`).join(', ')}; nodes: ${topology.nodes.map((n) => n.name).join(', ')})`);
}

export type LogComponent = 'ztunnel' | 'cni-agent' | 'control-plane';

/**
 * The process record of a node's ztunnel or agent, or of the control plane (`nodeName` undefined): the
 * newest of that name, running or not (a crashed one's log matters most); with `previous`, the one before
 * it (the process a `restart` replaced, as `kubectl logs --previous`).
 */
async function componentRecord(where: SandboxLocation, nodeName: string | undefined, component: LogComponent, previous = false): Promise<ProcessRecord> {
  const state = await requireState(where);
  const pick = async (name: string, what: string): Promise<ProcessRecord> => {
    const records = (await readState(state.topologyStateDir)).processes.filter((p) => p.name === name);
    const record = records.at(previous ? -2 : -1);
    if (record) return record;
    if (previous && records.length === 1) throw new SandboxError(`${what} has not been restarted: there is no previous log (weirctl sandbox logs without --previous)`);
    throw new SandboxError(`${what} has no process record in ${state.topologyStateDir}`);
  };
  if (component === 'control-plane') {
    if (state.controlPlane.mode !== 'xds') throw new SandboxError('this sandbox runs no control plane (--control-plane local: ztunnels read LOCAL_XDS_PATH); see weirctl sandbox up --control-plane xds');
    return pick(state.controlPlane.process, 'the control plane');
  }
  if (nodeName === undefined) throw new SandboxError(`${component} runs per node: name one (logs NODE ${component})`);
  const node = state.nodes.find((n) => n.name === nodeName);
  if (!node) throw new SandboxError(`no node ${nodeName} (nodes: ${state.nodes.map((n) => n.name).join(', ')})`);
  const processName = component === 'ztunnel' ? node.ztunnelProcess : node.agentProcess;
  if (processName === undefined) {
    const why = node.notes.find((n) => n.startsWith(component === 'ztunnel' ? 'weir-ztunnel' : 'weir-cni-agent')) ?? 'not started';
    throw new SandboxError(`${component} does not run on ${nodeName}: ${why}`);
  }
  return pick(processName, `${component} on ${nodeName}`);
}

/** The log of a node's ztunnel or agent, or of the control plane (`nodeName` undefined). */
export async function componentLog(where: SandboxLocation, nodeName: string | undefined, component: LogComponent, previous = false): Promise<string> {
  return readFile((await componentRecord(where, nodeName, component, previous)).logFile, 'utf8');
}

/** The log so far, then what is appended, until the process exits (or its log is removed by `down`). */
export async function followComponentLog(where: SandboxLocation, nodeName: string | undefined, component: LogComponent, write: (text: string) => void): Promise<void> {
  const record = await componentRecord(where, nodeName, component);
  const decoder = new StringDecoder('utf8');
  let offset = 0;
  for (;;) {
    // Liveness first, then a read: the last lines written before an exit are never missed.
    const alive = isSameProcess(record.pid, record.startTime);
    let chunk: Buffer;
    try {
      chunk = await readFrom(record.logFile, offset);
    } catch {
      return;
    }
    offset += chunk.length;
    const text = decoder.write(chunk);
    if (text !== '') write(text);
    if (!alive) return;
    await sleep(250);
  }
}

async function readFrom(path: string, offset: number): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    const buffer = Buffer.alloc(Math.max(0, size - offset));
    if (buffer.length > 0) await file.read(buffer, 0, buffer.length, offset);
    return buffer;
  } finally {
    await file.close();
  }
}

/**
 * Remove everything the sandbox made: its processes, namespaces, cgroups and files. Works from the state
 * file, and by name prefix when the state is gone or half-written (a crash). Safe to run any number of times.
 */
export async function sandboxDown(where: SandboxLocation): Promise<DownReport> {
  const state = await readSandboxState(where.dir).catch(() => undefined);
  const name = state?.name ?? where.name;
  const removed: DownReport = { netns: [], killed: [], cgroups: [], stateDirs: [], stopped: [] };
  if (state !== undefined) {
    const topology = await Topology.attach(state.topologyStateDir).catch(() => undefined);
    if (topology) {
      removed.stopped = topology.processes.filter((p) => p.running).map((p) => p.name);
      merge(removed, await topology.destroy());
    }
  }
  merge(removed, await Topology.cleanupByPrefix(name, { stateRoot: where.dir }));
  // Only what the sandbox wrote: the directory may be shared with other things.
  const files = sandboxFiles(where.dir);
  for (const path of [files.podsFile, files.localXds, join(where.dir, 'ca'), files.controlPlaneDir, join(where.dir, 'nodes'), stateFile(where.dir)]) {
    await rm(path, { recursive: true, force: true });
  }
  await rmdir(where.dir).catch(() => undefined);
  return removed;
}

export interface DownReport extends TeardownReport {
  /** Processes stopped by name (SIGTERM, then SIGKILL); `killed` are leftovers found by netns or cgroup. */
  stopped: string[];
}

function merge(into: TeardownReport, from: TeardownReport): void {
  into.netns.push(...from.netns.filter((n) => !into.netns.includes(n)));
  into.killed.push(...from.killed);
  into.cgroups.push(...from.cgroups.filter((c) => !into.cgroups.includes(c)));
  into.stateDirs.push(...from.stateDirs.filter((d) => !into.stateDirs.includes(d)));
}

export async function requireState(where: SandboxLocation): Promise<SandboxState> {
  const state = await readSandboxState(where.dir);
  if (state === undefined) throw new SandboxError(`no sandbox is up (no ${stateFile(where.dir)}); run weirctl sandbox up`);
  return state;
}
