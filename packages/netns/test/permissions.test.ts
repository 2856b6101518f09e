// Without CAP_SYS_ADMIN (setns) or CAP_NET_ADMIN (SO_MARK), calls fail with typed errors, no crash.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestNetns, requireRootAndTools } from './helpers.js';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
let nsA: TestNetns;
let dir: string;
let script: string;

// Runs in the child: each step's outcome as JSON (the error's public fields, or 'ok').
const child = `
const m = await import(process.argv[2]);
const out = {};
const step = async (name, fn) => {
  try { await fn(); out[name] = 'ok'; }
  catch (e) { out[name] = { name: e.name, code: e.code, errno: e.errno, syscall: e.syscall, message: e.message }; }
};
const a = m.openNetns(process.argv[3]);
const here = m.currentNetns();
await step('listenerInA', () => m.createTcpListener({ netns: a, host: '127.0.0.1', port: 0 }));
await step('socketInA', () => m.createTcpSocket({ netns: a, family: 4 }));
await step('listenerHere', () => m.createTcpListener({ netns: here, host: '127.0.0.1', port: 0 }));
await step('markHere', () => m.createTcpListener({ netns: here, host: '127.0.0.1', port: 0, mark: 0x539 }));
await step('transparentHere', () => m.createTcpSocket({ netns: here, family: 4, transparent: true }));
await step('connectHere', async () => {
  const server = await m.listenTcp({ netns: here, host: '127.0.0.1', port: 0 });
  server.on('connection', (s) => { s.on('error', () => {}); s.end('hi'); });
  const socket = await m.connectTcp({ netns: here, family: 4, host: '127.0.0.1', port: server.address().port });
  await new Promise((resolve) => socket.once('data', resolve));
  socket.destroy();
  server.close();
});
const after = m.currentNetns();
out.stillHome = after.sameAs(here);
console.log(JSON.stringify(out));
`;

beforeAll(() => {
  requireRootAndTools('setpriv');
  if (!existsSync(dist)) throw new Error(`permission tests run the built package: ${dist} is missing; run "npm run build -w @weir/netns" first`);
  nsA = new TestNetns('E');
  dir = mkdtempSync(join(tmpdir(), 'weir-perm-'));
  script = join(dir, 'child.mjs');
  writeFileSync(script, child);
});

afterAll(() => {
  nsA?.delete();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Outcome = 'ok' | { name: string; code: string; errno: number; syscall: string; message: string };

function runWithout(caps: string[]): Promise<Record<string, Outcome | boolean>> {
  const drop = caps.map((c) => `-${c}`).join(',');
  const args = ['--bounding-set', drop, '--inh-caps', drop, '--', process.execPath, script, pathToFileURL(dist).href, nsA.path];
  return new Promise((resolve, reject) => {
    execFile('setpriv', args, { encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`child without ${caps.join(',')} failed: ${stderr || err.message}`));
      else resolve(JSON.parse(stdout) as Record<string, Outcome | boolean>);
    });
  });
}

describe('missing capabilities', () => {
  it('without CAP_SYS_ADMIN: entering another netns is ERR_NETNS_PERMISSION (setns/EPERM); the own netns still works', async () => {
    const out = await runWithout(['sys_admin']);
    for (const step of ['listenerInA', 'socketInA']) {
      expect(out[step]).toMatchObject({ name: 'NetnsError', code: 'ERR_NETNS_PERMISSION', errno: 1, syscall: 'setns' });
      expect((out[step] as { message: string }).message).toContain(nsA.path);
    }
    expect(out.listenerHere).toBe('ok');
    expect(out.markHere).toBe('ok');
    expect(out.connectHere).toBe('ok');
    expect(out.stillHome).toBe(true);
  });

  it('without CAP_NET_ADMIN and CAP_NET_RAW: SO_MARK and IP_TRANSPARENT are ERR_NETNS_PERMISSION', async () => {
    const out = await runWithout(['net_admin', 'net_raw']);
    expect(out.listenerInA).toBe('ok');
    expect(out.connectHere).toBe('ok');
    expect(out.markHere).toMatchObject({ code: 'ERR_NETNS_PERMISSION', errno: 1, syscall: 'setsockopt(SO_MARK)' });
    expect(out.transparentHere).toMatchObject({ code: 'ERR_NETNS_PERMISSION', errno: 1, syscall: 'setsockopt(IP_TRANSPARENT)' });
    expect(out.stillHome).toBe(true);
  });
});
