import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

import { NETLINK_ROUTE, netlinkExchange, openNetns, readSysctls, spawnInNetns, writeSysctls, type Netns } from '@weir/netns';

import type { CommandExecutor } from '../src/executor.js';
import type { NetlinkExchange } from '../src/rtnetlink.js';
import type { NetnsSysctls } from '../src/shell-batch.js';

/** Fail (never skip) when the machine cannot run namespace tests, naming what is missing. */
export function requireRootTools(tools: readonly string[]): void {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (CAP_NET_ADMIN/CAP_SYS_ADMIN) to create network namespaces');
  for (const tool of tools) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'pipe' });
    } catch {
      throw new Error(`these tests need ${tool} on PATH (Debian: see scripts/setup-host.sh)`);
    }
  }
}

let named = 0;

/**
 * A unique name (≤15 chars, usable for netns and interfaces): the pid keeps processes apart, a counter the
 * names of one process (two random bytes alone once collided with a namespace of the same run).
 */
export function uniqueName(tag: string): string {
  return `w${tag}${process.pid.toString(36)}${(named++).toString(36)}${randomBytes(2).toString('hex')}`.slice(0, 15);
}

export function sh(cmd: string, args: readonly string[], input?: string): string {
  return execFileSync(cmd, [...args], { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

export function addNetns(name: string): string {
  sh('ip', ['netns', 'add', name]);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return `/var/run/netns/${name}`;
}

export function delNetns(name: string): void {
  try {
    sh('ip', ['netns', 'del', name]);
  } catch {
    // already gone
  }
}

export interface RecordedCall {
  cmd: string;
  args: readonly string[];
  input?: string;
}

/** Wraps an executor and records every command (after nsenter's own arguments). */
export function recording(base: CommandExecutor): CommandExecutor & { calls: RecordedCall[] } {
  const calls: RecordedCall[] = [];
  return {
    calls,
    run(cmd, args, opts) {
      calls.push({ cmd, args, ...(opts?.input !== undefined ? { input: opts.input } : {}) });
      return base.run(cmd, args, opts);
    },
  };
}

/** The `-A` lines of one table in iptables-save output, in order. */
export function ruleLines(saveText: string, table: string): string[] {
  const out: string[] = [];
  let current = '';
  for (const line of saveText.split('\n')) {
    if (line.startsWith('*')) current = line.slice(1).trim();
    else if (line.startsWith('-A ') && current === table) out.push(line);
  }
  return out;
}

/**
 * Commands run directly in the netns at `path` (no nsenter, no shell: `spawnInNetns` of
 * @weir/netns) and its sysctls read and written in-process, as the node agent passes them to
 * NetnsApplier. The netns is opened per call.
 */
export function directAt(path: string): { executor: CommandExecutor; sysctls: NetnsSysctls } {
  const inNetns = <T>(fn: (ns: Netns) => T): T => {
    const ns = openNetns(path);
    try {
      return fn(ns);
    } finally {
      ns.close();
    }
  };
  return {
    executor: {
      async run(cmd, args, opts) {
        const ns = openNetns(path);
        try {
          const r = await spawnInNetns(ns, cmd, args, opts?.input === undefined ? {} : { input: opts.input });
          return { stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8') + (r.signal ? `${cmd}: killed by ${r.signal}\n` : ''), code: r.code ?? 128 };
        } catch (e) {
          return { stdout: '', stderr: `${cmd}: ${(e as Error).message}`, code: 127 };
        } finally {
          ns.close();
        }
      },
    },
    sysctls: {
      read: (keys) => inNetns((ns) => readSysctls(ns, keys)),
      write: (key, value) => inNetns((ns) => !writeSysctls(ns, { [key]: value }).includes(key)),
    },
  };
}

/** Netlink in the netns at `path`, opened per exchange (a test's netns outlives no handle). */
export function netlinkAt(path: string): NetlinkExchange {
  return (req, n, protocol = NETLINK_ROUTE) => {
    const netns = openNetns(path);
    try {
      return netlinkExchange(netns, protocol, req, n);
    } finally {
      netns.close();
    }
  };
}
