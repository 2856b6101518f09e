import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { tokenFromFile } from './token.js';

it('re-reads the token file on every call and treats a missing file as no token', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'wtok-'));
  try {
    const path = join(dir, 'istio-token');
    const token = tokenFromFile(path);
    expect(await token()).toBeUndefined();
    await writeFile(path, 'first\n');
    expect(await token()).toBe('first');
    await writeFile(path, 'rotated');
    expect(await token()).toBe('rotated');
    await expect(tokenFromFile(dir)()).rejects.toThrow(/EISDIR/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
