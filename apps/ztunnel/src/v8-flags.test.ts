import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { DEFAULT_V8_FLAGS, STARTUP_INTERRUPT_BUDGET, V8_INTERRUPT_BUDGET, V8FlagsError, startupV8Flags, v8Flags } from './v8-flags.js';

const run = promisify(execFile);

describe('v8Flags', () => {
  it('gives the defaults when WEIR_V8_FLAGS is unset, none when it is empty, else its tokens', () => {
    expect(v8Flags(undefined)).toEqual(DEFAULT_V8_FLAGS.split(' '));
    expect(v8Flags('')).toEqual([]);
    expect(v8Flags('  --max-lazy   --semi-space-growth-factor=2 ')).toEqual(['--max-lazy', '--semi-space-growth-factor=2']);
  });

  it('refuses what is not a flag, naming it', () => {
    expect(() => v8Flags('--ok nope')).toThrow(V8FlagsError);
    expect(() => v8Flags('--ok nope')).toThrow(/"nope" is not of the form --name or --name=value/);
  });

  it('refuses flags that abort V8 when set in a running process, whatever their spelling', () => {
    for (const f of ['--single-threaded-gc', '--single_threaded', '--no-parallel-marking']) {
      expect(() => v8Flags(`--semi-space-growth-factor=1 ${f}`)).toThrow(/aborts V8 at its next full GC/);
    }
    expect(v8Flags('--no-parallel-scavenge --no-concurrent-marking')).toEqual(['--no-parallel-scavenge', '--no-concurrent-marking']);
  });
});

describe('DEFAULT_V8_FLAGS', () => {
  it('runs scavenges on the JS thread alone, set in a running process as main.ts sets them, through minor and full GCs', async () => {
    expect(v8Flags(undefined)).toContain('--no-parallel-scavenge');
    // A child Node sets the defaults on itself after its heap exists, then collects: a flag V8 refuses at
    // that point aborts the process (see ABORTING_FLAGS), which this would show as a non-zero exit.
    const script = [
      "const v8 = require('node:v8');",
      `for (const f of ${JSON.stringify(v8Flags(undefined))}) v8.setFlagsFromString(f);`,
      'let keep = [];',
      'for (let i = 0; i < 200000; i++) { keep.push({ i }); if (keep.length > 5000) keep = []; }',
      "globalThis.gc({ type: 'minor' });",
      'globalThis.gc();',
      "process.stdout.write('ok');",
    ].join('\n');
    const { stdout } = await run(process.execPath, ['--expose-gc', '-e', script]);
    expect(stdout).toBe('ok');
  });
});

describe('startupV8Flags', () => {
  it('raises the interrupt budget while starting and gives V8 its own back once started', () => {
    expect(STARTUP_INTERRUPT_BUDGET).toBeGreaterThan(V8_INTERRUPT_BUDGET);
    expect(startupV8Flags(v8Flags(undefined))).toEqual({ starting: [`--interrupt-budget=${STARTUP_INTERRUPT_BUDGET}`], started: ['--interrupt-budget=67584'] });
  });

  it('leaves the budget alone when WEIR_V8_FLAGS sets one, whatever its spelling', () => {
    for (const f of ['--interrupt-budget=1000', '--interrupt_budget=1000']) expect(startupV8Flags(v8Flags(f))).toEqual({ starting: [], started: [] });
    expect(startupV8Flags(v8Flags('--interrupt-budget-for-feedback-allocation=100')).starting).toHaveLength(1);
  });
});
