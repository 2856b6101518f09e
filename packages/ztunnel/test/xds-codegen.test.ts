// The committed TypeScript under src/xds/gen must be exactly what the offline toolchain (buf +
// protoc-gen-es, buf.gen.yaml) makes from proto/.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const pkgDir = fileURLToPath(new URL('..', import.meta.url));

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
}

it('src/xds/gen is up to date with proto/ (npx buf generate)', () => {
  const out = mkdtempSync(join(tmpdir(), 'xds-gen-'));
  try {
    execFileSync('npx', ['--no-install', 'buf', 'generate', '-o', out], { cwd: pkgDir, stdio: 'pipe' });
    const freshDir = join(out, 'src/xds/gen');
    const committedDir = join(pkgDir, 'src/xds/gen');
    const fresh = files(freshDir).map((f) => relative(freshDir, f)).sort();
    expect(fresh).toEqual(files(committedDir).map((f) => relative(committedDir, f)).sort());
    for (const f of fresh) expect(readFileSync(join(freshDir, f), 'utf8'), f).toBe(readFileSync(join(committedDir, f), 'utf8'));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}, 60_000);
