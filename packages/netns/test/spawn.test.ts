// spawnInNetns and the sysctl helpers, in real namespaces: the child runs in the netns it was
// given, the calling thread is back home after every call (also after a failed one), output,
// input, exit codes and signals come back, and sysctls change in that netns only.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetnsError, openNetns, readSysctls, spawnInNetns, writeSysctls, type Netns } from '../src/index.js';
import { native } from '../src/native.js';
import { TestNetns, countFds, fdCountBackTo, requireRootAndTools, stableFdCount, uniqueName } from './helpers.js';

let nsA: TestNetns;
let nsB: TestNetns;
let a: Netns;
let b: Netns;
let linkA: string;
const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
/** This process's fds that belong to a spawned child: its pidfd and output memfds. */
const childFds = (): string[] =>
  readdirSync('/proc/self/fd')
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return '';
      }
    })
    .filter((l) => /memfd:weir-|\[pidfd\]/.test(l));
/** Children of this process (running or zombie) whose command is `comm`. */
function childrenNamed(comm: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const [, name, rest] = /^\d+ \((.*)\) (.*)$/s.exec(stat) ?? [];
      if (name === comm && Number(rest?.split(' ')[1]) === process.pid) out.push(`${pid} ${rest?.split(' ')[0] ?? ''}`);
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}
const home = (): string => readlinkSync('/proc/thread-self/ns/net');
let homeId = '';

beforeAll(() => {
  requireRootAndTools('prlimit', 'strace');
  if (!existsSync(dist)) throw new Error(`some tests run the built package in a child node: ${dist} is missing; run "npm run build -w @weir/netns" first`);
  homeId = home();
  nsA = new TestNetns('SA');
  nsB = new TestNetns('SB');
  linkA = uniqueName('dA');
  // Both ends of a veth pair in A: links only A has.
  nsA.ip('link', 'add', linkA, 'type', 'veth', 'peer', 'name', uniqueName('dB'));
  a = openNetns(nsA.path);
  b = openNetns(nsB.path);
});

afterAll(() => {
  a?.close();
  b?.close();
  nsA?.delete();
  nsB?.delete();
});

describe('spawnInNetns', () => {
  it('runs the program inside the given netns: it sees that netns links, and the thread is back home', async () => {
    const inA = await spawnInNetns(a, 'ip', ['-o', 'link', 'show']);
    const inB = await spawnInNetns(b, 'ip', ['-o', 'link', 'show']);
    expect(home()).toBe(homeId);
    expect(inA).toMatchObject({ code: 0, signal: null });
    expect(inA.stdout.toString()).toContain(linkA);
    expect(inB.stdout.toString()).not.toContain(linkA);
    // Its netns is the very namespace of the handle (same nsfs inode).
    const ns = await spawnInNetns(a, 'readlink', ['/proc/self/ns/net']);
    expect(ns.stdout.toString().trim()).toBe(`net:[${a.id.ino}]`);
    expect(home()).toBe(homeId);
  });

  it('feeds stdin and hands back stdout, stderr and the exit code', async () => {
    const input = `line one\n${'x'.repeat(200_000)}\nlast, no newline`;
    const r = await spawnInNetns(a, 'sh', ['-c', 'cat; echo to-err >&2; exit 7'], { input });
    expect(r.code).toBe(7);
    expect(r.stdout.toString()).toBe(input);
    expect(r.stderr.toString()).toBe('to-err\n');
    const none = await spawnInNetns(a, 'cat', []);
    expect(none).toMatchObject({ code: 0 });
    expect(none.stdout.length).toBe(0);
  });

  it('takes a string or a Uint8Array as input; anything else is refused, natively too, never read as no input', async () => {
    const bytes = new Uint8Array(Buffer.from('--abc--')).subarray(2, 5);
    expect((await spawnInNetns(a, 'cat', [], { input: bytes })).stdout.toString()).toBe('abc');
    expect((await spawnInNetns(a, 'cat', [], { input: Buffer.from('buf') })).stdout.toString()).toBe('buf');
    const before = countFds();
    for (const input of [new DataView(new ArrayBuffer(4)), new ArrayBuffer(4), new Uint16Array(2), 42]) {
      await expect(spawnInNetns(a, 'cat', [], { input: input as unknown as Uint8Array })).rejects.toMatchObject({
        code: 'ERR_NETNS_INVALID_ARGUMENT',
        message: expect.stringMatching(/^input of cat must be a string or a Uint8Array \(Buffer\), got (DataView|ArrayBuffer|Uint16Array|number)$/),
      });
    }
    for (const input of [new DataView(new ArrayBuffer(4)), new Uint16Array(2), 'text']) {
      expect(() => native.spawnInNetns(a.fd, 'cat', ['cat'], input as unknown as Uint8Array, a.id)).toThrow(TypeError);
    }
    expect(countFds()).toBe(before);
    expect(childrenNamed('cat')).toEqual([]);
  });

  it('starts the child with default signal dispositions and nothing blocked (Node ignores SIGPIPE)', async () => {
    const r = await spawnInNetns(a, 'grep', ['-E', '^Sig(Ign|Blk):', '/proc/self/status']);
    const mask = (name: string): bigint => BigInt(`0x${new RegExp(`^${name}:\\s+([0-9a-f]+)$`, 'm').exec(r.stdout.toString())?.[1] ?? 'ff'}`);
    expect(mask('SigBlk')).toBe(0n);
    // Signals 1-31 (bits 0-30); glibc keeps its two internal ones (32, 33) ignored in a posix_spawn child.
    expect(mask('SigIgn') & 0x7fffffffn).toBe(0n);
    const killed = await spawnInNetns(a, 'sh', ['-c', 'kill -TERM $$']);
    expect(killed).toMatchObject({ code: null, signal: 'SIGTERM' });
  });

  it('runs many at once, each in its own netns, and leaks no fd', async () => {
    const before = countFds();
    const runs = await Promise.all(Array.from({ length: 20 }, (_, i) => spawnInNetns(i % 2 ? a : b, 'ip', ['-o', 'link', 'show'])));
    runs.forEach((r, i) => expect(r.stdout.toString().includes(linkA)).toBe(i % 2 === 1));
    expect(countFds()).toBe(before);
    expect(home()).toBe(homeId);
  });

  it('the child gets stdin, stdout and stderr only, not fds the agent holds without O_CLOEXEC', () => {
    // Node opens every fd O_CLOEXEC (and sets it on low inherited ones): a child node gets fd 100
    // without it from bash (its fdinfo shows).
    const script = `
import { readFileSync } from 'node:fs';
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const ns = n.openNetns(${JSON.stringify(nsA.path)});
const flags = parseInt(/^flags:\\s+(\\d+)$/m.exec(readFileSync('/proc/self/fdinfo/100', 'utf8'))[1], 8);
const r = await n.spawnInNetns(ns, 'ls', ['/proc/self/fd']);
console.log(JSON.stringify({ cloexec: (flags & 0o2000000) !== 0, fds: r.stdout.toString().split('\\n').filter(Boolean) }));
`;
    const stdout = execFileSync('bash', ['-c', 'exec "$0" --input-type=module -e "$1" 100</dev/null', process.execPath, script], { encoding: 'utf8' });
    // 3 is ls's own listing of the directory.
    expect(JSON.parse(stdout)).toEqual({ cloexec: false, fds: ['0', '1', '2', '3'] });
  });

  it('a program that cannot be started rejects, and the thread is back home', async () => {
    await expect(spawnInNetns(a, 'weir-no-such-program', [])).rejects.toMatchObject({ code: 'ERR_NETNS_NOT_FOUND', message: expect.stringMatching(/weir-no-such-program/) });
    expect(home()).toBe(homeId);
  });

  it('a closed handle, or an fd that no longer names its netns, starts nothing', async () => {
    const c = openNetns(nsA.path);
    c.close();
    await expect(spawnInNetns(c, 'true', [])).rejects.toThrow(NetnsError);
    // The handle's fd number reused by another netns: ESTALE, never a child in the wrong netns.
    const d = openNetns(nsA.path);
    const fd = d.fd;
    d.close();
    const other = openNetns(nsB.path);
    try {
      expect(other.fd).toBe(fd);
      await expect(spawnInNetns(d, 'true', [])).rejects.toThrow(/closed/);
      const forged = Object.create(d, { checkedFd: { value: () => fd } }) as Netns;
      await expect(spawnInNetns(forged, 'true', [])).rejects.toMatchObject({ code: 'ERR_NETNS_BAD_FD' });
    } finally {
      other.close();
    }
    expect(home()).toBe(homeId);
  });
});

describe('spawnInNetns without a pidfd, and when waiting fails', () => {
  it('probes pidfd_open once (works here); where it fails, rejects ERR_NETNS_UNSUPPORTED_PLATFORM before spawning', () => {
    expect(native.pidfdSupport()).toBe(0);
    const dir = mkdtempSync(join(tmpdir(), 'weir-pidfd-'));
    try {
      const marker = join(dir, 'ran');
      const script = `
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const ns = n.openNetns(${JSON.stringify(nsA.path)});
const out = [];
for (let i = 0; i < 3; i++) {
  const t = Date.now();
  try { await n.spawnInNetns(ns, 'touch', [${JSON.stringify(marker)}]); out.push('resolved'); }
  catch (e) { out.push({ code: e.code, sysCode: e.sysCode, message: e.message, ms: Date.now() - t }); }
}
console.log(JSON.stringify(out));
`;
      // strace makes every pidfd_open of the child node fail as on Linux < 5.3, and counts them.
      const trace = join(dir, 'trace');
      const stdout = execFileSync('strace', ['-f', '-qq', '-o', trace, '-e', 'trace=pidfd_open', '-e', 'inject=pidfd_open:error=ENOSYS', process.execPath, '--input-type=module', '-e', script], {
        encoding: 'utf8',
      });
      const out = JSON.parse(stdout) as Record<string, unknown>[];
      expect(out).toHaveLength(3);
      for (const r of out) {
        expect(r).toMatchObject({ code: 'ERR_NETNS_UNSUPPORTED_PLATFORM', sysCode: 'ENOSYS', message: expect.stringMatching(/spawnInNetns needs pidfd_open \(Linux >= 5\.3/) });
        expect(r['ms']).toBeLessThan(1000);
      }
      expect(existsSync(marker)).toBe(false);
      expect(readFileSync(trace, 'utf8').match(/pidfd_open\(/g)).toHaveLength(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a poller that cannot be made, or a failed poll, kills and reaps the child and closes its fds', async () => {
    const real = native.Poller;
    const before = countFds();
    try {
      native.Poller = class {
        constructor() {
          throw new Error('injected: no poller');
        }
      } as unknown as typeof native.Poller;
      await expect(spawnInNetns(a, 'sleep', ['30'])).rejects.toThrow(/waiting for sleep \(pid \d+\).*injected: no poller/);
      expect(childFds()).toEqual([]);
      expect(childrenNamed('sleep')).toEqual([]);
      native.Poller = class {
        constructor(_fd: number, callback: (status: number, events: number) => void) {
          setImmediate(() => callback(-9, 0));
        }
        start(): void {}
        stop(): void {}
        close(): void {}
      } as unknown as typeof native.Poller;
      await expect(spawnInNetns(a, 'sleep', ['30'])).rejects.toMatchObject({ code: 'ERR_NETNS_SYSCALL', message: expect.stringMatching(/poll failed \(-9\)/) });
    } finally {
      native.Poller = real;
    }
    expect(childFds()).toEqual([]);
    expect(childrenNamed('sleep')).toEqual([]);
    expect(countFds()).toBe(before);
    expect(await spawnInNetns(a, 'true', [])).toMatchObject({ code: 0 });
  });

  it('a worker terminated while its child runs leaves no zombie and no fd', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'weir-wkspawn-'));
    const pidFile = join(dir, 'pid');
    const before = await stableFdCount();
    const w = new Worker(
      `
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const ns = n.openNetns(${JSON.stringify(nsA.path)});
n.spawnInNetns(ns, 'sh', ['-c', 'echo $$ > ${pidFile}.tmp && mv ${pidFile}.tmp ${pidFile} && exec sleep 30']).catch(() => {});
ns.close(); // the child is started: only its own fds stay open
`,
      { eval: true, stderr: true },
    );
    let stderr = '';
    w.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number>((resolve) => w.once('exit', resolve));
    try {
      let pid = '';
      for (let i = 0; i < 200 && !pid; i++) {
        await sleep(25);
        if (existsSync(pidFile)) pid = readFileSync(pidFile, 'utf8').trim();
      }
      expect(pid).toMatch(/^\d+$/);
      // Running, ours, with its pidfd and memfds open in this process.
      expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(new RegExp(`^PPid:\\s+${process.pid}$`, 'm'));
      expect(childFds()).toHaveLength(3);
      await w.terminate();
      expect(await exited).toBe(1);
      expect(existsSync(`/proc/${pid}/status`)).toBe(false);
      expect(childFds()).toEqual([]);
      expect(await fdCountBackTo(before)).toBe(before);
      expect(stderr).toBe('');
    } finally {
      await w.terminate();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('readSysctls / writeSysctls', () => {
  const hostMigrate = (): string => readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'utf8').trim();

  it('read and write the netns own values, not the host one', () => {
    const hostBefore = hostMigrate();
    expect(writeSysctls(a, { 'net.ipv4.tcp_migrate_req': '1' })).toEqual([]);
    expect(readSysctls(a, ['net.ipv4.tcp_migrate_req']).get('net.ipv4.tcp_migrate_req')).toBe('1');
    expect(nsA.exec('cat', ['/proc/sys/net/ipv4/tcp_migrate_req']).trim()).toBe('1');
    expect(readSysctls(b, ['net.ipv4.tcp_migrate_req']).get('net.ipv4.tcp_migrate_req')).toBe('0');
    expect(hostMigrate()).toBe(hostBefore);
    expect(home()).toBe(homeId);
  });

  it('a * component stands for each entry there (the netns own interfaces); absent keys are left out', () => {
    const got = readSysctls(a, ['net.ipv6.conf.*.disable_ipv6', 'net.weir.no_such_key']);
    expect([...got.keys()]).toEqual(expect.arrayContaining(['net.ipv6.conf.all.disable_ipv6', 'net.ipv6.conf.lo.disable_ipv6', `net.ipv6.conf.${linkA}.disable_ipv6`]));
    expect(readSysctls(b, ['net.ipv6.conf.*.disable_ipv6']).has(`net.ipv6.conf.${linkA}.disable_ipv6`)).toBe(false);
    expect(got.has('net.weir.no_such_key')).toBe(false);
  });

  it('a key the kernel lacks is skipped and named; a refused write throws; bad keys are refused', () => {
    expect(writeSysctls(a, { 'net.weir.no_such_key': '1', 'net.ipv4.tcp_migrate_req': '0' })).toEqual(['net.weir.no_such_key']);
    expect(readSysctls(a, ['net.ipv4.tcp_migrate_req']).get('net.ipv4.tcp_migrate_req')).toBe('0');
    expect(() => writeSysctls(a, { 'net.ipv4.tcp_migrate_req': 'not-a-number' })).toThrow(/net\.ipv4\.tcp_migrate_req/);
    expect(() => readSysctls(a, ['../../etc/passwd'])).toThrow(expect.objectContaining({ code: 'ERR_NETNS_INVALID_ARGUMENT' }) as Error);
    expect(() => writeSysctls(a, { 'net.ipv6.conf.*.disable_ipv6': '1' })).toThrow(/invalid sysctl key/);
    expect(home()).toBe(homeId);
  });

  it('a read failing for another reason than absence throws, naming the path and errno', () => {
    // route.flush is write-only (0200): EACCES even for root, which used to read as "absent".
    expect(() => readSysctls(a, ['net.ipv4.tcp_migrate_req', 'net.ipv4.route.flush'])).toThrow(
      expect.objectContaining({ code: 'ERR_NETNS_PERMISSION', sysCode: 'EACCES', message: expect.stringMatching(/open\(\/proc\/sys\/net\/ipv4\/route\/flush\)/) }) as Error,
    );
    expect(home()).toBe(homeId);
  });

  it('with fds exhausted, a * key throws ERR_NETNS_TOO_MANY_FILES instead of an empty map (IPv6 "off")', () => {
    // In a child node with a small RLIMIT_NOFILE: exhausting this process's fds would break vitest.
    const script = `
import { closeSync, openSync } from 'node:fs';
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const ns = n.openNetns(${JSON.stringify(nsA.path)});
const whole = [...n.readSysctls(ns, ['net.ipv6.conf.*.disable_ipv6']).keys()].length;
const held = [];
try { for (;;) held.push(openSync('/dev/null', 'r')); } catch (e) { if (e.code !== 'EMFILE') throw e; }
let out;
try { out = { whole, got: [...n.readSysctls(ns, ['net.ipv6.conf.*.disable_ipv6'])] }; }
catch (e) { out = { whole, code: e.code, sysCode: e.sysCode, message: e.message }; }
for (const fd of held) closeSync(fd);
console.log(JSON.stringify(out));
`;
    const out = JSON.parse(execFileSync('prlimit', ['--nofile=200:200', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' })) as Record<string, unknown>;
    expect(out).toMatchObject({ code: 'ERR_NETNS_TOO_MANY_FILES', sysCode: 'EMFILE', message: expect.stringContaining('/proc/sys/net/ipv6/conf') });
    expect(out['whole']).toBeGreaterThanOrEqual(4);
  });
});
