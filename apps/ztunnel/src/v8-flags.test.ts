import { describe, expect, it } from 'vitest';
import { DEFAULT_V8_FLAGS, V8FlagsError, v8Flags } from './v8-flags.js';

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
