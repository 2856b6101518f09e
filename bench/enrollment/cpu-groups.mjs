/* global process, setTimeout */
// CPU cgroups laid out as a Kubernetes node has them, so that a burst of plugin execs competes with
// the node agent the way it does on a node: the container runtime, and every CNI plugin it execs,
// run in system.slice; the agent and ztunnel pods in kubepods. Without this every process shares one
// flat run queue: 100 plugins starting at once would each get as much CPU as the agent, which on a
// node is never the case. Weights are the conservative cgroup v2 ones (systemd's system.slice 100,
// kubelet's kubepods for 2 allocatable CPUs 2048 shares → weight 79); on cgroup v1 the same ratio in
// cpu.shares (1024 : 809). Nothing is capped: each group may use every core when the other is idle.
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const WEIGHTS = { runtime: 100, kubepods: 79 };

/** The cpu controller's hierarchy: cgroup v1 `/sys/fs/cgroup/cpu`, else v2 with cpu enabled, else undefined. */
function cpuHierarchy() {
  if (existsSync('/sys/fs/cgroup/cpu/cpu.shares')) return { root: '/sys/fs/cgroup/cpu', version: 1 };
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    try {
      if (readFileSync(join(root, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('cpu')) return { root, version: 2 };
    } catch {
      // not a v2 mount
    }
  }
  return undefined;
}

function readProcs(dir) {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * Creates `weir-bench-<name>/{runtime,kubepods}` when a cpu controller is there (and `flat` is false);
 * `place(group, pid)` moves a process (its children follow), `remove()` puts them back and deletes
 * the groups. `layout` says which it is, for the bench's output.
 */
export function nodeCpuGroups(name, { flat = false } = {}) {
  const h = flat ? undefined : cpuHierarchy();
  if (!h) {
    return {
      layout: flat ? 'flat (--flat: one run queue for plugins, agent and ztunnel)' : 'flat (no cpu cgroup controller here)',
      place: () => {},
      remove: async () => {},
    };
  }
  const top = join(h.root, `weir-bench-${name}`);
  mkdirSync(top, { recursive: true });
  if (h.version === 2) {
    try {
      writeFileSync(join(top, 'cgroup.subtree_control'), '+cpu');
    } catch (err) {
      rmdirSync(top);
      return { layout: `flat (cannot enable cpu below ${top}: ${err.message})`, place: () => {}, remove: async () => {} };
    }
  }
  const dirs = {};
  for (const [group, weight] of Object.entries(WEIGHTS)) {
    dirs[group] = join(top, group);
    mkdirSync(dirs[group], { recursive: true });
    if (h.version === 1) writeFileSync(join(dirs[group], 'cpu.shares'), String(Math.round((weight * 1024) / 100)));
    else writeFileSync(join(dirs[group], 'cpu.weight'), String(weight));
  }
  return {
    layout:
      `cgroup v${h.version} cpu groups as on a node: runtime + plugins (system.slice, weight ${WEIGHTS.runtime}) ` +
      `and agent + ztunnel (kubepods, weight ${WEIGHTS.kubepods}); no caps`,
    place(group, pid) {
      writeFileSync(join(dirs[group], 'cgroup.procs'), String(pid));
    },
    /** Back to the root group, then the groups go; a process that was just killed may take a moment to leave. */
    async remove() {
      const deadline = Date.now() + 5000;
      for (const dir of [...Object.values(dirs), top]) {
        for (;;) {
          for (const pid of readProcs(dir)) {
            try {
              writeFileSync(join(h.root, 'cgroup.procs'), pid);
            } catch {
              // exited meanwhile
            }
          }
          try {
            rmdirSync(dir);
            break;
          } catch (err) {
            if (err.code !== 'EBUSY' || Date.now() > deadline) {
              process.stderr.write(`cpu groups: cannot remove ${dir}: ${err.message}\n`);
              break;
            }
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
        }
      }
    },
  };
}
