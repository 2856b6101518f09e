import { describe, expect, it } from 'vitest';
import { formatAuthority, parseAuthority } from './authority.js';

describe('authority', () => {
  it.each([
    ['10.0.0.1:8080', { host: '10.0.0.1', port: 8080 }],
    ['[fd00::1]:80', { host: 'fd00::1', port: 80 }],
    ['[::ffff:10.0.0.1]:1', { host: '::ffff:10.0.0.1', port: 1 }],
  ])('parses %s', (a, t) => {
    expect(parseAuthority(a)).toEqual(t);
    expect(formatAuthority(t)).toBe(a);
  });

  it.each(['example.com:80', 'localhost:80', '10.0.0.1', '10.0.0.1:', '10.0.0.1:0', '10.0.0.1:65536', '10.0.0.1:+80', 'fd00::1:80', '[fd00::1]', '[10.0.0.1]:80', '[fd00::1]80', '10.0.0.1:80/x', '', undefined])(
    'rejects %j',
    (a) => expect(parseAuthority(a)).toBeUndefined(),
  );

  it('refuses to format a hostname', () => {
    expect(() => formatAuthority({ host: 'example.com', port: 80 })).toThrow(/not an IP literal/);
  });
});
