import { setFlagsFromString } from 'node:v8';
import { describe, expect, it } from 'vitest';
import { AGENT_V8_FLAGS } from './v8-flags.js';

describe('agent V8 flags', () => {
  it('compile a function to baseline (Sparkplug) code on its first call once imported', () => {
    expect(AGENT_V8_FLAGS).toEqual(['--always-sparkplug']);
    // Only to ask V8 which tier runs a function (natives syntax is read when a function is parsed).
    setFlagsFromString('--allow-natives-syntax');
    const tier = new Function('f', 'return [%ActiveTierIsSparkplug(f), %ActiveTierIsIgnition(f)]') as (f: unknown) => [boolean, boolean];
    setFlagsFromString('--no-allow-natives-syntax');
    const fresh = new Function('a', 'return a * 3 + 1') as (a: number) => number;
    expect(fresh(2)).toBe(7);
    expect(tier(fresh)).toEqual([true, false]);
  });
});
