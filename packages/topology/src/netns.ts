import { readdir, readlink, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { TopologyError } from './errors.js';
import { NETNS_DIR, ip, run } from './run.js';

/** Names owned by a prefix: the prefix itself or `<prefix>-…` (so `e2e-1` never matches `e2e-12`). */
export function ownedByPrefix(name: string, prefix: string): boolean {
  return name === prefix || name.startsWith(`${prefix}-`);
}

export function netnsPath(name: string): string {
  return join(NETNS_DIR, name);
}

/** Create a named netns with `lo` up. Fails if the name is taken. */
export async function createNetns(name: string): Promise<string> {
  const result = await run('ip', ['netns', 'add', name]);
  if (result.code !== 0) {
    const code = /exists/i.test(result.stderr) ? 'TOPOLOGY_EXISTS' : 'TOPOLOGY_COMMAND_FAILED';
    throw new TopologyError(code, `cannot create network namespace ${name}: ${result.stderr.trim()}`);
  }
  await ip(name, ['link', 'set', 'lo', 'up']);
  return netnsPath(name);
}

/** Delete a named netns; a netns that is already gone is not an error. */
export async function deleteNetns(name: string): Promise<void> {
  const result = await run('ip', ['netns', 'delete', name]);
  if (result.code !== 0 && !/No such file|not found|does not exist/i.test(result.stderr)) {
    throw new TopologyError('TOPOLOGY_COMMAND_FAILED', `cannot delete network namespace ${name}: ${result.stderr.trim()}`);
  }
}

export async function listNetns(): Promise<string[]> {
  try {
    return (await readdir(NETNS_DIR)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** The netns inode behind a netns file (a bind mount of nsfs); undefined if it is not mounted. */
export async function netnsInode(path: string): Promise<number | undefined> {
  try {
    const [info, dir] = await Promise.all([stat(path), stat(dirname(path))]);
    // A mounted netns file lives on nsfs; an unmounted placeholder shares its directory's device.
    return info.dev === dir.dev ? undefined : info.ino;
  } catch {
    return undefined;
  }
}

/** Every pid whose network namespace is one of `inodes` (scanning /proc, as a node agent would). */
export async function pidsInNetns(inodes: ReadonlySet<number>): Promise<number[]> {
  if (inodes.size === 0) return [];
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const link = await readlink(`/proc/${entry}/ns/net`);
      const inode = Number(/^net:\[(\d+)\]$/.exec(link)?.[1]);
      if (inodes.has(inode)) pids.push(Number(entry));
    } catch {
      // The process exited while we looked, or is a kernel thread without a netns link.
    }
  }
  return pids;
}
