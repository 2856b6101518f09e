import { mkdir, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PacketCapture, tcpdumpArgs, type CaptureOptions } from './capture.js';
import { cgroup2Mount, listTopologyCgroups, topologyCgroup } from './cgroup.js';
import { formatCidr, hostAddress, parseCidr } from './cidr.js';
import type { CniPluginEntry } from './cni.js';
import type { TopologyContext } from './context.js';
import { TopologyError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import { assertName, fileSafe } from './names.js';
import { createNetns, deleteNetns, listNetns, netnsPath, ownedByPrefix } from './netns.js';
import { CONFLIST_FILE, TopologyNode, linkBinary, primaryConfList, writeJsonAtomic } from './node.js';
import type { TopologyPod } from './pod.js';
import { SupervisedProcess, isSameProcess, type ProcessRecord, type SpawnOptions } from './process.js';
import { execInNetns, ip, type RunOptions, type RunResult } from './run.js';
import { createState, readState, stateFilePath, writeState, type NodeState, type TopologyState } from './state.js';
import { teardown, type TeardownReport } from './teardown.js';

/** Where topologies keep state unless told otherwise: `<tmpdir>/weir-topology/<name>`. */
export const DEFAULT_STATE_ROOT = join(tmpdir(), 'weir-topology');
export const DEFAULT_CNI_BIN_DIR = '/usr/lib/cni';
export const DEFAULT_UNDERLAY_CIDR = '172.18.0.0/24';
const UNDERLAY_CIDR6 = 'fd00:172:18::/64';

export interface TopologyOptions {
  /** Unique prefix of everything created (netns `<name>-…`, state dir, cgroup). */
  name: string;
  /** Default `<tmpdir>/weir-topology/<name>`. Holds the state file, logs, CNI config/bin dirs, IPAM data. */
  stateDir?: string;
  /** The network between nodes. Node n gets host address 10 + n. Default 172.18.0.0/24. */
  underlayCidr?: string;
  /** Where Debian's plugins (bridge, host-local, loopback, …) are. Default /usr/lib/cni. */
  cniBinDir?: string;
  /**
   * Dual stack: nodes get `fd00:172:18::<10+n>`, pods addresses from `fd00:10:244:<n>::/64` too, routed
   * between nodes. Default false (IPv4 only).
   */
  ipv6?: boolean;
  /** Put pod processes in cgroups named by pod UID (needs cgroup v2). Default: when available. */
  podCgroups?: boolean;
  logger?: Logger;
}

export interface AddNodeOptions {
  /** e.g. `node-1`; the netns is `<topology>-<name>`. */
  name: string;
  /** Default `10.244.<n>.0/24` for the n-th node. */
  podCidr?: string;
  /** With `ipv6`: default `fd00:10:244:<n>::/64`. */
  podCidr6?: string;
  /** Plugins appended after `bridge` in the node's conflist (e.g. Weir's plugin). */
  cniChain?: CniPluginEntry[];
  /** Default `1.0.0` (the newest Debian's plugins speak). */
  cniVersion?: string;
}

export interface CleanupOptions {
  stateRoot?: string;
  logger?: Logger;
}

/**
 * Simulated Kubernetes nodes and pods in network namespaces: an underlay bridge in its own netns, a netns
 * per node, a netns per pod wired by Debian's CNI plugins, and supervised processes. Never touches the
 * root netns. Everything is recorded in a state file so another process can attach or clean up.
 */
export class Topology {
  readonly #state: TopologyState;
  readonly #nodes = new Map<string, TopologyNode>();
  readonly #processes: SupervisedProcess[] = [];
  readonly #context: TopologyContext;
  #saving: Promise<void> = Promise.resolve();
  #addingNode: Promise<unknown> = Promise.resolve();
  readonly #inflight = new Set<Promise<unknown>>();
  #destroying: Promise<TeardownReport> | undefined;
  readonly logger: Logger;

  private constructor(state: TopologyState, logger: Logger) {
    this.#state = state;
    this.logger = logger;
    this.#context = {
      state,
      logger,
      save: () => this.#save(),
      operation: (fn) => this.#operation(fn),
      spawn: (options) => this.spawn(options),
      processesIn: (netns) => this.#processes.filter((p) => p.netns === netns && p.running),
    };
    for (const node of state.nodes) this.#nodes.set(node.name, new TopologyNode(node, this.#context));
    for (const record of state.processes) {
      if (isSameProcess(record.pid, record.startTime)) this.#processes.push(SupervisedProcess.attach(record, logger));
    }
  }

  static async create(options: TopologyOptions): Promise<Topology> {
    assertName('topology name', options.name, 40);
    const underlay = parseCidr(options.underlayCidr ?? DEFAULT_UNDERLAY_CIDR);
    const stateDir = options.stateDir ?? join(DEFAULT_STATE_ROOT, options.name);
    const logger = (options.logger ?? silentLogger).child({ topology: options.name });
    const underlayNetns = `${options.name}-underlay`;
    if ((await listNetns()).includes(underlayNetns)) {
      throw new TopologyError('TOPOLOGY_EXISTS', `netns ${underlayNetns} already exists; another topology is named ${options.name}, or run Topology.cleanupByPrefix('${options.name}')`);
    }
    const mount = options.podCgroups === false ? undefined : await cgroup2Mount();
    if (options.podCgroups === true && mount === undefined) {
      throw new TopologyError('TOPOLOGY_PREREQUISITES', 'podCgroups: true needs a writable cgroup v2 mount; none found in /proc/self/mountinfo');
    }
    const state: TopologyState = {
      version: 1,
      name: options.name,
      stateDir,
      underlay: { netns: underlayNetns, cidr: formatCidr(underlay), ...(options.ipv6 ? { cidr6: UNDERLAY_CIDR6 } : {}) },
      ...(mount !== undefined ? { cgroup: topologyCgroup(mount, options.name) } : {}),
      sourceCniBinDir: options.cniBinDir ?? DEFAULT_CNI_BIN_DIR,
      nodes: [],
      processes: [],
    };
    // State first, exclusively: from here on a crash is recoverable from the state file, and a second
    // creator of the same name stops here.
    await createState(state);
    const topology = new Topology(state, logger);
    try {
      if (state.cgroup !== undefined) await mkdir(state.cgroup, { recursive: true });
      await createNetns(underlayNetns);
      await ip(underlayNetns, ['link', 'add', 'br0', 'type', 'bridge']);
      await ip(underlayNetns, ['link', 'set', 'br0', 'up']);
    } catch (err) {
      await topology.destroy().catch(() => {});
      throw err;
    }
    logger.info({ stateDir, underlay: state.underlay }, 'topology created');
    return topology;
  }

  /** Attach to a topology created by another process (e.g. `weirctl sandbox up`) from its state dir. */
  static async attach(stateDir: string, options: { logger?: Logger } = {}): Promise<Topology> {
    const state = await readState(stateDir);
    return new Topology(state, (options.logger ?? silentLogger).child({ topology: state.name }));
  }

  /**
   * Crash recovery: remove everything of every topology named `prefix` or `prefix-…` (netns, processes in
   * them, cgroups, state dirs under `stateRoot`) with no live handle. Safe when nothing is left.
   */
  static async cleanupByPrefix(prefix: string, options: CleanupOptions = {}): Promise<TeardownReport> {
    assertName('prefix', prefix, 40);
    const logger = options.logger ?? silentLogger;
    const stateRoot = options.stateRoot ?? DEFAULT_STATE_ROOT;
    let stateDirs: string[] = [];
    try {
      stateDirs = (await readdir(stateRoot)).filter((d) => ownedByPrefix(d, prefix)).map((d) => join(stateRoot, d));
    } catch {
      // No state root: nothing recorded.
    }
    const mount = await cgroup2Mount();
    const cgroups = mount === undefined ? [] : (await listTopologyCgroups(mount)).filter((d) => ownedByPrefix(d, prefix)).map((d) => topologyCgroup(mount, d));
    const netns = (await listNetns()).filter((n) => ownedByPrefix(n, prefix));
    const processes: ProcessRecord[] = [];
    for (const dir of stateDirs) processes.push(...((await readState(dir).catch(() => undefined))?.processes ?? []));
    const report = await teardown({ netns, cgroups, processes, ...(mount !== undefined ? { cgroupMount: mount } : {}), stateDirs }, logger);
    logger.info({ prefix, ...report }, 'cleanup by prefix done');
    return report;
  }

  get name(): string {
    return this.#state.name;
  }
  get stateDir(): string {
    return this.#state.stateDir;
  }
  get stateFile(): string {
    return stateFilePath(this.#state.stateDir);
  }
  /** The netns holding the underlay bridge `br0` that connects the nodes. */
  get underlayNetns(): string {
    return this.#state.underlay.netns;
  }
  get underlayNetnsPath(): string {
    return netnsPath(this.#state.underlay.netns);
  }
  get nodes(): TopologyNode[] {
    return [...this.#nodes.values()];
  }
  get pods(): TopologyPod[] {
    return this.nodes.flatMap((n) => n.pods);
  }
  /** Every process this handle knows of (started here, or running when attached). */
  get processes(): SupervisedProcess[] {
    return [...this.#processes];
  }
  get destroyed(): boolean {
    return this.#destroying !== undefined;
  }

  node(name: string): TopologyNode {
    const node = this.#nodes.get(name);
    if (!node) throw new TopologyError('TOPOLOGY_NOT_FOUND', `no node ${name} in topology ${this.name} (nodes: ${[...this.#nodes.keys()].join(', ') || 'none'})`);
    return node;
  }

  pod(namespace: string, name: string): TopologyPod | undefined {
    for (const node of this.#nodes.values()) {
      const pod = node.pod(namespace, name);
      if (pod) return pod;
    }
    return undefined;
  }

  /** The newest process started under this name (e.g. `node-1.ztunnel`). */
  process(name: string): SupervisedProcess | undefined {
    return this.#processes.findLast((p) => p.name === name);
  }

  /**
   * A node: netns `<topology>-<name>`, `eth0` on the underlay with address .10+n, IP forwarding, routes to
   * every other node's pod CIDR, its CNI conf dir (conflist: bridge + host-local + `cniChain`) and bin dir.
   */
  addNode(options: AddNodeOptions): Promise<TopologyNode> {
    // One at a time: a node's index, address and routes depend on the nodes before it.
    return this.#operation(() => {
      const next = this.#addingNode.catch(() => {}).then(() => this.#addNode(options));
      this.#addingNode = next;
      return next;
    });
  }

  async #addNode(options: AddNodeOptions): Promise<TopologyNode> {
    assertName('node name', options.name, 32);
    if (this.#nodes.has(options.name)) throw new TopologyError('TOPOLOGY_EXISTS', `node ${options.name} already exists in topology ${this.name}`);
    const index = Math.max(0, ...this.#state.nodes.map((n) => n.index)) + 1;
    const podCidr = formatCidr(parseCidr(options.podCidr ?? `10.244.${index}.0/24`));
    const podCidr6 = this.#state.underlay.cidr6 !== undefined ? (options.podCidr6 ?? `fd00:10:244:${index}::/64`) : undefined;
    const clash = this.#state.nodes.find((n) => n.podCidr === podCidr || (podCidr6 !== undefined && n.podCidr6 === podCidr6));
    if (clash) throw new TopologyError('TOPOLOGY_INVALID_OPTIONS', `pod CIDR ${podCidr} of node ${options.name} is already node ${clash.name}'s`);
    const underlay = parseCidr(this.#state.underlay.cidr);
    const dir = join(this.stateDir, 'nodes', options.name);
    const state: NodeState = {
      name: options.name,
      index,
      netns: `${this.name}-${options.name}`,
      ip: hostAddress(underlay, 10 + index),
      podCidr,
      ...(podCidr6 !== undefined ? { ip6: `fd00:172:18::${10 + index}`, podCidr6 } : {}),
      cniConfDir: join(dir, 'cni', 'net.d'),
      cniBinDir: join(dir, 'cni', 'bin'),
      ipamDataDir: join(dir, 'cni', 'ipam'),
      pods: [],
    };
    await createNetns(state.netns);
    try {
      const uplink = `n${index}`;
      await ip(state.netns, ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', uplink, 'netns', this.underlayNetns]);
      await ip(this.underlayNetns, ['link', 'set', uplink, 'master', 'br0', 'up']);
      await ip(state.netns, ['addr', 'add', `${state.ip}/${underlay.prefixLength}`, 'dev', 'eth0']);
      await ip(state.netns, ['link', 'set', 'eth0', 'up']);
      await execInNetns(netnsPath(state.netns), 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'], { check: true });
      if (state.ip6 !== undefined) {
        // nodad: usable at once instead of after duplicate address detection (~2 s).
        await ip(state.netns, ['addr', 'add', `${state.ip6}/64`, 'dev', 'eth0', 'nodad']);
        await execInNetns(netnsPath(state.netns), 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1'], { check: true });
      }
      for (const other of this.#state.nodes) {
        await ip(state.netns, ['route', 'add', other.podCidr, 'via', other.ip]);
        await ip(other.netns, ['route', 'add', state.podCidr, 'via', state.ip]);
        if (state.podCidr6 !== undefined && other.podCidr6 !== undefined && state.ip6 !== undefined && other.ip6 !== undefined) {
          await ip(state.netns, ['-6', 'route', 'add', other.podCidr6, 'via', other.ip6]);
          await ip(other.netns, ['-6', 'route', 'add', state.podCidr6, 'via', state.ip6]);
        }
      }
      await this.#prepareCni(state, options);
    } catch (err) {
      await deleteNetns(state.netns).catch(() => {});
      for (const other of this.#state.nodes) {
        await ip(other.netns, ['route', 'del', state.podCidr]).catch(() => {});
        if (state.podCidr6 !== undefined) await ip(other.netns, ['-6', 'route', 'del', state.podCidr6]).catch(() => {});
      }
      throw err;
    }
    this.#state.nodes.push(state);
    const node = new TopologyNode(state, this.#context);
    this.#nodes.set(state.name, node);
    await this.#save();
    this.logger.info({ node: state.name, netns: state.netns, ip: state.ip, podCidr }, 'node added');
    return node;
  }

  /** Start a supervised process inside a netns; its output goes to `<stateDir>/logs/<name>.log`. */
  spawn(options: SpawnOptions): Promise<SupervisedProcess> {
    return this.#operation(() => this.#spawn(options));
  }

  async #spawn(options: SpawnOptions): Promise<SupervisedProcess> {
    if (options.cgroup !== undefined) await mkdir(options.cgroup, { recursive: true });
    const proc = await SupervisedProcess.start({ ...options, logFile: options.logFile ?? this.#defaultLogFile(options.name) }, this.logger);
    this.#processes.push(proc);
    this.#state.processes.push(proc.record);
    await this.#save();
    return proc;
  }

  /**
   * Capture packets inside a netns with tcpdump (e.g. `topo.capture(topo.underlayNetnsPath, { name: 'wire',
   * filter: 'tcp port 15008' })` for everything between nodes); resolves once tcpdump is listening.
   */
  async capture(netns: string, options: CaptureOptions): Promise<PacketCapture> {
    const pcapFile = join(this.stateDir, 'captures', `${fileSafe(options.name)}.pcap`);
    await mkdir(dirname(pcapFile), { recursive: true });
    const proc = await this.spawn({ name: `capture-${options.name}`, netns, cmd: 'tcpdump', args: tcpdumpArgs(pcapFile, options) });
    await proc.waitForOutput(/listening on/, 10_000);
    return new PacketCapture(proc, pcapFile);
  }

  /** Run a command to completion inside a netns (a pod's or node's `netnsPath`). */
  exec(netns: string, cmd: string, args: readonly string[] = [], options?: RunOptions): Promise<RunResult> {
    return execInNetns(netns, cmd, args, options);
  }

  /**
   * Stop every process (SIGTERM, then SIGKILL after 3 s), kill anything else left in the topology's
   * namespaces, delete every netns (and with them every link), cgroup and the state dir. Idempotent.
   */
  destroy(): Promise<TeardownReport> {
    this.#destroying ??= this.#destroy();
    return this.#destroying;
  }

  async #destroy(): Promise<TeardownReport> {
    // Whatever is half-built finishes (and lands in the state) before teardown reads the state.
    await Promise.allSettled([...this.#inflight]);
    await Promise.all(this.#processes.map((p) => p.stop('SIGTERM', 3000).catch((err: unknown) => this.logger.warn({ process: p.name, err: String(err) }, 'stop failed'))));
    await this.#saving.catch(() => {});
    const netns = [...this.#state.nodes.flatMap((n) => n.pods.map((p) => p.netns)), ...this.#state.nodes.map((n) => n.netns), this.underlayNetns];
    // The topology cgroup is <mount>/weir-topology/<name>.
    const mount = this.#state.cgroup !== undefined ? dirname(dirname(this.#state.cgroup)) : undefined;
    const report = await teardown(
      {
        netns,
        cgroups: this.#state.cgroup !== undefined ? [this.#state.cgroup] : [],
        processes: this.#state.processes,
        ...(mount !== undefined ? { cgroupMount: mount } : {}),
        stateDirs: [this.stateDir],
      },
      this.logger,
    );
    this.logger.info({ netns: report.netns.length, killed: report.killed.length }, 'topology destroyed');
    return report;
  }

  async #prepareCni(state: NodeState, options: AddNodeOptions): Promise<void> {
    await mkdir(state.cniConfDir, { recursive: true });
    await mkdir(state.cniBinDir, { recursive: true });
    await mkdir(state.ipamDataDir, { recursive: true });
    // The node's own bin dir, like /opt/cni/bin: Debian's plugins linked in, installed plugins beside them.
    let plugins: string[];
    try {
      plugins = await readdir(this.#state.sourceCniBinDir);
    } catch (err) {
      throw new TopologyError('TOPOLOGY_PREREQUISITES', `CNI plugin dir ${this.#state.sourceCniBinDir} cannot be read (apt-get install containernetworking-plugins)`, { cause: err });
    }
    for (const plugin of plugins) await linkBinary(join(this.#state.sourceCniBinDir, plugin), join(state.cniBinDir, plugin));
    for (const entry of options.cniChain ?? []) {
      if (entry.binary !== undefined) await linkBinary(entry.binary, join(state.cniBinDir, entry.type));
    }
    const list = primaryConfList({ podCidr: state.podCidr, ...(state.podCidr6 !== undefined ? { podCidr6: state.podCidr6 } : {}), ipamDataDir: state.ipamDataDir, cniVersion: options.cniVersion ?? '1.0.0', chain: options.cniChain ?? [] });
    await writeJsonAtomic(join(state.cniConfDir, CONFLIST_FILE), list);
  }

  /** `<stateDir>/logs/<name>.log`; a second process of the same name gets `<name>-2.log`, and so on. */
  #defaultLogFile(name: string): string {
    const taken = new Set(this.#state.processes.map((p) => p.logFile));
    for (let n = 1; ; n++) {
      const file = join(this.stateDir, 'logs', `${fileSafe(name)}${n === 1 ? '' : `-${n}`}.log`);
      if (!taken.has(file)) return file;
    }
  }

  #operation<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#destroying !== undefined) {
      return Promise.reject(new TopologyError('TOPOLOGY_DESTROYED', `topology ${this.name} has been destroyed`));
    }
    const pending = fn();
    this.#inflight.add(pending);
    const done = (): void => void this.#inflight.delete(pending);
    pending.then(done, done);
    return pending;
  }

  #save(): Promise<void> {
    // Serialised: each write sees the latest state, and writes never interleave.
    const next = this.#saving.catch(() => {}).then(() => (this.#destroying === undefined ? writeState(this.#state) : undefined));
    this.#saving = next;
    return next;
  }
}


