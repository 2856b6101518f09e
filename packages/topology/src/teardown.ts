import { rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { cgroupPids, removeCgroupParentIfEmpty, removeCgroupTree } from './cgroup.js';
import type { Logger } from './logger.js';
import { deleteNetns, netnsInode, netnsPath, pidsInNetns } from './netns.js';
import { isSameProcess, type ProcessRecord } from './process.js';

export interface TeardownTargets {
  /** Netns names, deleted in this order (pods before nodes before the underlay reads best in logs). */
  netns: string[];
  /** cgroup subtrees to empty and remove. */
  cgroups: string[];
  /** Recorded processes, killed wherever they run (some run outside the topology's namespaces). */
  processes: ProcessRecord[];
  /** cgroup v2 mount, to drop the shared parent when it is empty. */
  cgroupMount?: string;
  stateDirs: string[];
}

export interface TeardownReport {
  netns: string[];
  killed: number[];
  cgroups: string[];
  stateDirs: string[];
}

/**
 * Remove what a topology created, without needing any live handle: SIGKILL every process inside its
 * namespaces or cgroups (found by netns inode in /proc and by cgroup.procs), delete the namespaces (which
 * deletes every link in them), remove the cgroups and state directories. Safe to run twice.
 */
export async function teardown(targets: TeardownTargets, logger: Logger): Promise<TeardownReport> {
  // A process just SIGKILLed may still show in its netns for a moment: count each pid once.
  const killed = [...new Set([...killRecorded(targets.processes, logger), ...(await killProcessesIn(targets.netns, targets.cgroups, logger))])];
  const removedNetns: string[] = [];
  for (const name of targets.netns) {
    await deleteNetns(name);
    removedNetns.push(name);
    logger.debug({ netns: name }, 'netns deleted');
  }
  for (const dir of targets.cgroups) await removeCgroupWithRetry(dir);

  if (targets.cgroupMount !== undefined) await removeCgroupParentIfEmpty(targets.cgroupMount);
  for (const dir of targets.stateDirs) await rm(dir, { recursive: true, force: true });
  return { netns: removedNetns, killed, cgroups: targets.cgroups, stateDirs: targets.stateDirs };
}

/** SIGKILL the process group of every recorded process that is still the same process (pid and start time). */
function killRecorded(records: readonly ProcessRecord[], logger: Logger): number[] {
  const killed: number[] = [];
  for (const record of records) {
    if (!isSameProcess(record.pid, record.startTime)) continue;
    try {
      process.kill(-record.pid, 'SIGKILL');
    } catch {
      try {
        process.kill(record.pid, 'SIGKILL');
      } catch {
        continue;
      }
    }
    logger.info({ pid: record.pid, process: record.name }, 'killed leftover process');
    killed.push(record.pid);
  }
  return killed;
}

/**
 * SIGKILL every process inside the named namespaces or the cgroup subtrees (found by netns inode in /proc
 * and by cgroup.procs): a netns is only really gone, links and all, when nothing runs in it any more.
 */
export async function killProcessesIn(netnsNames: readonly string[], cgroups: readonly string[], logger: Logger): Promise<number[]> {
  const inodes = new Set<number>();
  for (const name of netnsNames) {
    const inode = await netnsInode(netnsPath(name));
    if (inode !== undefined) inodes.add(inode);
  }
  const killed = new Set<number>();
  // Processes can fork while we kill; a few rounds catch the stragglers.
  for (let round = 0; round < 50; round++) {
    const pids = new Set(await pidsInNetns(inodes));
    for (const dir of cgroups) for (const pid of await cgroupPids(dir)) pids.add(pid);
    if (pids.size === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
        if (!killed.has(pid)) logger.info({ pid }, 'killed leftover process');
        killed.add(pid);
      } catch {
        // Already gone.
      }
    }
    await sleep(20);
  }
  return [...killed];
}

export async function removeCgroupWithRetry(dir: string): Promise<void> {
  // A killed process leaves its cgroup a moment after the signal; rmdir says EBUSY until then.
  for (let attempt = 0; ; attempt++) {
    try {
      await removeCgroupTree(dir);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || attempt >= 100) throw err;
      await sleep(20);
    }
  }
}
