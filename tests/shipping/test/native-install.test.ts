// @weir/netns is the one native package: installing its tarball compiles the addon from source on a
// machine with a compiler (no prebuilt download), and fails with one clear message on one without.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { buildWorkspaces, pack, run, workspacePackages } from '../src/workspace.js';

const work = mkdtempSync(join(tmpdir(), 'weir-native-'));
let tarball: string;

beforeAll(async () => {
  await buildWorkspaces(['@weir/netns']);
  tarball = await pack(workspacePackages().find((p) => p.name === '@weir/netns')!, work);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function project(name: string): string {
  const dir = join(work, name);
  mkdirSync(dir);
  // npm 11 runs install scripts only for packages the project allows.
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, private: true, type: 'module', dependencies: { '@weir/netns': `file:${tarball}` }, allowScripts: { '@weir/netns': true } }));
  return dir;
}

it('builds the addon from source on install and the package loads', async () => {
  const dir = project('with-compiler');
  const r = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: dir });
  expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  expect(readdirSync(join(dir, 'node_modules/@weir/netns/build/Release'))).toContain('weir_netns.node');
  const load = await run('node', ['--input-type=module', '-e', "const m = await import('@weir/netns'); console.log(Object.keys(m).length > 3 ? 'loaded' : 'empty')"], { cwd: dir });
  expect(load.stdout.trim(), load.stderr).toBe('loaded');
});

it('without a C++ compiler, install fails with one clear line naming what is missing', async () => {
  const dir = project('no-compiler');
  // A PATH with everything the host has except compilers and make.
  const bin = join(work, 'bin-no-cc');
  mkdirSync(bin);
  const compilers = /^(make|gmake|cc|c\+\+|gcc|g\+\+|clang|clang\+\+|x86_64-linux-gnu-.*|gcc-\d+|g\+\+-\d+|cpp|cpp-\d+)$/;
  for (const d of ['/usr/local/bin', '/usr/bin', '/bin']) {
    for (const f of readdirSync(d)) {
      if (compilers.test(f)) continue;
      try {
        symlinkSync(join(d, f), join(bin, f));
      } catch {
        // first directory wins, as in PATH
      }
    }
  }
  const r = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: dir, env: { ...process.env, PATH: bin, CC: '', CXX: '' } });
  expect(r.code).not.toBe(0);
  const out = `${r.stdout}${r.stderr}`;
  // The package's own message, e.g. "@weir/netns: cannot build the native addon: no C++ compiler
  // (c++/g++) or make found; install build-essential and python3, then reinstall".
  expect(out, `install output without a compiler:\n${out.slice(-3000)}`).toMatch(/@weir\/netns: .*(compiler|build-essential)/i);
});
