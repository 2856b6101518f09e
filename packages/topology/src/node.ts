import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  execPlugin,
  loadConfList,
  resultIpv4,
  resultIpv6,
  runChain,
  type CniConfList,
  type CniExecContext,
  type CniPluginEntry,
  type CniResult,
} from './cni.js';
import type { TopologyContext } from './context.js';
import { CniInvocationError, TopologyError } from './errors.js';
import { assertName } from './names.js';
import { createNetns, deleteNetns, netnsPath } from './netns.js';
import { TopologyPod } from './pod.js';
import type { SpawnOptions, SupervisedProcess } from './process.js';
import { probeTcp, type TcpProbeOptions, type TcpProbeResult } from './programs.js';
import { execInNetns, type RunOptions, type RunResult } from './run.js';
import { podCgroup, removeCgroupTree } from './cgroup.js';
import { killProcessesIn, removeCgroupWithRetry } from './teardown.js';
import type { NodeState, PodState } from './state.js';

export interface AddPodOptions {
  name: string;
  namespace: string;
  /** Default: a random UUID. */
  uid?: string;
  labels?: Record<string, string>;
  /** Default `eth0`. */
  ifName?: string;
}

/** The file each node's primary network config is written to (the first in lexical order wins). */
export const CONFLIST_FILE = '10-k8s-pod-network.conflist';

/** A node: its own "host" netns on the underlay, a cni0 bridge made by the CNI chain, and its pods. */
export class TopologyNode {
  readonly #pods = new Map<string, TopologyPod>();

  /** @internal */
  constructor(
    /** @internal */
    readonly state: NodeState,
    private readonly context: TopologyContext,
  ) {
    for (const pod of state.pods) this.#pods.set(key(pod.namespace, pod.name), new TopologyPod(this, pod, context));
  }

  get name(): string {
    return this.state.name;
  }
  /** The node's address on the underlay (its "InternalIP"). */
  get ip(): string {
    return this.state.ip;
  }
  get podCidr(): string {
    return this.state.podCidr;
  }
  /** The node's IPv6 underlay address (dual-stack topologies only). */
  get ip6(): string | undefined {
    return this.state.ip6;
  }
  get podCidr6(): string | undefined {
    return this.state.podCidr6;
  }
  /** Netns name (`ip netns exec <netns>`). */
  get netns(): string {
    return this.state.netns;
  }
  get netnsPath(): string {
    return netnsPath(this.state.netns);
  }
  /** The node's CNI config dir (a runtime's /etc/cni/net.d): addPod reads the first conflist here, each time. */
  get cniConfDir(): string {
    return this.state.cniConfDir;
  }
  /** The node's CNI_PATH (a runtime's /opt/cni/bin): links to Debian's plugins plus installed ones. */
  get cniBinDir(): string {
    return this.state.cniBinDir;
  }
  get conflistPath(): string {
    return join(this.state.cniConfDir, CONFLIST_FILE);
  }
  get pods(): TopologyPod[] {
    return [...this.#pods.values()];
  }

  /** Running processes started in the node's own netns (agents, proxies), not in its pods. */
  get processes(): SupervisedProcess[] {
    return this.context.processesIn(this.netnsPath);
  }

  pod(namespace: string, name: string): TopologyPod | undefined {
    return this.#pods.get(key(namespace, name));
  }

  /**
   * Create a pod as a container runtime does: a new netns, CNI `loopback` for lo, then the node's conflist
   * chain (ADD, prevResult threaded), then a pause process. A failed ADD is rolled back (DEL, netns removed).
   */
  addPod(options: AddPodOptions): Promise<TopologyPod> {
    return this.context.operation(() => this.#addPod(options));
  }

  async #addPod(options: AddPodOptions): Promise<TopologyPod> {
    assertName('pod name', options.name, 63);
    assertName('pod namespace', options.namespace, 63);
    for (const node of this.context.state.nodes) {
      if (node.pods.some((p) => p.namespace === options.namespace && p.name === options.name)) {
        throw new TopologyError('TOPOLOGY_EXISTS', `pod ${options.namespace}/${options.name} already exists on node ${node.name}`);
      }
    }
    const uid = options.uid ?? randomUUID();
    const containerId = randomBytes(32).toString('hex');
    const netns = `${this.context.state.name}-${options.namespace}-${options.name}`;
    const runtime = {
      containerId,
      netnsPath: netnsPath(netns),
      ifName: options.ifName ?? 'eth0',
      podName: options.name,
      podNamespace: options.namespace,
      podUid: uid,
    };
    const log = this.context.logger.child({ node: this.name, pod: `${options.namespace}/${options.name}`, uid });
    await createNetns(netns);
    const cgroup = this.context.state.cgroup !== undefined ? podCgroup(this.context.state.cgroup, uid) : undefined;
    let list: CniConfList | undefined;
    let result: CniResult | undefined;
    try {
      if (cgroup !== undefined) await mkdir(cgroup, { recursive: true });
      await execPlugin('ADD', { cniVersion: '1.0.0', name: 'cni-loopback', type: 'loopback' }, { ...runtime, ifName: 'lo' }, this.#cniContext());
      list = await loadConfList(this.cniConfDir);
      result = await runChain('ADD', list, runtime, this.#cniContext());
    } catch (err) {
      log.warn({ err: String(err) }, 'pod network setup failed, tearing down');
      if (list !== undefined) await runChain('DEL', list, runtime, this.#cniContext()).catch(() => {});
      await deleteNetns(netns);
      if (cgroup !== undefined) await removeCgroupTree(cgroup).catch(() => {});
      throw err;
    }
    const ip = resultIpv4(result);
    const ip6 = resultIpv6(result);
    const state: PodState = {
      name: options.name,
      namespace: options.namespace,
      uid,
      containerId,
      netns,
      ifName: runtime.ifName,
      ip: ip ?? '',
      ...(ip6 !== undefined ? { ip6 } : {}),
      labels: { ...options.labels },
      cniResult: result ?? { cniVersion: list.cniVersion },
      ...(cgroup !== undefined ? { cgroup } : {}),
    };
    this.state.pods.push(state);
    const pod = new TopologyPod(this, state, this.context);
    this.#pods.set(key(state.namespace, state.name), pod);
    await this.context.save();
    try {
      if (ip === undefined || (this.state.podCidr6 !== undefined && ip6 === undefined)) {
        throw new CniInvocationError(list.plugins.at(-1)?.type ?? '?', 'ADD', undefined, `CNI chain ${list.name} returned no IPv4 (or, dual stack, no IPv6) address for pod ${options.namespace}/${options.name}: ${JSON.stringify(result)}`);
      }
      await this.context.spawn({
        name: `${options.namespace}.${options.name}.pause`,
        netns: runtime.netnsPath,
        cmd: 'sleep',
        args: ['infinity'],
        ...(cgroup !== undefined ? { cgroup: join(cgroup, containerId) } : {}),
      });
    } catch (err) {
      await this.#removePod(pod).catch(() => {});
      throw err;
    }
    log.info({ ip, netns: pod.netnsPath, containerId }, 'pod added');
    return pod;
  }

  /** Tear a pod down as a runtime does: stop its processes, CNI DEL (reverse order, cached result), delete the netns. */
  removePod(pod: TopologyPod): Promise<void> {
    return this.context.operation(() => this.#removePod(pod));
  }

  async #removePod(pod: TopologyPod): Promise<void> {
    if (this.#pods.get(key(pod.namespace, pod.name)) !== pod) {
      throw new TopologyError('TOPOLOGY_NOT_FOUND', `pod ${pod.namespace}/${pod.name} is not on node ${this.name}`);
    }
    await Promise.all(pod.processes.map((p) => p.stop('SIGTERM', 3000)));
    // Also whatever else entered the pod (exec'd shells, processes of attached handles).
    await killProcessesIn([pod.netns], pod.cgroup !== undefined ? [pod.cgroup] : [], this.context.logger);
    let failure: unknown;
    try {
      const list = await loadConfList(this.cniConfDir);
      await runChain('DEL', list, pod.runtimeArgs, this.#cniContext(), pod.cniResult);
    } catch (err) {
      failure = err;
    }
    await execPlugin('DEL', { cniVersion: '1.0.0', name: 'cni-loopback', type: 'loopback' }, { ...pod.runtimeArgs, ifName: 'lo' }, this.#cniContext()).catch(() => {});
    await deleteNetns(pod.netns);
    if (pod.cgroup !== undefined) await removeCgroupWithRetry(pod.cgroup);
    this.#pods.delete(key(pod.namespace, pod.name));
    this.state.pods.splice(this.state.pods.indexOf(pod.state), 1);
    await this.context.save();
    this.context.logger.info({ node: this.name, pod: `${pod.namespace}/${pod.name}`, uid: pod.uid }, 'pod removed');
    if (failure !== undefined) throw failure;
  }

  /** CNI CHECK through the chain with the cached result; throws the plugin's error. */
  checkPod(pod: TopologyPod): Promise<void> {
    return this.context.operation(async () => {
      const list = await loadConfList(this.cniConfDir);
      await runChain('CHECK', list, pod.runtimeArgs, this.#cniContext(), pod.cniResult);
    });
  }

  /** Append a plugin to the node's conflist (and link its binary into the CNI bin dir), like an installer. */
  installCniPlugin(entry: CniPluginEntry): Promise<void> {
    return this.context.operation(async () => {
      if (entry.binary !== undefined) await linkBinary(entry.binary, join(this.cniBinDir, entry.type));
      const list = JSON.parse(await readFile(this.conflistPath, 'utf8')) as CniConfList;
      list.plugins.push({ ...entry.config, type: entry.type });
      await writeJsonAtomic(this.conflistPath, list);
    });
  }

  spawn(options: Omit<SpawnOptions, 'netns' | 'cgroup'>): Promise<SupervisedProcess> {
    return this.context.spawn({ ...options, netns: this.netnsPath });
  }

  exec(cmd: string, args: readonly string[] = [], options?: RunOptions): Promise<RunResult> {
    return execInNetns(this.netnsPath, cmd, args, options);
  }

  probeTcp(options: TcpProbeOptions): Promise<TcpProbeResult> {
    return probeTcp(this.netnsPath, options);
  }

  #cniContext(): CniExecContext {
    return { nodeNetns: this.netns, binDir: this.cniBinDir, logger: this.context.logger };
  }
}

/** The primary network: Debian's bridge plugin with host-local IPAM on the node's pod CIDR, then extra plugins. */
export function primaryConfList(options: {
  podCidr: string;
  podCidr6?: string;
  ipamDataDir: string;
  cniVersion: string;
  chain: readonly CniPluginEntry[];
}): CniConfList {
  const dual = options.podCidr6 !== undefined;
  return {
    cniVersion: options.cniVersion,
    name: 'k8s-pod-network',
    plugins: [
      {
        type: 'bridge',
        bridge: 'cni0',
        isGateway: true,
        // No masquerade: pods see each other's real addresses across nodes, as on a flat pod network.
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: 'host-local',
          ranges: [[{ subnet: options.podCidr }], ...(dual ? [[{ subnet: options.podCidr6 }]] : [])],
          routes: [{ dst: '0.0.0.0/0' }, ...(dual ? [{ dst: '::/0' }] : [])],
          dataDir: options.ipamDataDir,
        },
      },
      ...options.chain.map((entry) => ({ ...entry.config, type: entry.type })),
    ],
  };
}

export async function linkBinary(target: string, link: string): Promise<void> {
  await unlink(link).catch(() => {});
  await symlink(target, link);
}

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, path);
}

function key(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}
