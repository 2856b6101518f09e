import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CniResult } from './cni.js';
import { TopologyError } from './errors.js';
import type { ProcessRecord } from './process.js';

/**
 * Everything a topology created, written after every change, so that another process (`weirctl sandbox
 * down`, a test's crash recovery) can find and remove it.
 */
export interface TopologyState {
  version: 1;
  name: string;
  stateDir: string;
  underlay: { netns: string; cidr: string; cidr6?: string };
  /** The topology's cgroup subtree; absent without cgroup v2. */
  cgroup?: string;
  sourceCniBinDir: string;
  nodes: NodeState[];
  processes: ProcessRecord[];
}

export interface NodeState {
  name: string;
  index: number;
  netns: string;
  ip: string;
  podCidr: string;
  ip6?: string;
  podCidr6?: string;
  cniConfDir: string;
  cniBinDir: string;
  ipamDataDir: string;
  pods: PodState[];
}

export interface PodState {
  name: string;
  namespace: string;
  uid: string;
  containerId: string;
  netns: string;
  ifName: string;
  ip: string;
  ip6?: string;
  labels: Record<string, string>;
  cniResult: CniResult;
  cgroup?: string;
}

export const STATE_FILE = 'topology.json';

export function stateFilePath(stateDir: string): string {
  return join(stateDir, STATE_FILE);
}

/** Atomic replace: a reader never sees half a file, even if we crash mid-write. */
export async function writeState(state: TopologyState): Promise<void> {
  await mkdir(state.stateDir, { recursive: true });
  const file = stateFilePath(state.stateDir);
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`);
  await rename(tmp, file);
}

/**
 * Write the first state of a topology, failing with TOPOLOGY_EXISTS if a state file is already there:
 * two creators of the same name never both proceed (and never tear down each other's namespaces).
 */
export async function createState(state: TopologyState): Promise<void> {
  await mkdir(state.stateDir, { recursive: true });
  try {
    await writeFile(stateFilePath(state.stateDir), `${JSON.stringify(state, null, 2)}\n`, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    throw new TopologyError(
      'TOPOLOGY_EXISTS',
      `topology ${state.name} already has state at ${stateFilePath(state.stateDir)}; destroy it or run Topology.cleanupByPrefix('${state.name}')`,
      { cause: err },
    );
  }
}

export async function readState(stateDir: string): Promise<TopologyState> {
  const file = stateFilePath(stateDir);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new TopologyError('TOPOLOGY_NOT_FOUND', `no topology state at ${file}: ${(err as Error).message}`, { cause: err });
  }
  let state: TopologyState;
  try {
    state = JSON.parse(text) as TopologyState;
  } catch (err) {
    throw new TopologyError('TOPOLOGY_NOT_FOUND', `topology state ${file} is not valid JSON`, { cause: err });
  }
  if (state.version !== 1 || typeof state.name !== 'string' || !Array.isArray(state.nodes)) {
    throw new TopologyError('TOPOLOGY_NOT_FOUND', `topology state ${file} has an unknown shape (version ${String(state.version)})`);
  }
  return state;
}
