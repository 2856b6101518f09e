// Test helpers: network namespaces and veth pairs the tests create and delete themselves.
// Never touches the host namespace's links, routes or rules.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import * as net from 'node:net';

/** Fails (never skips) when the tests cannot do their job here. */
export function requireRootAndTools(...tools: string[]): void {
  if (process.getuid?.() !== 0) throw new Error('@weir/netns tests need root (they create network namespaces); run as root');
  for (const tool of ['ip', ...tools]) {
    const found = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].some((d) => existsSync(`${d}/${tool}`));
    if (!found) throw new Error(`@weir/netns tests need the "${tool}" command (see scripts/setup-host.sh)`);
  }
}

/** A name unique across parallel test processes, at most 15 characters (interface-name safe). */
export function uniqueName(tag: string): string {
  const pid = (process.pid % 46656).toString(36);
  return `w${tag}${pid}${randomBytes(3).toString('hex')}`.slice(0, 15);
}

export function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`);
  }
}

export function runAsync(cmd: string, args: string[], timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

/** A netns made with `ip netns add`, loopback up. */
export class TestNetns {
  readonly name: string;
  readonly path: string;

  constructor(tag: string) {
    this.name = uniqueName(tag);
    this.path = `/var/run/netns/${this.name}`;
    run('ip', ['netns', 'add', this.name]);
    this.ip('link', 'set', 'lo', 'up');
  }

  ip(...args: string[]): string {
    return run('ip', ['-n', this.name, ...args]);
  }

  exec(cmd: string, args: string[]): string {
    return run('ip', ['netns', 'exec', this.name, cmd, ...args]);
  }

  /** Like exec, without blocking the event loop (for clients of servers in this process). */
  execAsync(cmd: string, args: string[], timeoutMs = 10_000): Promise<string> {
    return runAsync('ip', ['netns', 'exec', this.name, cmd, ...args], timeoutMs);
  }

  delete(): void {
    try {
      run('ip', ['netns', 'del', this.name]);
    } catch {
      // Already gone.
    }
  }
}

/**
 * A veth pair between two test namespaces with IPv4 /24 and IPv6 /64 addresses
 * (`10.<n>.0.1`/`fd00:<n>::1` in a, `.2`/`::2` in b).
 */
export function vethPair(a: TestNetns, b: TestNetns, subnet: number): { a4: string; b4: string; a6: string; b6: string; ifA: string; ifB: string } {
  const ifA = uniqueName('va');
  const ifB = uniqueName('vb');
  run('ip', ['link', 'add', ifA, 'netns', a.name, 'type', 'veth', 'peer', 'name', ifB, 'netns', b.name]);
  const r = { a4: `10.${subnet}.0.1`, b4: `10.${subnet}.0.2`, a6: `fd00:${subnet}::1`, b6: `fd00:${subnet}::2`, ifA, ifB };
  a.ip('addr', 'add', `${r.a4}/24`, 'dev', ifA);
  b.ip('addr', 'add', `${r.b4}/24`, 'dev', ifB);
  a.ip('addr', 'add', `${r.a6}/64`, 'dev', ifA, 'nodad');
  b.ip('addr', 'add', `${r.b6}/64`, 'dev', ifB, 'nodad');
  a.ip('link', 'set', ifA, 'up');
  b.ip('link', 'set', ifB, 'up');
  return r;
}

export function countFds(): number {
  return readdirSync('/proc/self/fd').length;
}

const tick = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The fd count once it has held still for 200 ms (at most 5 s): sockets of earlier work finish
 * closing on later turns of the loop, which a fixed sleep may not cover on a loaded machine.
 */
export async function stableFdCount(): Promise<number> {
  const end = Date.now() + 5000;
  let n = countFds();
  for (let still = Date.now(); Date.now() - still < 200 && Date.now() < end; ) {
    await tick(20);
    const m = countFds();
    if (m !== n) [n, still] = [m, Date.now()];
  }
  return n;
}

/** The fd count after waiting (at most 5 s) for it to come back to `n`: a leak still shows. */
export async function fdCountBackTo(n: number): Promise<number> {
  const end = Date.now() + 5000;
  while (countFds() !== n && Date.now() < end) await tick(20);
  return countFds();
}

/** A TCP port that is free on the host's loopback right now. */
export async function freeHostPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Resolves with the error a host-namespace connect gets, or 'connected'. */
export function hostConnect(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

/** Reads everything a socket sends until it ends. */
export function readAll(s: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => (data += d));
    s.once('end', () => resolve(data));
    s.once('error', reject);
  });
}

/** The packet counter of the first rule in `chain` of `table` whose text contains `match`. */
export function ruleCounter(ns: TestNetns, cmd: 'iptables' | 'ip6tables', table: string, chain: string, match: string): number {
  const out = ns.exec(cmd, ['-t', table, '-nvxL', chain]);
  const line = out.split('\n').find((l) => l.includes(match));
  if (!line) throw new Error(`no rule matching "${match}" in ${cmd} -t ${table} ${chain}:\n${out}`);
  return Number(line.trim().split(/\s+/)[0]);
}
