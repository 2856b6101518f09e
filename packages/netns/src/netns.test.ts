import { closeSync, openSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NetnsError, adoptNetnsFd, currentNetns, openNetns, openNetnsOfPid } from './index.js';

const dir = mkdtempSync(join(tmpdir(), 'weir-netns-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(NetnsError);
    return (e as NetnsError).code;
  }
  return undefined;
}

describe('openNetns', () => {
  it('opens the current netns by /proc/self/ns/net and gives its identity', () => {
    const a = openNetns('/proc/self/ns/net');
    const b = currentNetns();
    try {
      expect(a.fd).toBeGreaterThan(2);
      expect(a.id.ino).toBeGreaterThan(0);
      expect(a.sameAs(b)).toBe(true);
      expect(a.sameAs(b.id)).toBe(true);
      expect(a.path).toBe('/proc/self/ns/net');
    } finally {
      a.close();
      b.close();
    }
    expect(a.closed).toBe(true);
    a.close();
  });

  it('rejects a nonexistent path with ERR_NETNS_NOT_FOUND naming the path', () => {
    let err: NetnsError | undefined;
    try {
      openNetns(join(dir, 'nope'));
    } catch (e) {
      err = e as NetnsError;
    }
    expect(err?.code).toBe('ERR_NETNS_NOT_FOUND');
    expect(err?.errno).toBe(2);
    expect(err?.message).toContain(join(dir, 'nope'));
  });

  it('rejects a regular file and another namespace type with ERR_NETNS_NOT_A_NETNS', () => {
    const file = join(dir, 'regular');
    writeFileSync(file, 'x');
    expect(codeOf(() => openNetns(file))).toBe('ERR_NETNS_NOT_A_NETNS');
    expect(() => openNetns(file)).toThrow(/regular file, st_mode=0100644/);
    expect(codeOf(() => openNetns('/proc/self/ns/mnt'))).toBe('ERR_NETNS_NOT_A_NETNS');
    expect(() => openNetns('/proc/self/ns/mnt')).toThrow(/a mnt namespace/);
    expect(codeOf(() => openNetns(dir))).toBe('ERR_NETNS_NOT_A_NETNS');
  });

  it('opens a process\'s netns by pid', () => {
    const byPid = openNetnsOfPid(process.pid);
    const cur = currentNetns();
    expect(byPid.sameAs(cur)).toBe(true);
    expect(byPid.path).toBe(`/proc/${process.pid}/ns/net`);
    byPid.close();
    cur.close();
    expect(codeOf(() => openNetnsOfPid(0))).toBe('ERR_NETNS_INVALID_ARGUMENT');
    expect(codeOf(() => openNetnsOfPid(2 ** 22 + 12345))).toBe('ERR_NETNS_NOT_FOUND');
  });

  it('rejects an empty path with ERR_NETNS_INVALID_ARGUMENT', () => {
    expect(codeOf(() => openNetns(''))).toBe('ERR_NETNS_INVALID_ARGUMENT');
  });
});

describe('adoptNetnsFd', () => {
  it('takes ownership of a netns fd', () => {
    const fd = openSync('/proc/self/ns/net', 'r');
    const ns = adoptNetnsFd(fd);
    const cur = currentNetns();
    expect(ns.fd).toBe(fd);
    expect(ns.sameAs(cur)).toBe(true);
    expect(ns.path).toBeUndefined();
    ns.close();
    cur.close();
    expect(() => closeSync(fd)).toThrow(/EBADF/);
  });

  it('closes a non-netns fd and throws ERR_NETNS_NOT_A_NETNS', () => {
    const fd = openSync('/proc/self/ns/uts', 'r');
    expect(codeOf(() => adoptNetnsFd(fd))).toBe('ERR_NETNS_NOT_A_NETNS');
    expect(() => closeSync(fd)).toThrow(/EBADF/);
  });

  it('reports an fd closed behind the Netns\'s back on close() as ERR_NETNS_BAD_FD', () => {
    const ns = openNetns('/proc/self/ns/net');
    closeSync(ns.fd);
    expect(codeOf(() => ns.close())).toBe('ERR_NETNS_BAD_FD');
    expect(ns.closed).toBe(true);
    ns.close();
  });

  it('rejects a closed fd and a negative fd with ERR_NETNS_BAD_FD', () => {
    const fd = openSync('/proc/self/ns/net', 'r');
    closeSync(fd);
    expect(codeOf(() => adoptNetnsFd(fd))).toBe('ERR_NETNS_BAD_FD');
    expect(codeOf(() => adoptNetnsFd(-1))).toBe('ERR_NETNS_BAD_FD');
  });
});
