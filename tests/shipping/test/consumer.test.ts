// A consumer's view: the packed tarballs of @weir/hbone and @weir/iptables-builder (plus @weir/pki for
// certificates) installed into a fresh project with third-party packages from the registry, and each
// README's example extracted from its fenced code, type-checked against the published types and run
// for real: the HBONE proxy inside a fresh network namespace, the iptables example against a pod netns
// reached under the very path the README names (in a private mount namespace).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readmeExample } from '../src/readme.js';
import { buildWorkspaces, pack, repoRoot, run, runOk, workspacePackages } from '../src/workspace.js';

const project = mkdtempSync(join(tmpdir(), 'weir-consumer-'));
const netnses: string[] = [];
const children: ChildProcess[] = [];
const uniq = `${process.pid % 100000}${Math.floor(Math.random() * 100)}`;

beforeAll(async () => {
  const wanted = ['@weir/hbone', '@weir/iptables-builder', '@weir/pki'];
  await buildWorkspaces(wanted);
  const deps: Record<string, string> = {};
  mkdirSync(join(project, 'tarballs'));
  for (const p of workspacePackages().filter((w) => wanted.includes(w.name))) {
    deps[p.name] = `file:${await pack(p, join(project, 'tarballs'))}`;
  }
  writeFileSync(
    join(project, 'package.json'),
    JSON.stringify({ name: 'weir-consumer', private: true, type: 'module', dependencies: deps, devDependencies: { typescript: '~5.9.3', '@types/node': '^20.19.0' } }, null, 2),
  );
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, outDir: 'out', types: ['node'], skipLibCheck: false } }),
  );
  await runOk('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: project });
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const ns of netnses) await run('ip', ['netns', 'del', ns]);
  rmSync(project, { recursive: true, force: true });
});

/** Writes prelude + README example + postlude to src/<name>.ts, compiles it with tsc, returns the JS path. */
async function compileExample(name: string, readme: string, prelude: string, postlude: string): Promise<string> {
  const { code } = readmeExample(join(repoRoot, readme));
  mkdirSync(join(project, 'src'), { recursive: true });
  writeFileSync(join(project, 'src', `${name}.ts`), `${prelude}\n// ---- ${readme} ----\n${code}\n// ---- end ----\n${postlude}\n`);
  const tsc = await run(join(project, 'node_modules/.bin/tsc'), ['-p', '.'], { cwd: project });
  expect(tsc.code, `the ${readme} example does not type-check against the published package:\n${tsc.stdout}${tsc.stderr}`).toBe(0);
  return join(project, 'out', `${name}.js`);
}

async function netns(tag: string): Promise<string> {
  const ns = `wsh${tag}${uniq}`.slice(0, 15);
  await runOk('ip', ['netns', 'add', ns]);
  netnses.push(ns);
  await runOk('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
  return ns;
}

it('installs from the tarballs with no @weir package fetched from the registry', async () => {
  const r = await runOk('npm', ['ls', '--all', '--json'], { cwd: project });
  const tree = JSON.parse(r.stdout) as { dependencies: Record<string, { resolved?: string }> };
  for (const name of ['@weir/hbone', '@weir/iptables-builder']) expect(tree.dependencies[name]?.resolved).toMatch(/^file:/);
});

it('@weir/hbone: the README proxy runs; a tunnel through its inbound side reaches a local app', async () => {
  const identity = 'spiffe://cluster.local/ns/default/sa/reviews';
  writeFileSync(
    join(project, 'certs.mjs'),
    `import { writeFileSync } from 'node:fs';
import { LocalCa } from '@weir/pki';
const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
const wl = await ca.issueWorkloadCertificate({ identity: ${JSON.stringify(identity)} });
writeFileSync('key.pem', wl.keyPem); writeFileSync('chain.pem', wl.chainPem); writeFileSync('root.pem', wl.rootPem);
`,
  );
  await runOk('node', ['certs.mjs'], { cwd: project });
  const js = await compileExample(
    'hbone-example',
    'packages/hbone/README.md',
    `import { readFileSync as readPem } from 'node:fs';
// What the README leaves to the reader: this workload's key, certificate chain and trust bundle.
const key = readPem('key.pem', 'utf8');
const chainPem = readPem('chain.pem', 'utf8');
const rootPem = readPem('root.pem', 'utf8');`,
    `console.log('EXAMPLE_READY');`,
  );
  const ns = await netns('h');
  const example = spawn('ip', ['netns', 'exec', ns, 'node', js], { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(example);
  let out = '';
  example.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  example.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`the hbone example did not start within 20 s:\n${out}`)), 20_000);
    example.stdout!.on('data', () => out.includes('EXAMPLE_READY') && (clearTimeout(t), resolve()));
    example.once('exit', (code) => (clearTimeout(t), reject(new Error(`the hbone example exited ${code}:\n${out}`))));
  });
  // A client of our own in the same netns: an app on 127.0.0.1, then a tunnel to it via port 15008.
  writeFileSync(
    join(project, 'client.mjs'),
    `import net from 'node:net';
import { readFileSync } from 'node:fs';
import { HboneClient } from '@weir/hbone';
const app = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1');
await new Promise((r) => app.once('listening', r));
const tls = { key: readFileSync('key.pem'), cert: readFileSync('chain.pem'), ca: readFileSync('root.pem') };
const client = new HboneClient({ tls });
const tunnel = await client.connect({ peer: { host: '127.0.0.1', port: 15008 }, target: { host: '127.0.0.1', port: app.address().port }, expectedIdentities: [${JSON.stringify(identity)}] });
tunnel.end('hello through hbone');
let echoed = '';
for await (const chunk of tunnel) echoed += chunk;
console.log(JSON.stringify({ echoed }));
await client.close();
app.close();
`,
  );
  const c = await run('ip', ['netns', 'exec', ns, 'node', 'client.mjs'], { cwd: project, timeoutMs: 30_000 });
  expect(c.code, `${c.stdout}${c.stderr}\nexample output:\n${out}`).toBe(0);
  expect(JSON.parse(c.stdout.trim().split('\n').pop()!)).toEqual({ echoed: 'hello through hbone' });
  example.kill('SIGTERM');
});

it('@weir/iptables-builder: the README example captures a pod netns, then cleans it up', async () => {
  const js = await compileExample(
    'iptables-example',
    'packages/iptables-builder/README.md',
    `// What the README leaves to the reader: a pino-shaped logger.
interface ExampleLogger { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void; debug(o: object, m?: string): void; child(b: object): ExampleLogger }
const logger: ExampleLogger = { info() {}, warn: (o, m) => console.error('WARN', m, JSON.stringify(o)), error() {}, debug() {}, child: () => logger };`,
    `console.log(JSON.stringify({ changed, repaired: repaired.length }));`,
  );
  const ns = await netns('i');
  const path = /netnsExecutor\('([^']+)'\)/.exec(readmeExample(join(repoRoot, 'packages/iptables-builder/README.md')).code)?.[1];
  expect(path, 'the README example names the pod netns path it uses').toBeDefined();
  const hold = join(project, 'pod-netns');
  writeFileSync(hold, '');
  // A private mount namespace: the README's netns path exists there only, and is our fresh netns.
  const script = [
    'set -e',
    `mount --bind /var/run/netns/${ns} ${hold}`,
    `mount -t tmpfs tmpfs ${JSON.stringify(path!.slice(0, path!.lastIndexOf('/')))}`,
    `touch ${JSON.stringify(path)}`,
    `mount --bind ${hold} ${JSON.stringify(path)}`,
    `exec node ${js}`,
  ].join('\n');
  const r = await run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { cwd: project, timeoutMs: 60_000 });
  expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ changed: true, repaired: 0 });
  // cleanup() ran at the end of the example: no ISTIO chain is left in the pod netns.
  const saved = await runOk('ip', ['netns', 'exec', ns, 'sh', '-c', 'iptables-save 2>/dev/null; iptables-legacy-save 2>/dev/null; nft list ruleset 2>/dev/null; true']);
  expect(saved.stdout).not.toMatch(/ISTIO/);
});
