import { readdir, readFile, stat } from 'node:fs/promises';
import { canonicalAddress } from '@weir/iptables-builder';
import { listAddresses, type Netns } from '@weir/netns';

export interface ProcNetnsMatch {
  pid: number;
  /** `/proc/<pid>/ns/net` */
  path: string;
  ino: number;
  dev: number;
}

export interface ProcScanOptions {
  uid: string;
  /** The pod's IPs; when non-empty the netns must hold one of them. */
  ips: string[];
  procRoot?: string;
  /** Netns inodes never to return (the agent's own, i.e. the node's host netns). */
  excludeInodes?: number[];
}

/** Does a `/proc/<pid>/cgroup` text place the process in the pod with this UID (either driver's spelling)? */
export function cgroupHasPodUid(cgroupText: string, uid: string): boolean {
  const lower = cgroupText.toLowerCase();
  const u = uid.toLowerCase();
  return lower.includes(u) || lower.includes(u.replace(/-/g, '_'));
}

/** Local IPv4 addresses from a `/proc/<pid>/net/fib_trie` text (the `/32 host LOCAL` entries). */
export function localIpv4FromFibTrie(text: string): Set<string> {
  const out = new Set<string>();
  let last: string | undefined;
  for (const line of text.split('\n')) {
    const leaf = /[|+]-- (\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
    if (leaf) {
      last = leaf[1];
      continue;
    }
    if (last !== undefined && /\/32 host LOCAL/.test(line)) out.add(last);
  }
  return out;
}

/** IPv6 addresses from a `/proc/<pid>/net/if_inet6` text, in canonical compressed form. */
export function ipv6FromIfInet6(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const hex = line.trim().split(/\s+/)[0];
    if (!hex || hex.length !== 32) continue;
    const ip = canonicalAddress((hex.match(/.{4}/g) ?? []).join(':'), 'ipv6');
    if (ip !== undefined) out.add(ip);
  }
  return out;
}

/** Canonical form of an IP for comparison: IPv6 in RFC 5952 form (as `ip` prints it), IPv4 as is. */
export function canonicalIp(ip: string): string {
  if (!ip.includes(':')) return ip;
  return canonicalAddress(ip, 'ipv6') ?? ip.toLowerCase();
}

async function startTime(procRoot: string, pid: number): Promise<number> {
  const text = await readFile(`${procRoot}/${pid}/stat`, 'utf8');
  // Field 22 (starttime) counted after the parenthesised comm, which may contain spaces.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(rest[19]);
}

/** The local addresses of the netns a process is in, read through /proc (no setns, no child process). */
export async function netnsAddresses(procRoot: string, pid: number): Promise<Set<string>> {
  const [v4, v6] = await Promise.all([
    readFile(`${procRoot}/${pid}/net/fib_trie`, 'utf8').catch(() => ''),
    readFile(`${procRoot}/${pid}/net/if_inet6`, 'utf8').catch(() => ''),
  ]);
  return new Set([...localIpv4FromFibTrie(v4), ...ipv6FromIfInet6(v6)]);
}

/** Whether `addrs` (canonical, as netnsAddresses gives them) hold one of the pod's IPs. */
export function holdsPodIp(addrs: ReadonlySet<string>, ips: readonly string[]): boolean {
  return ips.some((ip) => addrs.has(canonicalIp(ip)));
}

/**
 * The local addresses of an open netns (canonical), from one RTM_GETADDR dump made inside it
 * (no process needed in the netns, no exec), as netnsAddresses reads them through a process's
 * /proc: IPv4 local addresses and every IPv6 address.
 */
export function netnsLocalAddresses(netns: Netns): Set<string> {
  return new Set(listAddresses(netns).map((a) => canonicalIp(a.address)));
}

/**
 * Finds a pod's network namespace by scanning /proc like istio-cni: a process whose cgroup names
 * the pod UID, not in an excluded (host) netns, the oldest such process, and — when the pod's IPs
 * are known — a netns that holds one of them (a runtime once yielded the host netns here).
 */
export async function findPodNetnsInProc(opts: ProcScanOptions): Promise<ProcNetnsMatch | undefined> {
  const procRoot = opts.procRoot ?? '/proc';
  const exclude = new Set(opts.excludeInodes ?? []);
  const candidates: { pid: number; start: number; ino: number; dev: number }[] = [];
  const entries = await readdir(procRoot);
  await Promise.all(
    entries.map(async (name) => {
      if (!/^\d+$/.test(name)) return;
      const pid = Number(name);
      try {
        const cg = await readFile(`${procRoot}/${pid}/cgroup`, 'utf8');
        if (!cgroupHasPodUid(cg, opts.uid)) return;
        const st = await stat(`${procRoot}/${pid}/ns/net`);
        if (exclude.has(st.ino)) return;
        candidates.push({ pid, start: await startTime(procRoot, pid), ino: st.ino, dev: st.dev });
      } catch {
        // The process exited during the scan.
      }
    }),
  );
  candidates.sort((a, b) => a.start - b.start || a.pid - b.pid);
  const seen = new Set<number>();
  for (const c of candidates) {
    if (seen.has(c.ino)) continue;
    seen.add(c.ino);
    if (opts.ips.length > 0) {
      const addrs = await netnsAddresses(procRoot, c.pid).catch(() => new Set<string>());
      if (!holdsPodIp(addrs, opts.ips)) continue;
    }
    return { pid: c.pid, path: `${procRoot}/${c.pid}/ns/net`, ino: c.ino, dev: c.dev };
  }
  return undefined;
}
