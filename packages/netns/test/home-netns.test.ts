// The calling thread's home netns (where it returns after each setns) is cached once per thread.
// The cache must never send a thread to the wrong place: not after another library moved the
// thread, not when its fd was closed behind our back and the number reused, and not in workers.
import { execFile } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { connectTcp, createTcpListener, currentNetns, listenTcp, netlinkExchange, openNetns, socketNetnsId, type Netns } from '../src/index.js';
import { TestNetns, fdCountBackTo, requireRootAndTools, run, stableFdCount } from './helpers.js';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
let nsA: TestNetns;
let nsB: TestNetns;
let home: Netns;
let dir: string;

beforeAll(() => {
  requireRootAndTools('gcc');
  home = currentNetns();
  nsA = new TestNetns('HA');
  nsB = new TestNetns('HB');
  dir = mkdtempSync(join(tmpdir(), 'weir-home-'));
});

afterAll(() => {
  nsA?.delete();
  nsB?.delete();
  home?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Opens `path` as a Netns until one lands on fd number `target` (the lowest free fd is used). */
function openOnto(path: string, target: number): Netns {
  const extra: Netns[] = [];
  try {
    for (let i = 0; i < 256; i++) {
      const ns = openNetns(path);
      if (ns.fd === target) return ns;
      extra.push(ns);
    }
    throw new Error(`could not get fd ${target} for ${path}`);
  } finally {
    for (const ns of extra) ns.close();
  }
}

/** fds of this process open on the host netns, except the Netns handles named. */
function hostNetnsFds(except: Netns[]): number[] {
  const want = `net:[${home.id.ino}]`;
  return readdirSync('/proc/self/fd')
    .map(Number)
    .filter((fd) => !except.some((n) => n.fd === fd))
    .filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === want;
      } catch {
        return false;
      }
    });
}

function listenerNetnsIs(fd: number, ns: Netns): void {
  try {
    expect(socketNetnsId(fd)).toEqual(ns.id);
  } finally {
    closeSync(fd);
  }
}

it('a cached home fd closed behind our back and reused by another netns is not trusted', () => {
  const a = openNetns(nsA.path);
  try {
    listenerNetnsIs(createTcpListener({ netns: a, host: '127.0.0.1', port: 0 }), a);
    const cached = hostNetnsFds([home]);
    expect(cached).toHaveLength(1);
    closeSync(cached[0]!);
    const b = openOnto(nsB.path, cached[0]!);
    try {
      // Trusting the cached number would setns "home" into nsB.
      listenerNetnsIs(createTcpListener({ netns: a, host: '127.0.0.1', port: 0 }), a);
      const now = currentNetns();
      expect(now.sameAs(home)).toBe(true);
      now.close();
      // The stranger's fd is left alone.
      expect(b.closed).toBe(false);
      b.close();
    } finally {
      if (!b.closed) b.close();
    }
    // And the cache is healthy again.
    listenerNetnsIs(createTcpListener({ netns: a, host: '127.0.0.1', port: 0 }), a);
    expect(hostNetnsFds([home])).toHaveLength(1);
  } finally {
    a.close();
  }
});

it('a Netns whose fd was closed behind its back and reused for another netns makes nothing there', async () => {
  const a = openNetns(nsA.path);
  const fd = a.fd;
  closeSync(fd);
  const b = openOnto(nsB.path, fd);
  try {
    expect(() => createTcpListener({ netns: a, host: '127.0.0.1', port: 0 })).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD', errno: 116 }));
    await expect(connectTcp({ netns: a, family: 4, host: '127.0.0.1', port: 9 })).rejects.toMatchObject({ code: 'ERR_NETNS_SOCKET_MISMATCH' });
    expect(() => netlinkExchange(a, 0, new Uint8Array(16), 1)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
    const now = currentNetns();
    expect(now.sameAs(home)).toBe(true);
    now.close();
  } finally {
    b.close();
  }
});

it('follows a thread that another library moved to another netns (home is where the thread is)', async () => {
  if (!existsSync(dist)) throw new Error(`this test runs the built package: ${dist} is missing; run "npm run build -w @weir/netns" first`);
  // A foreign shared library whose constructor setns-es the loading thread: dlopen runs it on
  // the main thread, then Node refuses the non-addon, which is fine.
  const so = join(dir, 'mover.so');
  writeFileSync(join(dir, 'mover.c'), `#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
__attribute__((constructor)) static void move(void) {
  int fd = open(getenv("WEIR_TEST_MOVE_TO"), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) abort();
}
`);
  run('gcc', ['-shared', '-fPIC', '-o', so, join(dir, 'mover.c')]);
  const script = `
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const { closeSync } = await import('node:fs');
const host = n.currentNetns(), a = n.openNetns(${JSON.stringify(nsA.path)}), b = n.openNetns(${JSON.stringify(nsB.path)});
const inA = (fd) => { const ok = n.socketNetnsId(fd).ino === a.id.ino; closeSync(fd); return ok; };
const where = () => { const c = n.currentNetns(); const w = c.sameAs(host) ? 'host' : c.sameAs(b) ? 'B' : 'other'; c.close(); return w; };
const out = { warm: inA(n.createTcpListener({ netns: a, host: '127.0.0.1', port: 0 })), before: where() };
process.env.WEIR_TEST_MOVE_TO = ${JSON.stringify(nsB.path)};
try { process.dlopen({ exports: {} }, ${JSON.stringify(so)}); } catch {}
out.moved = where();
out.listenerInA = inA(n.createTcpListener({ netns: a, host: '127.0.0.1', port: 0 }));
out.after = where();
const lb = n.createTcpListener({ netns: b, host: '127.0.0.1', port: 0 });
out.listenerInB = n.socketNetnsId(lb).ino === b.id.ino; closeSync(lb);
out.last = where();
console.log(JSON.stringify(out));
`;
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 }, (err, so, se) => (err ? reject(new Error(`${err.message}\n${se}`)) : resolve(so)));
  });
  expect(JSON.parse(stdout)).toEqual({ warm: true, before: 'host', moved: 'B', listenerInA: true, after: 'B', listenerInB: true, last: 'B' });
});

it('each worker thread keeps its own home fd, returns home, and closes the fd when it exits', async () => {
  if (!existsSync(dist)) throw new Error(`this test runs the built package: ${dist} is missing; run "npm run build -w @weir/netns" first`);
  const a = openNetns(nsA.path);
  const server = await listenTcp({ netns: a, host: '127.0.0.1', port: 0 });
  server.on('connection', (s) => s.destroy());
  const port = (server.address() as { port: number }).port;
  try {
    // Warm this thread's own cache first, so that only the workers' fds are counted.
    (await connectTcp({ netns: a, family: 4, host: '127.0.0.1', port })).destroy();
    const before = await stableFdCount();
    const code = `
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const { parentPort } = await import('node:worker_threads');
const host = n.currentNetns(), a = n.openNetns(${JSON.stringify(nsA.path)});
let ok = 0;
for (let i = 0; i < 50; i++) {
  const s = await n.connectTcp({ netns: a, family: 4, host: '127.0.0.1', port: ${port} });
  if (n.socketNetnsId(s).ino === a.id.ino) ok++;
  s.destroy();
}
const c = n.currentNetns();
parentPort.postMessage({ ok, home: c.sameAs(host) });
c.close(); host.close(); a.close();
`;
    const results = await Promise.all(
      [0, 1, 2].map(async () => {
        const w = new Worker(code, { eval: true });
        // Listened for from the start: a worker that exits right after its last message has both
        // emitted in one go (its port is drained at exit), before an await could add the listener.
        const exited = new Promise((resolve) => w.once('exit', resolve));
        const msg = await new Promise((resolve, reject) => {
          w.once('message', resolve);
          w.once('error', reject);
        });
        await exited;
        return msg;
      }),
    );
    expect(results).toEqual([0, 1, 2].map(() => ({ ok: 50, home: true })));
    expect(await fdCountBackTo(before)).toBe(before);
    const now = currentNetns();
    expect(now.sameAs(home)).toBe(true);
    now.close();
  } finally {
    await new Promise((resolve) => server.close(resolve));
    a.close();
  }
});
