import { describe, expect, it } from 'vitest';
import { newTraceparent } from './traceparent.js';

describe('newTraceparent', () => {
  it('gives version 00, a 16-byte trace id and an 8-byte span id, not sampled, different every time (across pool refills)', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const t = newTraceparent();
      expect(t).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
      seen.add(t.slice(3, 35));
      seen.add(t.slice(36, 52));
    }
    expect(seen.size).toBe(2000);
  });
});
