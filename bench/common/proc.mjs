/* global process */
// CPU and memory of processes the benches start, from /proc (Linux), independent of machine load.
import { readdirSync, readFileSync } from 'node:fs';

const HZ = 100; // USER_HZ: the unit of /proc/<pid>/stat times on Linux.

/** Fields of /proc/<pid>/stat after the command name, or undefined when the process is gone. */
function statFields(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/**
 * CPU seconds of one process: `self` (utime + stime, all its threads) and `children` (cutime + cstime:
 * its children that exited and were waited for, with their own reaped descendants).
 */
export function processCpu(pid) {
  const f = statFields(pid);
  if (f === undefined) return { self: 0, children: 0 };
  // After the command name: state [0], ppid [1], …, utime [11], stime [12], cutime [13], cstime [14].
  return { self: (Number(f[11]) + Number(f[12])) / HZ, children: (Number(f[13]) + Number(f[14])) / HZ };
}

/** Every live descendant of `pid` (children first found through each process's ppid). */
export function descendants(pid) {
  const parent = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(name);
    if (f !== undefined) parent.set(Number(name), Number(f[1]));
  }
  const out = [];
  const frontier = [pid];
  while (frontier.length > 0) {
    const p = frontier.pop();
    for (const [child, ppid] of parent) {
      if (ppid === p) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}

/**
 * CPU seconds of a process tree: the process itself (`self`) and everything it started (`children`:
 * the reaped ones via cutime/cstime plus the live descendants' own and reaped times), so a pool of
 * long-lived helper shells is counted before it exits.
 */
export function treeCpu(pid) {
  const root = processCpu(pid);
  let children = root.children;
  for (const d of descendants(pid)) {
    const c = processCpu(d);
    children += c.self + c.children;
  }
  return { self: root.self, children, total: root.self + children };
}

/** Resident set size of a pid in KiB (VmRSS of /proc/<pid>/status), 0 when it is gone. */
export function rssKiB(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** This process's own CPU seconds and its reaped children's. */
export const selfCpu = () => processCpu(process.pid);
