import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { CniResult, CniRuntimeArgs } from './cni.js';
import type { TopologyContext } from './context.js';
import { netnsPath } from './netns.js';
import type { TopologyNode } from './node.js';
import type { SpawnOptions, SupervisedProcess } from './process.js';
import { probeTcp, type TcpProbeOptions, type TcpProbeResult } from './programs.js';
import { execInNetns, type RunOptions, type RunResult } from './run.js';
import type { PodState } from './state.js';

/** A pod: its own netns wired by the node's CNI chain, a pause process, and whatever it spawns. */
export class TopologyPod {
  /** @internal */
  constructor(
    readonly node: TopologyNode,
    /** @internal */
    readonly state: PodState,
    private readonly context: TopologyContext,
  ) {}

  get name(): string {
    return this.state.name;
  }
  get namespace(): string {
    return this.state.namespace;
  }
  get uid(): string {
    return this.state.uid;
  }
  /** The sandbox ("infra") container id passed as CNI_CONTAINERID. */
  get containerId(): string {
    return this.state.containerId;
  }
  /** The pod's IPv4 address, from the CNI result. */
  get ip(): string {
    return this.state.ip;
  }
  /** The pod's IPv6 address (dual-stack topologies only). */
  get ip6(): string | undefined {
    return this.state.ip6;
  }
  get labels(): Readonly<Record<string, string>> {
    return this.state.labels;
  }
  /** Netns name (`ip netns exec <netns>`). */
  get netns(): string {
    return this.state.netns;
  }
  /** `/var/run/netns/<netns>`: CNI_NETNS. */
  get netnsPath(): string {
    return netnsPath(this.state.netns);
  }
  get ifName(): string {
    return this.state.ifName;
  }
  /** The final result of the CNI chain's ADD (what a runtime caches). */
  get cniResult(): CniResult {
    return this.state.cniResult;
  }
  /** The pod's cgroup (`…/pod<uid>`), holding its processes; undefined without cgroup v2. */
  get cgroup(): string | undefined {
    return this.state.cgroup;
  }

  /** @internal What the runtime passes to CNI plugins for this pod. */
  get runtimeArgs(): CniRuntimeArgs {
    return {
      containerId: this.containerId,
      netnsPath: this.netnsPath,
      ifName: this.ifName,
      podName: this.name,
      podNamespace: this.namespace,
      podUid: this.uid,
    };
  }

  /** Start a process in the pod (its netns, and a container cgroup of its own under the pod's). */
  spawn(options: Omit<SpawnOptions, 'netns' | 'cgroup'>): Promise<SupervisedProcess> {
    return this.context.spawn({
      ...options,
      netns: this.netnsPath,
      ...(this.cgroup !== undefined ? { cgroup: join(this.cgroup, randomBytes(32).toString('hex')) } : {}),
    });
  }

  /** Processes started in this pod that are still running (the pause process included). */
  get processes(): SupervisedProcess[] {
    return this.context.processesIn(this.netnsPath);
  }

  exec(cmd: string, args: readonly string[] = [], options?: RunOptions): Promise<RunResult> {
    return execInNetns(this.netnsPath, cmd, args, options);
  }

  /** A real TCP connection from this pod; see {@link probeTcp}. */
  probeTcp(options: TcpProbeOptions): Promise<TcpProbeResult> {
    return probeTcp(this.netnsPath, options);
  }
}
