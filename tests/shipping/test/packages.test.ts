// Every published @weir/* package packs cleanly and passes publint and arethetypeswrong, checked on the
// real `npm pack` tarball (what npm would publish), not on the workspace directory.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { publint } from 'publint';
import { formatMessage } from 'publint/utils';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildWorkspaces, pack, publicPackages, repoRoot, run, runOk } from '../src/workspace.js';

const packages = publicPackages();
const dest = mkdtempSync(join(tmpdir(), 'weir-pack-'));
const tarballs = new Map<string, string>();

beforeAll(async () => {
  await buildWorkspaces(packages.map((p) => p.name));
  for (const p of packages) tarballs.set(p.name, await pack(p, dest));
});
afterAll(() => rmSync(dest, { recursive: true, force: true }));

async function tarList(tarball: string): Promise<string[]> {
  const r = await runOk('tar', ['-tzf', tarball]);
  return r.stdout.split('\n').filter(Boolean).map((f) => f.replace(/^package\//, ''));
}

it('finds the packages that go to npm', () => {
  expect(packages.map((p) => p.name)).toEqual(expect.arrayContaining(['@weir/hbone', '@weir/iptables-builder', '@weir/netns']));
});

describe.each(packages.map((p) => [p.name, p] as const))('%s', (name, pkg) => {
  it('packs only its runtime files, with the entry point and its types', async () => {
    const files = await tarList(tarballs.get(name)!);
    expect(files).toContain('package.json');
    expect(files).toContain('README.md');
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/index.d.ts');
    // Tests, sources and build configuration stay out of the tarball.
    const stray = files.filter((f) => /(^|\/)(test|src)\/|\.test\.(js|d\.ts)$|^tsconfig|^vitest\.config/.test(f));
    expect(stray, `files that should not be published in ${name}`).toEqual([]);
    expect(pkg.manifest.license, `${name} has no license field`).toBeTruthy();
  });

  it('passes publint (no errors, no warnings)', async () => {
    const { messages, pkg: manifest } = await publint({ pack: { tarball: (await import('node:fs')).readFileSync(tarballs.get(name)!).buffer as ArrayBuffer }, level: 'warning', strict: true });
    const problems = messages.map((m) => `${m.type}: ${formatMessage(m, manifest) ?? m.code}`);
    expect(problems, `publint findings for ${name}`).toEqual([]);
  });

  it('passes arethetypeswrong for ESM consumers (node16 ESM, bundler)', async () => {
    const attw = join(repoRoot, 'node_modules/.bin/attw');
    const r = await run(attw, [tarballs.get(name)!, '--profile', 'esm-only', '--format', 'table-flipped', '--no-color'], { env: { ...process.env, FORCE_COLOR: '0' } });
    expect(r.code, `attw ${name}:\n${r.stdout}${r.stderr}`).toBe(0);
  });
});
