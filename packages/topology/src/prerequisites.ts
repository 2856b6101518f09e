import { access, constants } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { TopologyError } from './errors.js';
import { DEFAULT_PATH, NETNS_DIR, run } from './run.js';

/** Something the topology needs that this machine lacks, with the exact fix. */
export interface MissingPrerequisite {
  name: string;
  problem: string;
  fix: string;
}

export interface PrerequisiteOptions {
  /** Where bridge/host-local/loopback must be. Default /usr/lib/cni. */
  cniBinDir?: string;
  /** Also create and delete a throwaway netns to prove the kernel and permissions allow it. Default true. */
  probeNetns?: boolean;
}

const TOOLS: Array<{ cmd: string; pkg: string; why: string }> = [
  { cmd: 'ip', pkg: 'iproute2', why: 'creates network namespaces, veth pairs, bridges and routes' },
  { cmd: 'nsenter', pkg: 'util-linux', why: 'runs processes inside network namespaces' },
  { cmd: 'iptables', pkg: 'iptables', why: 'in-pod redirection rules' },
  { cmd: 'iptables-restore', pkg: 'iptables', why: 'applies rule sets atomically' },
  { cmd: 'sysctl', pkg: 'procps', why: 'enables IP forwarding inside node namespaces' },
  { cmd: 'tcpdump', pkg: 'tcpdump', why: 'captures what crosses the wire between nodes' },
];

/** What is missing to build topologies here; empty when everything is in place. Never throws. */
export async function checkPrerequisites(options: PrerequisiteOptions = {}): Promise<MissingPrerequisite[]> {
  const missing: MissingPrerequisite[] = [];
  const cniBinDir = options.cniBinDir ?? '/usr/lib/cni';
  const root = process.getuid?.() === 0;
  if (!root) {
    missing.push({ name: 'root', problem: `running as uid ${process.getuid?.() ?? '?'}; network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)`, fix: 'run as root (sudo -E …)' });
  }
  for (const tool of TOOLS) {
    if (!(await onPath(tool.cmd))) {
      missing.push({ name: tool.cmd, problem: `${tool.cmd} not found in ${DEFAULT_PATH} (${tool.why})`, fix: `apt-get install ${tool.pkg}` });
    }
  }
  for (const plugin of ['bridge', 'host-local', 'loopback']) {
    if (!(await executable(join(cniBinDir, plugin)))) {
      missing.push({ name: `cni:${plugin}`, problem: `CNI plugin ${join(cniBinDir, plugin)} is missing`, fix: 'apt-get install containernetworking-plugins' });
    }
  }
  if (!(await executable('/proc/self/ns/net', constants.R_OK))) {
    missing.push({ name: 'netns', problem: 'the kernel has no network namespaces (/proc/self/ns/net missing)', fix: 'use a kernel with CONFIG_NET_NS=y' });
  } else if (root && options.probeNetns !== false && !missing.some((m) => m.name === 'ip')) {
    const probe = `wprobe-${process.pid}-${randomBytes(3).toString('hex')}`;
    const added = await run('ip', ['netns', 'add', probe]).catch((err: Error) => ({ code: 1, stderr: err.message }));
    if (added.code !== 0) {
      missing.push({
        name: 'netns',
        problem: `cannot create a network namespace in ${NETNS_DIR}: ${added.stderr.trim()}`,
        fix: 'run privileged (docker run --privileged, or CAP_SYS_ADMIN + CAP_NET_ADMIN) with a writable /var/run',
      });
    } else {
      await run('ip', ['netns', 'delete', probe]);
    }
  }
  return missing;
}

/** Throws one TopologyError naming every missing prerequisite and its fix (tests fail with this message). */
export async function assertPrerequisites(options: PrerequisiteOptions = {}): Promise<void> {
  const missing = await checkPrerequisites(options);
  if (missing.length > 0) throw new TopologyError('TOPOLOGY_PREREQUISITES', formatMissing(missing));
}

export function formatMissing(missing: readonly MissingPrerequisite[]): string {
  return `missing prerequisites:\n${missing.map((m) => `  - ${m.problem}\n    fix: ${m.fix}`).join('\n')}`;
}

async function onPath(cmd: string): Promise<boolean> {
  for (const dir of DEFAULT_PATH.split(':')) {
    if (await executable(join(dir, cmd))) return true;
  }
  return false;
}

async function executable(path: string, mode = constants.X_OK): Promise<boolean> {
  try {
    await access(path, mode);
    return true;
  } catch {
    return false;
  }
}
