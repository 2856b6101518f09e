import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const main = join(dirname(fileURLToPath(import.meta.url)), '../dist/main.js');
const run = promisify(execFile);

describe('weir-ztunnel', () => {
  it('refuses to start on a bad value, naming each bad variable', async () => {
    const err = await run(process.execPath, [main], {
      env: { PATH: process.env.PATH ?? '', PACKET_MARK: 'x', INPOD_PORT_REUSE: 'sometimes' },
    }).then(
      () => expect.unreachable('started with a bad config'),
      (e: { code: number; stderr: string }) => e,
    );
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/^weir-ztunnel: invalid configuration: PACKET_MARK="x": /m);
    expect(err.stderr).toMatch(/^weir-ztunnel: invalid configuration: INPOD_PORT_REUSE="sometimes": expected true or false$/m);
  });
});
