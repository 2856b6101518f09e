// The release rehearsal (`npm run release:dry-run`): changesets version every public package and
// write its changelog, and `npm publish --dry-run` accepts each one; the repository stays untouched.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { buildWorkspaces, publicPackages, repoRoot, run } from '../src/workspace.js';

const snapshot = (): string =>
  JSON.stringify({
    changesets: readdirSync(join(repoRoot, '.changeset')).sort(),
    versions: publicPackages().map((p) => [p.name, JSON.parse(readFileSync(join(p.dir, 'package.json'), 'utf8')).version]),
  });

beforeAll(async () => {
  await buildWorkspaces(publicPackages().map((p) => p.name));
});

it('versions every public package from the changesets and npm publish --dry-run accepts them all', async () => {
  const before = snapshot();
  // Packages named in a pending changeset's frontmatter (`"@weir/x": minor`).
  const pending = new Set(
    readdirSync(join(repoRoot, '.changeset'))
      .filter((f) => f.endsWith('.md') && f !== 'README.md')
      .flatMap((f) => [...readFileSync(join(repoRoot, '.changeset', f), 'utf8').matchAll(/^["']?(@weir\/[a-z0-9-]+)["']?:\s*(major|minor|patch)\s*$/gm)].map((m) => m[1]!)),
  );
  expect(pending.size, 'no pending changesets found').toBeGreaterThan(0);
  const r = await run('npm', ['run', '--silent', 'release:dry-run'], { cwd: repoRoot });
  expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
  for (const p of publicPackages()) {
    const line = r.stdout.split('\n').find((l) => l.startsWith(`${p.name} `));
    expect(line, `no publish line for ${p.name} in:\n${r.stdout}`).toBeDefined();
    const m = /^(\S+) (\S+) -> (\S+) changelog=(yes|no) files=(\d+)/.exec(line!);
    expect(m, line).not.toBeNull();
    if (pending.has(p.name)) {
      expect(m![3], `${p.name} has a changeset but was not versioned`).not.toBe(m![2]);
      expect(m![4], `${p.name} has no CHANGELOG.md`).toBe('yes');
    }
    expect(Number(m![5])).toBeGreaterThan(2);
  }
  expect(r.stdout).toContain(`release-dry-run: ${publicPackages().length} packages would publish`);
  expect(snapshot(), 'the repository was modified by the dry run').toBe(before);
});
