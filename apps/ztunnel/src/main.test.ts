import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ENV_NAMES } from './config.js';
import { ENV_HELP } from './usage.js';

const main = join(dirname(fileURLToPath(import.meta.url)), '../dist/main.js');
const run = promisify(execFile);

/** The environment of a ztunnel that starts here: JSON logs, no node agent yet (its socket is missing), servers on free ports. */
function startEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? '',
    LOG_FORMAT: 'json',
    INPOD_UDS: `/tmp/weir-ztunnel-test-${process.pid}/missing.sock`,
    WEIR_ADMIN_ADDR: '127.0.0.1:0',
    WEIR_METRICS_ADDR: '127.0.0.1:0',
    WEIR_READINESS_ADDR: '127.0.0.1:0',
    CONNECTION_TERMINATION_DEADLINE: '100ms',
    ...extra,
  };
}

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
  }, 30_000);

  it('refuses a WEIR_V8_FLAGS value that is not a list of V8 flags, before loading anything', async () => {
    const err = await run(process.execPath, [main], { env: { PATH: process.env.PATH ?? '', WEIR_V8_FLAGS: '--max-lazy rm' } }).then(
      () => expect.unreachable('started with bad V8 flags'),
      (e: { code: number; stderr: string }) => e,
    );
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/^weir-ztunnel: invalid configuration: WEIR_V8_FLAGS="--max-lazy rm": "rm" is not of the form --name or --name=value/m);
  }, 30_000);

  it('logs JSON with LOG_FORMAT=json and exits 0 after draining on SIGTERM', async () => {
    const child = spawn(process.execPath, [main, 'proxy', 'ztunnel'], {
      env: startEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let comm: string | undefined;
    child.stdout.on('data', (d: Buffer) => {
      out += String(d);
      if (out.includes('"ztunnel started"') && comm === undefined) {
        comm = readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim();
        child.kill('SIGTERM');
      }
    });
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    expect(code).toBe(0);
    const records = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { level: string; msg: string; config?: Record<string, string> });
    expect(records[0]).toMatchObject({ level: 'info', msg: 'effective configuration', config: { inpod_enabled: 'true', inpod_mark: '1337' } });
    expect(records.map((r) => r.msg)).toContain('shutdown complete');
    expect(comm).toBe('ztunnel'); // as `ss -p` shows Istio's
  }, 30_000);

  it('takes the HBONE buffer budget from WEIR_HBONE_BUFFER_BUDGET / WEIR_HBONE_SESSION_BUFFER_BUDGET (its limit metric shows it)', async () => {
    const child = spawn(process.execPath, [main], {
      env: startEnv({ WEIR_HBONE_BUFFER_BUDGET: '96Mi', WEIR_HBONE_SESSION_BUFFER_BUDGET: '8Mi' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const records: { msg: string; component?: string; address?: string; config?: Record<string, string> }[] = [];
      let buf = '';
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          buf += String(d);
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            records.push(JSON.parse(buf.slice(0, nl)) as (typeof records)[number]);
            buf = buf.slice(nl + 1);
            if (records.at(-1)!.msg === 'ztunnel started') resolve();
          }
        });
        child.once('exit', (code) => reject(new Error(`weir-ztunnel exited (${code}) before it started`)));
      });
      expect(records[0]?.config).toMatchObject({ hbone_buffer_budget: '96Mi', hbone_session_buffer_budget: '8Mi' });
      const metrics = records.find((r) => r.component === 'metrics' && r.address !== undefined)?.address;
      expect(metrics).toBeDefined();
      const text = await (await fetch(`http://${metrics}/metrics`)).text();
      expect(text).toMatch(new RegExp(`^weir_hbone_buffer_budget_bytes ${96 * 1024 * 1024}$`, 'm'));
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  }, 30_000);

  it('--help lists every variable it reads; an unexpected argument is refused, not taken as a start', async () => {
    const { stdout } = await run(process.execPath, [main, '--help'], { env: { PATH: process.env.PATH ?? '' } });
    for (const name of ENV_NAMES) expect(stdout).toMatch(new RegExp(`^  ${name} +\\S`, 'm'));
    expect(Object.keys(ENV_HELP).sort()).toEqual([...ENV_NAMES].sort());
    const err = await run(process.execPath, [main, 'run'], { env: { PATH: process.env.PATH ?? '' } }).then(
      () => expect.unreachable('started on an unexpected argument'),
      (e: { code: number; stderr: string }) => e,
    );
    expect(err.code).toBe(2);
    expect(err.stderr).toBe('weir-ztunnel: unexpected argument "run": it takes none (configuration is by environment, see --help)\n');
  }, 30_000);
});
