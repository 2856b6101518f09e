import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../dist/main.js', import.meta.url));
const run = promisify(execFile);

describe('the built weirctl binary', () => {
  // Each run starts a Node process: seconds on a loaded machine.
  it('has a node shebang and prints rules to stdout', { timeout: 30_000 }, async () => {
    expect(readFileSync(bin, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
    const { stdout } = await run(bin, ['rules', '--mode', 'redirect']);
    expect(stdout).toContain('-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008');
  });

  it('exits 2 with one line for a bad flag', { timeout: 30_000 }, async () => {
    const error = await run(bin, ['rules', '--format', 'yaml']).then(
      () => undefined,
      (e: unknown) => e as { code: number; stderr: string; stdout: string },
    );
    expect(error?.code).toBe(2);
    expect(error?.stdout).toBe('');
    expect(error?.stderr).toMatch(/^weirctl rules: --format: .*"yaml"\)\n$/);
    const typo = await run(bin, ['sandbox', 'up', '--node', '3']).then(
      () => undefined,
      (e: unknown) => e as { code: number; stderr: string },
    );
    expect(typo?.code).toBe(2);
    expect(typo?.stderr).toBe('weirctl sandbox up: unknown flag --node (did you mean --nodes?)\n');
  });
});
