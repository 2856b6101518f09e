#!/usr/bin/env node
// The release, rehearsed: in a temporary copy of the repository (the repo itself is never modified),
// `changeset version` applies the pending changesets (versions, CHANGELOG.md files), then
// `npm publish --dry-run` runs for every public @weir/* package. Exits non-zero on the first failure.
//
//   npm run release:dry-run            (from the repo root; packages must be built: npm run build)
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function sh(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } });
  if (r.status !== 0) {
    process.stderr.write(`release-dry-run: ${cmd} ${args.join(' ')} (in ${cwd}) exited ${r.status}\n${r.stdout}${r.stderr}`);
    process.exit(1);
  }
  return r;
}

const copy = mkdtempSync(join(tmpdir(), 'weir-release-'));
try {
  // Tracked and not-ignored files as they are in the working tree, plus the built dist/ and native
  // build outputs that npm would pack; node_modules is shared through a symlink (read only here).
  const files = sh('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], repo).stdout.split('\0').filter(Boolean);
  for (const f of files) if (existsSync(join(repo, f))) cpSync(join(repo, f), join(copy, f), { recursive: true });
  const publicDirs = [];
  for (const top of ['packages', 'apps']) {
    for (const d of readdirSync(join(repo, top))) {
      const pj = join(repo, top, d, 'package.json');
      if (!existsSync(pj)) continue;
      for (const out of ['dist', 'build/Release']) {
        if (existsSync(join(repo, top, d, out))) cpSync(join(repo, top, d, out), join(copy, top, d, out), { recursive: true });
      }
      const m = JSON.parse(readFileSync(pj, 'utf8'));
      if (!m.private && String(m.name).startsWith('@weir/')) publicDirs.push(join(top, d));
    }
  }
  symlinkSync(join(repo, 'node_modules'), join(copy, 'node_modules'), 'dir');

  const before = Object.fromEntries(publicDirs.map((d) => [d, JSON.parse(readFileSync(join(copy, d, 'package.json'), 'utf8')).version]));
  sh(join(repo, 'node_modules/.bin/changeset'), ['version'], copy);
  const pending = readdirSync(join(copy, '.changeset')).filter((f) => f.endsWith('.md') && f !== 'README.md');
  if (pending.length > 0) {
    process.stderr.write(`release-dry-run: changeset version left changesets behind: ${pending.join(', ')}\n`);
    process.exit(1);
  }
  for (const d of publicDirs) {
    const m = JSON.parse(readFileSync(join(copy, d, 'package.json'), 'utf8'));
    const changelog = existsSync(join(copy, d, 'CHANGELOG.md'));
    // --tag: npm refuses a prerelease (0.x from 0.0.0 is fine) without one; the dry run must not care.
    const r = sh('npm', ['publish', '--dry-run', '--json', '--access', 'public', '--tag', 'dry-run'], join(copy, d));
    const out = r.stdout.trim() ? JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) : {};
    const info = out[m.name] ?? out;
    process.stdout.write(`${m.name} ${before[d]} -> ${m.version} changelog=${changelog ? 'yes' : 'no'} files=${info.entryCount ?? info.files?.length ?? '?'} size=${info.size ?? '?'}\n`);
  }
  process.stdout.write(`release-dry-run: ${publicDirs.length} packages would publish\n`);
} finally {
  rmSync(copy, { recursive: true, force: true });
}
