import { readdir, readFile, rmdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Where pod cgroups of all topologies live, under the cgroup v2 mount. */
const TOPOLOGY_CGROUP = 'weir-topology';

/**
 * The cgroup v2 mount point, or undefined without one. Pods get cgroups so that a node agent can find a
 * pod's processes (and so its netns) by the pod UID in /proc/<pid>/cgroup, as istio-cni does.
 */
export async function cgroup2Mount(): Promise<string | undefined> {
  let mountinfo: string;
  try {
    mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of mountinfo.split('\n')) {
    // "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> <source> <super options>"
    const [before, after] = line.split(' - ');
    if (after?.split(' ')[0] !== 'cgroup2' || before === undefined) continue;
    const fields = before.split(' ');
    if (fields[3] === '/' && fields[4] !== undefined && !fields[5]?.split(',').includes('ro')) return fields[4];
  }
  return undefined;
}

/** A topology's cgroup subtree: `<mount>/weir-topology/<name>`. */
export function topologyCgroup(mount: string, name: string): string {
  return join(mount, TOPOLOGY_CGROUP, name);
}

/** Kubelet's cgroupfs layout: a pod's processes show `…/kubepods/besteffort/pod<uid>/<container>` in /proc/<pid>/cgroup. */
export function podCgroup(topologyRoot: string, podUid: string): string {
  return join(topologyRoot, 'kubepods', 'besteffort', `pod${podUid}`);
}

/** Topology cgroup subtrees whose name is owned by a prefix. */
export async function listTopologyCgroups(mount: string): Promise<string[]> {
  try {
    return await readdir(join(mount, TOPOLOGY_CGROUP));
  } catch {
    return [];
  }
}

/** Every pid in a cgroup subtree. */
export async function cgroupPids(dir: string): Promise<number[]> {
  const pids: number[] = [];
  let entries: import('node:fs').Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
    const procs = await readFile(join(dir, 'cgroup.procs'), 'utf8');
    pids.push(...procs.split('\n').filter(Boolean).map(Number));
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (entry.isDirectory()) pids.push(...(await cgroupPids(join(dir, entry.name))));
  }
  return pids;
}

/** Remove a cgroup subtree, leaves first (a cgroup is removed with rmdir once it has no processes). */
export async function removeCgroupTree(dir: string): Promise<void> {
  let entries: import('node:fs').Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const entry of entries) {
    if (entry.isDirectory()) await removeCgroupTree(join(dir, entry.name));
  }
  try {
    await rmdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Remove the empty parent `<mount>/weir-topology` when no topology uses it any more. */
export async function removeCgroupParentIfEmpty(mount: string): Promise<void> {
  try {
    await rmdir(join(mount, TOPOLOGY_CGROUP));
  } catch {
    // Another topology still has a subtree there, or it is already gone.
  }
}
