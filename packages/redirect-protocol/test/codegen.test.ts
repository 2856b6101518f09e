// The committed TypeScript must be exactly what the offline toolchain makes from proto/zds.proto.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const pkgDir = fileURLToPath(new URL('..', import.meta.url));

it('src/gen/zds_pb.ts is up to date with proto/zds.proto (npm run generate)', () => {
  const out = mkdtempSync(join(tmpdir(), 'zds-gen-'));
  try {
    execFileSync('npx', ['--no-install', 'buf', 'generate', '-o', out], { cwd: pkgDir, stdio: 'pipe' });
    const fresh = readFileSync(join(out, 'src/gen/zds_pb.ts'), 'utf8');
    expect(fresh).toBe(readFileSync(join(pkgDir, 'src/gen/zds_pb.ts'), 'utf8'));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}, 60_000);
