import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { assertPrerequisites, listNetns, ownedByPrefix, run } from '../src/index.js';

/** A topology name no parallel test (or other package's test) uses. */
export function uniqueName(tag: string): string {
  return `wt${tag}-${process.pid}-${randomBytes(2).toString('hex')}`;
}

/** Fails (never skips) with the exact fix when the machine cannot run these tests. */
export async function requirePrerequisites(): Promise<void> {
  await assertPrerequisites();
}

/** The root netns as `ip` shows it: link names and routes (what a topology must never change). */
export async function rootNetnsView(): Promise<{ links: string[]; routes: string; rules: string }> {
  const links = (await run('ip', ['-o', 'link', 'show'], { check: true })).stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(':')[1]?.trim() ?? line)
    .sort();
  const routes = (await run('ip', ['route', 'show', 'table', 'all'], { check: true })).stdout;
  const rules = (await run('ip', ['rule', 'show'], { check: true })).stdout;
  return { links, routes, rules };
}

export async function netnsOwnedBy(prefix: string): Promise<string[]> {
  return (await listNetns()).filter((n) => ownedByPrefix(n, prefix));
}

/** Running and not a zombie (orphans are reaped by this machine's init whenever it gets to it). */
export function running(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
