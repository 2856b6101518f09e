import { describe, expect, it } from 'vitest';
import * as der from './der.js';

describe('der', () => {
  it('encodes OIDs with multi-byte arcs and long lengths as X.690 does', () => {
    expect(der.oid('1.2.840.10045.4.3.2').toString('hex')).toBe('06082a8648ce3d040302');
    const long = der.octetString(Buffer.alloc(300));
    expect(long.subarray(0, 4).toString('hex')).toBe('0482012c');
    expect(der.readElement(long).content.length).toBe(300);
  });

  it('keeps INTEGERs positive and minimal', () => {
    expect(der.unsignedInteger(Buffer.from([0x80])).toString('hex')).toBe('02020080');
    expect(der.unsignedInteger(Buffer.from([0, 0, 0x7f])).toString('hex')).toBe('02017f');
  });

  it('writes UTCTime through 2049 and GeneralizedTime after, and reads both back', () => {
    const a = new Date('2049-12-31T23:59:59.900Z');
    const b = new Date('2050-01-01T00:00:00Z');
    expect(der.time(a)[0]).toBe(0x17);
    expect(der.time(b)[0]).toBe(0x18);
    expect(der.readTime(der.readElement(der.time(a))).toISOString()).toBe('2049-12-31T23:59:59.000Z');
    expect(der.readTime(der.readElement(der.time(b))).toISOString()).toBe('2050-01-01T00:00:00.000Z');
  });

  it('refuses truncated input with the offset at fault', () => {
    expect(() => der.readElement(Buffer.from([0x30, 0x05, 0x01]))).toThrow(/offset 0 runs past the end/);
  });
});
