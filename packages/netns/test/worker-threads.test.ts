// The addon works in worker threads, and a worker that ends with sockets still open neither
// crashes nor hangs (its loop must close every handle the addon opened).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, expect, it } from 'vitest';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
// A terminated worker leaves its listening socket's file behind (as any process that exits without closing).
const dir = mkdtempSync(join(tmpdir(), 'weir-wk-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function workerCode(ending: string): string {
  return `
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const { parentPort } = await import('node:worker_threads');
const here = n.currentNetns();
const server = n.listenSeqpacket(${JSON.stringify(join(dir, 'w-'))} + Math.random() + '.sock');
server.on('connection', (s) => s.on('message', (d) => s.send(d)));
const c = await n.connectSeqpacket(server.path);
c.on('error', () => {});
const echoed = new Promise((resolve) => c.once('message', resolve));
await c.send(Buffer.from('ping'));
const tcp = await n.listenTcp({ netns: here, host: '127.0.0.1', port: 0 });
const out = await n.connectTcp({ netns: here, family: 4, host: '127.0.0.1', port: tcp.address().port });
out.on('error', () => {});
parentPort.postMessage(String(await echoed));
${ending}
`;
}

async function runWorker(ending: string, terminate: boolean): Promise<{ message: string; exitCode: number }> {
  const w = new Worker(workerCode(ending), { eval: true, stderr: true });
  let stderr = '';
  w.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const message = await new Promise<string>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  const exited = new Promise<number>((resolve) => w.once('exit', resolve));
  if (terminate) await w.terminate();
  const exitCode = await exited;
  expect(stderr).toBe('');
  return { message, exitCode };
}

it('runs in worker threads, which may be terminated or exit with sockets open', async () => {
  if (!existsSync(dist)) throw new Error(`this test runs the built package: ${dist} is missing; run "npm run build -w @weir/netns" first`);
  for (let i = 0; i < 3; i++) {
    expect(await runWorker('', true)).toEqual({ message: 'ping', exitCode: 1 });
  }
  expect(await runWorker('setTimeout(() => process.exit(0), 20);', false)).toEqual({ message: 'ping', exitCode: 0 });
});
