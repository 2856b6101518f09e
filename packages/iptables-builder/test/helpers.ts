import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

import type { CommandExecutor } from '../src/executor.js';

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

/** A unique name (≤15 chars, usable for netns and interfaces). */
export function uniqueName(tag: string): string {
  return `w${tag}${process.pid.toString(36)}${randomBytes(2).toString('hex')}`.slice(0, 15);
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
