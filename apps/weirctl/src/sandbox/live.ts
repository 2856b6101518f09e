/**
 * Live changes to a running sandbox (issue 9): labels (enrollment) and authorization policies. The state
 * file is the source of truth; the pods file and ztunnel's LOCAL_XDS_PATH are re-rendered from it whole,
 * atomically, and each command returns once the components show the change. In xds mode the ztunnels
 * do not read that file: the test control plane watches it and pushes the change over xDS.
 */
import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Topology } from '@weir/topology';
import { parseLocalConfig, ZtunnelError, type Policy } from '@weir/ztunnel';
import { parse as parseYaml } from 'yaml';
import { ztunnelDump } from '../in-netns.js';
import { publishWorkloads, sandboxFiles, ZTUNNEL_ADMIN_ADDRESS, type ScheduledPod } from './components.js';
import { hasCaptureRules, requireState, SandboxError, startApp, type SandboxLocation } from './sandbox.js';
import { DATAPLANE_MODE_LABEL, isEnrolled, type PodSpec } from './spec.js';
import { writeSandboxState, type SandboxState } from './state.js';

/** How long a change may take to be seen (the agent releases a pod in ~5 s, ztunnel reloads in ~1 s). */
const OBSERVE_TIMEOUT_MS = 60_000;

export type LabelTarget = { kind: 'namespace'; name: string } | { kind: 'pod'; namespace: string | undefined; name: string };

/** `ns/NAME` (or `namespace/NAME`), `pod/NS/NAME`, `pod/NAME` (namespace from `-n`, or the only pod of that name). */
export function parseLabelTarget(ref: string, namespace: string | undefined): LabelTarget {
  const parts = ref.split('/');
  const [kind, a, b] = parts;
  if ((kind === 'ns' || kind === 'namespace') && parts.length === 2 && a) {
    if (namespace !== undefined) throw new SandboxError(`-n applies to pods, not to ${ref}`);
    return { kind: 'namespace', name: a };
  }
  if ((kind === 'pod' || kind === 'po') && parts.length === 2 && a) return { kind: 'pod', namespace, name: a };
  if ((kind === 'pod' || kind === 'po') && parts.length === 3 && a && b) {
    if (namespace !== undefined && namespace !== a) throw new SandboxError(`${ref} names namespace ${a} but -n says ${namespace}`);
    return { kind: 'pod', namespace: a, name: b };
  }
  throw new SandboxError(`cannot label '${ref}': name ns/NAME, pod/NAMESPACE/NAME or pod/NAME [-n NAMESPACE]`);
}

export interface LabelChange {
  key: string;
  /** undefined: remove the label (`KEY-`). */
  value: string | undefined;
}

const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

/** `KEY=VALUE` sets, `KEY-` removes, as kubectl label. */
export function parseLabelChange(arg: string): LabelChange {
  if (arg.endsWith('-') && !arg.includes('=')) {
    const key = arg.slice(0, -1);
    if (!LABEL_KEY.test(key)) throw new SandboxError(`label key '${key}' is not a valid Kubernetes label key`);
    return { key, value: undefined };
  }
  const eq = arg.indexOf('=');
  if (eq < 0) throw new SandboxError(`'${arg}' is neither KEY=VALUE nor KEY-`);
  const key = arg.slice(0, eq);
  const value = arg.slice(eq + 1);
  if (!LABEL_KEY.test(key)) throw new SandboxError(`label key '${key}' is not a valid Kubernetes label key`);
  if (!LABEL_VALUE.test(value)) throw new SandboxError(`label value '${value}' (key ${key}) is not a valid Kubernetes label value`);
  return { key, value };
}

/** Render the workload files from the state and the pods that exist. */
async function republish(where: SandboxLocation, state: SandboxState, topology: Topology, scheduled: ScheduledPod[] = []): Promise<void> {
  const pods = state.pods.flatMap((spec) => {
    const pod = topology.pod(spec.namespace, spec.name);
    return pod ? [{ pod, node: spec.node, labels: spec.labels }] : [];
  });
  await publishWorkloads(sandboxFiles(where.dir), { namespaces: state.namespaces, pods, scheduled, policies: state.policies });
}

function enrollment(state: SandboxState): Map<string, boolean> {
  return new Map(state.pods.map((p) => [`${p.namespace}/${p.name}`, isEnrolled(p, state.namespaces.find((n) => n.name === p.namespace))]));
}

/**
 * Set or remove labels on a namespace or pod, rewrite the pods file, and wait until every pod whose
 * enrollment changed is captured (rules in the pod, ztunnel's proxy Up) or released (rules gone,
 * ztunnel dropped it). `say` gets one line per label change and per pod.
 */
export async function sandboxLabel(where: SandboxLocation, target: LabelTarget, changes: readonly LabelChange[], say: (line: string) => void): Promise<void> {
  const state = await requireState(where);
  let labels: Record<string, string>;
  let what: string;
  if (target.kind === 'namespace') {
    const ns = state.namespaces.find((n) => n.name === target.name);
    if (!ns) throw new SandboxError(`no namespace ${target.name} (namespaces: ${state.namespaces.map((n) => n.name).join(', ')})`);
    labels = ns.labels;
    what = `namespace ${ns.name}`;
  } else {
    const matches = state.pods.filter((p) => p.name === target.name && (target.namespace === undefined || p.namespace === target.namespace));
    if (matches.length > 1) throw new SandboxError(`pod name ${target.name} is ambiguous (${matches.map((p) => `${p.namespace}/${p.name}`).join(', ')}); add -n NAMESPACE`);
    const pod = matches[0];
    if (!pod) throw new SandboxError(`no pod ${target.namespace ?? '*'}/${target.name} (pods: ${state.pods.map((p) => `${p.namespace}/${p.name}`).join(', ')})`);
    labels = pod.labels;
    what = `pod ${pod.namespace}/${pod.name}`;
  }
  const before = enrollment(state);
  let changed = false;
  for (const { key, value } of changes) {
    const old = labels[key];
    if (old === value) {
      say(`${what}: ${key} ${value === undefined ? 'not set' : `already ${value}`}, unchanged`);
      continue;
    }
    if (value === undefined) delete labels[key];
    else labels[key] = value;
    changed = true;
    say(`${what}: ${key} ${old === undefined ? '(unset)' : old} -> ${value ?? '(unset)'}`);
  }
  if (!changed) return;
  const topology = await Topology.attach(state.topologyStateDir);
  await writeSandboxState(where.dir, state);
  await republish(where, state, topology);

  const after = enrollment(state);
  const moved = state.pods.filter((p) => before.get(`${p.namespace}/${p.name}`) !== after.get(`${p.namespace}/${p.name}`));
  if (moved.length === 0) {
    say(`no pod changes enrollment (${DATAPLANE_MODE_LABEL} decides: pod ambient/none, else its namespace's ambient)`);
    return;
  }
  const started = Date.now();
  await Promise.all(moved.map((spec) => awaitEnrollment(state, topology, spec, after.get(`${spec.namespace}/${spec.name}`) === true, started, say)));
}

/** Wait until the pod is captured (rules in the pod, ztunnel's proxy Up) or released (rules gone, ztunnel dropped it). */
async function awaitEnrollment(state: SandboxState, topology: Topology, spec: PodSpec, enrolled: boolean, started: number, say: (line: string) => void): Promise<void> {
  const pod = topology.pod(spec.namespace, spec.name);
  const id = `${spec.namespace}/${spec.name}`;
  if (!pod) return say(`${id}: not running, nothing to capture or release`);
  const node = state.nodes.find((n) => n.name === spec.node);
  const alive = (name: string | undefined): boolean => name !== undefined && topology.process(name)?.running === true;
  if (!alive(node?.agentProcess)) return say(`${id}: ${enrolled ? 'enrolled' : 'un-enrolled'}, but no weir-cni-agent runs on ${spec.node} to act on it`);
  const withZtunnel = alive(node?.ztunnelProcess);
  const nodeNetns = topology.node(spec.node).netnsPath;
  await waitUntil(`${id} to be ${enrolled ? 'captured' : 'released'}`, async () => {
    if ((await hasCaptureRules(pod.netnsPath)) !== enrolled) return false;
    if (!withZtunnel) return true;
    const dump = await ztunnelDump(nodeNetns, ZTUNNEL_ADMIN_ADDRESS);
    if (!dump.ok) return false;
    const entry = dump.dump.pods.find((p) => p.uid === pod.uid);
    return enrolled ? entry?.state === 'Up' : entry === undefined;
  });
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  const zt = withZtunnel ? (enrolled ? `, ztunnel on ${spec.node} has its proxy Up` : `, ztunnel on ${spec.node} dropped it`) : '';
  say(`${id}: ${enrolled ? 'captured (in-pod rules in place' : 'released (in-pod rules removed'}${zt}) after ${secs} s`);
}

/**
 * Add a pod to a running sandbox on a chosen node (sleep, or an HTTP echo on `port`): its netns through
 * the node's CNI chain, its app, the workload files; returns once it is captured when it is enrolled.
 */
export async function sandboxAddPod(where: SandboxLocation, spec: PodSpec, say: (line: string) => void): Promise<{ ip: string }> {
  if (!/^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/.test(spec.name)) throw new SandboxError(`pod name '${spec.name}': lowercase letters, digits and -, at most 32 characters`);
  const state = await requireState(where);
  if (!state.namespaces.some((n) => n.name === spec.namespace)) throw new SandboxError(`no namespace ${spec.namespace} (namespaces: ${state.namespaces.map((n) => n.name).join(', ')})`);
  if (!state.nodes.some((n) => n.name === spec.node)) throw new SandboxError(`no node ${spec.node} (nodes: ${state.nodes.map((n) => n.name).join(', ')})`);
  if (state.pods.some((p) => p.namespace === spec.namespace && p.name === spec.name)) throw new SandboxError(`pod ${spec.namespace}/${spec.name} exists already`);
  const topology = await Topology.attach(state.topologyStateDir);
  // Known to the agent before its CNI ADD asks about it, as a pod is in the API before kubelet creates its sandbox.
  const uid = randomUUID();
  await republish(where, state, topology, [{ name: spec.name, namespace: spec.namespace, uid, node: spec.node, labels: spec.labels }]);
  let pod;
  try {
    pod = await topology.node(spec.node).addPod({ name: spec.name, namespace: spec.namespace, labels: spec.labels, uid });
  } catch (err) {
    await republish(where, state, topology);
    // As kubelet would report it: the pod's sandbox was not created (nothing of it is left), and why.
    throw new SandboxError(`pod ${spec.namespace}/${spec.name} was not created on ${spec.node}: ${(err as Error).message}`, { cause: err });
  }
  try {
    await startApp(pod, spec);
  } finally {
    // The app outlives this command.
    for (const proc of topology.processes) proc.unref();
  }
  state.pods.push(spec);
  await writeSandboxState(where.dir, state);
  await republish(where, state, topology);
  const enrolled = isEnrolled(spec, state.namespaces.find((n) => n.name === spec.namespace));
  const app = spec.app.kind === 'http-echo' ? `, HTTP echo on :${spec.app.port}` : '';
  say(`pod ${spec.namespace}/${spec.name} on ${spec.node}: ${pod.ip}${enrolled ? ' (enrolled: ambient)' : ''}${app}`);
  if (enrolled) {
    const started = Date.now();
    await awaitEnrollment(state, topology, spec, true, started, say);
    await awaitWorkloadKnown(state, topology, pod.ip, started, say);
  }
  return { ip: pod.ip };
}

/**
 * Wait until every running ztunnel's mesh state has the new pod at its address: until then a
 * connection to it is not a mesh destination for the caller's ztunnel, and its own refuses inbound.
 */
async function awaitWorkloadKnown(state: SandboxState, topology: Topology, ip: string, started: number, say: (line: string) => void): Promise<void> {
  const nodes = state.nodes.filter((n) => n.ztunnelProcess !== undefined && topology.process(n.ztunnelProcess)?.running === true);
  if (nodes.length === 0) return;
  await Promise.all(
    nodes.map((n) =>
      waitUntil(`ztunnel on ${n.name} to know ${ip}`, async () => {
        const dump = await ztunnelDump(topology.node(n.name).netnsPath, ZTUNNEL_ADMIN_ADDRESS);
        return dump.ok && dump.dump.workloads.some((w) => (w.workloadIps ?? []).includes(ip));
      }),
    ),
  );
  say(`in the mesh state of ztunnel on ${nodes.map((n) => n.name).join(', ')} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

/** A policy's key in the state and in `/config_dump`: `namespace/name` (namespace '' for Global ones). */
function policyKey(p: { namespace?: unknown; name?: unknown }): string {
  return `${typeof p.namespace === 'string' ? p.namespace : ''}/${String(p.name)}`;
}

function showKey(key: string): string {
  return key.startsWith('/') ? key.slice(1) : key;
}

/**
 * The policies in `text`: `policies: [...]` (a LOCAL_XDS_PATH file), a list, or one policy; validated with
 * ztunnel's own local-config schema. Returns the input objects (stored and rendered as given) and their parsed form.
 */
export function readPolicies(text: string, source: string): Array<{ raw: Record<string, unknown>; parsed: Policy }> {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new SandboxError(`${source}: invalid YAML: ${(err as Error).message}`, { cause: err });
  }
  let list: unknown;
  if (Array.isArray(doc)) list = doc;
  else if (doc !== null && typeof doc === 'object' && 'policies' in doc) {
    const other = Object.keys(doc).filter((k) => k !== 'policies' && (doc as Record<string, unknown>)[k] != null);
    if (other.length > 0) throw new SandboxError(`${source}: holds ${other.join(', ')}; policy apply takes policies only`);
    list = (doc as { policies: unknown }).policies;
  } else if (doc !== null && typeof doc === 'object') list = [doc];
  else throw new SandboxError(`${source}: expected a policy, a list of policies or {policies: [...]}`);
  if (!Array.isArray(list) || list.length === 0) throw new SandboxError(`${source}: no policies in it`);
  let parsed: Policy[];
  try {
    parsed = parseLocalConfig(JSON.stringify({ policies: list }), source).policies;
  } catch (err) {
    if (err instanceof ZtunnelError) throw new SandboxError(err.message, { cause: err });
    throw err;
  }
  const keys = parsed.map(policyKey);
  const dup = keys.find((k, i) => keys.indexOf(k) !== i);
  if (dup !== undefined) throw new SandboxError(`${source}: policy ${showKey(dup)} appears twice`);
  return parsed.map((p, i) => ({ raw: list[i] as Record<string, unknown>, parsed: p }));
}

/** Add or replace policies (by namespace/name) and wait until every running ztunnel's `/config_dump` holds them as given. */
export async function sandboxPolicyApply(where: SandboxLocation, text: string, source: string, say: (line: string) => void): Promise<void> {
  const policies = readPolicies(text, source);
  const state = await requireState(where);
  const wanted = new Map<string, unknown>();
  for (const { raw, parsed } of policies) {
    const key = policyKey(parsed);
    const index = state.policies.findIndex((p) => policyKey(p) === key);
    const describe = `${parsed.action} ${parsed.scope}${parsed.dryRun ? ', dry run' : ''}`;
    if (index < 0) {
      state.policies.push(raw);
      say(`policy ${showKey(key)}: created (${describe})`);
    } else if (isDeepStrictEqual(state.policies[index], raw)) {
      say(`policy ${showKey(key)}: unchanged`);
    } else {
      state.policies[index] = raw;
      say(`policy ${showKey(key)}: updated (${describe})`);
    }
    // What ztunnel shows once it loaded it: the parsed form, as JSON.
    wanted.set(key, JSON.parse(JSON.stringify(parsed)));
  }
  await commitPolicies(where, state, say, (dumped) => [...wanted].every(([key, want]) => isDeepStrictEqual(dumped.get(key), want)));
}

/** Remove one policy (`NAME`, `NAMESPACE/NAME`, or NAME with `namespace`) and wait until no ztunnel has it. */
export async function sandboxPolicyDelete(where: SandboxLocation, ref: string, namespace: string | undefined, say: (line: string) => void): Promise<void> {
  const state = await requireState(where);
  const [ns, name] = ref.includes('/') ? (ref.split('/', 2) as [string, string]) : [namespace, ref];
  const matches = state.policies.filter((p) => p.name === name && (ns === undefined || (p.namespace ?? '') === ns));
  if (matches.length > 1) throw new SandboxError(`policy name ${name} is ambiguous (${matches.map((p) => showKey(policyKey(p))).join(', ')}); give NAMESPACE/NAME`);
  const match = matches[0];
  if (!match) throw new SandboxError(`no policy ${ref} (policies: ${state.policies.map((p) => showKey(policyKey(p))).join(', ') || 'none'})`);
  const key = policyKey(match);
  state.policies = state.policies.filter((p) => p !== match);
  say(`policy ${showKey(key)}: deleted`);
  await commitPolicies(where, state, say, (dumped) => !dumped.has(key));
}

/** The policies the sandbox holds, as given. */
export async function sandboxPolicies(where: SandboxLocation): Promise<Array<Record<string, unknown>>> {
  return (await requireState(where)).policies;
}

async function commitPolicies(where: SandboxLocation, state: SandboxState, say: (line: string) => void, seen: (dumped: Map<string, unknown>) => boolean): Promise<void> {
  const topology = await Topology.attach(state.topologyStateDir);
  await writeSandboxState(where.dir, state);
  await republish(where, state, topology);
  const started = Date.now();
  const nodes = state.nodes.filter((n) => n.ztunnelProcess !== undefined && topology.process(n.ztunnelProcess)?.running === true);
  if (nodes.length === 0) return say('no ztunnel is running: nothing enforces policies');
  await Promise.all(
    nodes.map((n) =>
      waitUntil(`ztunnel on ${n.name} to load the policies`, async () => {
        const dump = await ztunnelDump(topology.node(n.name).netnsPath, ZTUNNEL_ADMIN_ADDRESS);
        return dump.ok && seen(new Map(dump.dump.policies.map((p) => [policyKey(p), p])));
      }),
    ),
  );
  const via = state.controlPlane.mode === 'xds' ? `, pushed over xDS by the control plane at ${state.controlPlane.address}` : '';
  say(`seen in /config_dump of ztunnel on ${nodes.map((n) => n.name).join(', ')} after ${((Date.now() - started) / 1000).toFixed(1)} s${via}`);
}

async function waitUntil(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + OBSERVE_TIMEOUT_MS;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new SandboxError(`gave up waiting for ${what} after ${OBSERVE_TIMEOUT_MS / 1000} s (see weirctl sandbox logs NODE cni-agent|ztunnel)`);
    await sleep(200);
  }
}
