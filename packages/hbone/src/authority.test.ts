import { isIP } from 'node:net';
import { describe, expect, it } from 'vitest';
import { formatAuthority, isIPv4, parseAuthority } from './authority.js';
import { HboneError } from './errors.js';

function thrownBy(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  return undefined;
}

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

  it('isIPv4 accepts exactly what net.isIP calls IPv4', () => {
    const fixed = ['0.0.0.0', '255.255.255.255', '1.2.3.04', '01.2.3.4', '1.2.3.256', '1.2.3', '1.2.3.4.5', '1..2.3', '.1.2.3', '1.2.3.', '1.2.3.4 ', ' 1.2.3.4', '1.2.3.-4', '1.2.3.4\n', '١.2.3.4', '100.200.250.199', '999.1.1.1', '1.2.3.0000', '10.0.0.1', ''];
    // Random strings over the characters that matter, biased towards almost-valid addresses.
    let seed = 7;
    const rand = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
    const chars = '0123456789.....x:';
    const random = Array.from({ length: 20_000 }, () => {
      if (rand(2) === 0) return Array.from({ length: 4 }, () => String(rand(300)).padStart(rand(3) === 0 ? 2 : 1, '0')).join('.');
      return Array.from({ length: rand(17) }, () => chars[rand(chars.length)]).join('');
    });
    const wrong = [...fixed, ...random].filter((s) => isIPv4(s) !== (isIP(s) === 4));
    expect(wrong).toEqual([]);
  });

  it.each(['10.0.0.1:00080', '10.0.0.1:1', '10.0.0.1:65535'])('parses the port of %s as before', (a) => {
    expect(parseAuthority(a)?.port).toBe(Number(a.split(':')[1]));
  });

  it.each(['10.0.0.1:123456', '10.0.0.1:8 ', '10.0.0.1:00000', '10.0.0.1:-1', '10.0.0.1:1e3', '10.0.0.1:0x10'])('rejects the port of %j', (a) => {
    expect(parseAuthority(a)).toBeUndefined();
  });

  it('refuses to format a hostname', () => {
    expect(() => formatAuthority({ host: 'example.com', port: 80 })).toThrow(/not an IP literal/);
  });

  it.each([null, undefined, 10, {}, { length: 8 }, ['1.2.3.4'], Symbol('h')])('refuses to format the non-string host %s with the typed error', (host) => {
    expect(thrownBy(() => formatAuthority({ host, port: 80 } as never))).toMatchObject({ constructor: HboneError, code: 'ERR_HBONE_INVALID_AUTHORITY' });
  });

  it.each([undefined, '80', Symbol('p')])('refuses to format the port %s with the typed error', (port) => {
    expect(thrownBy(() => formatAuthority({ host: '10.0.0.1', port } as never))).toMatchObject({ constructor: HboneError, code: 'ERR_HBONE_INVALID_AUTHORITY' });
  });
});
