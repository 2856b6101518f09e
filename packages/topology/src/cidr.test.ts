import { describe, expect, it } from 'vitest';
import { formatCidr, hostAddress, parseCidr, parseIpv4 } from './cidr.js';

describe('cidr', () => {
  it('parses and formats prefixes and numbers hosts from the network address', () => {
    const cidr = parseCidr('10.244.1.0/24');
    expect(formatCidr(cidr)).toBe('10.244.1.0/24');
    expect(hostAddress(cidr, 1)).toBe('10.244.1.1');
    expect(hostAddress(parseCidr('172.18.0.0/16'), 267)).toBe('172.18.1.11');
  });

  it('rejects malformed input, naming the value', () => {
    expect(() => parseCidr('10.244.1.0')).toThrow(/"10.244.1.0" is not an IPv4 prefix/);
    expect(() => parseCidr('10.244.1.5/24')).toThrow(/host bits set \(network is 10.244.1.0\/24\)/);
    expect(() => parseIpv4('10.256.0.1')).toThrow(/"10.256.0.1" is not an IPv4 address/);
    expect(() => hostAddress(parseCidr('10.0.0.0/30'), 3)).toThrow(/host index 3 is outside 10.0.0.0\/30/);
  });
});
