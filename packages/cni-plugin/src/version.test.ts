import { describe, expect, it } from 'vitest';
import { CniPluginError } from './errors.js';
import { compareVersions, convertResult } from './version.js';

describe('convertResult', () => {
  const v1 = {
    cniVersion: '1.0.0',
    interfaces: [{ name: 'eth0', mac: '0a:58:0a:f4:01:05', sandbox: '/var/run/netns/x' }],
    ips: [{ address: '10.244.1.5/24', gateway: '10.244.1.1', interface: 0 }, { address: 'fd00::5/64', interface: 0 }],
    routes: [{ dst: '0.0.0.0/0' }],
    dns: {},
  };

  it('adds and drops the per-IP version across 1.0', () => {
    const old = convertResult(v1, '0.4.0');
    expect(old['cniVersion']).toBe('0.4.0');
    expect(old['ips']).toEqual([
      { version: '4', address: '10.244.1.5/24', gateway: '10.244.1.1', interface: 0 },
      { version: '6', address: 'fd00::5/64', interface: 0 },
    ]);
    expect(convertResult(old, '1.1.0')).toEqual({ ...v1, cniVersion: '1.1.0' });
  });

  it('leaves everything but cniVersion alone within a family and refuses unknown versions', () => {
    expect(convertResult(v1, '1.1.0')).toEqual({ ...v1, cniVersion: '1.1.0' });
    expect(() => convertResult({ ...v1, cniVersion: '0.2.0' }, '1.0.0')).toThrow(CniPluginError);
  });

  it('compares versions numerically', () => {
    expect(compareVersions('0.10.0', '0.4.0')).toBeGreaterThan(0);
    expect(compareVersions('1.1.0', '1.1.0')).toBe(0);
  });
});
