import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ipsetAdd } from '../src/ipset-netlink.js';
import type { NetlinkExchange } from '../src/rtnetlink.js';
import { addNetns, delNetns, netlinkAt, requireRootTools, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'ipset']);

describe('ipsetAdd over netlink', () => {
  const name = uniqueName('S');
  let exchange: NetlinkExchange;
  const ipset = (...args: string[]): string => sh('ip', ['netns', 'exec', name, 'ipset', ...args]);
  beforeAll(() => {
    const path = addNetns(name);
    exchange = netlinkAt(path);
    ipset('create', 'probes-v4', 'hash:ip', 'comment');
    ipset('create', 'probes-v6', 'hash:ip', 'family', 'inet6', 'comment');
  });
  afterAll(() => delNetns(name));

  it('adds entries of both families with their comments, as `ipset -exist add` (again: no error)', async () => {
    const entries = [
      { set: 'probes-v4', ip: '10.244.1.7', comment: 'uid-a' },
      { set: 'probes-v6', ip: 'fd00:10:244::1:7', comment: 'uid-b' },
      { set: 'probes-v4', ip: '10.244.1.8' },
    ];
    await ipsetAdd(exchange, entries);
    await ipsetAdd(exchange, entries.slice(0, 1));
    const saved = ipset('save');
    expect(saved).toMatch(/^add probes-v4 10\.244\.1\.7 comment "uid-a"$/m);
    expect(saved).toMatch(/^add probes-v6 fd00:10:244::1:7 comment "uid-b"$/m);
    expect(saved).toMatch(/^add probes-v4 10\.244\.1\.8$/m);
    expect(saved.match(/^add /gm)).toHaveLength(3);
  });

  it('adds a whole node worth of entries at once (more acks than one netlink receive buffer holds)', async () => {
    const entries = Array.from({ length: 1000 }, (_, i) => ({ set: 'probes-v4', ip: `10.245.${i >> 8}.${i & 255}`, comment: `uid-bulk-${i}` }));
    await ipsetAdd(exchange, entries);
    expect(ipset('save').match(/^add probes-v4 10\.245\./gm)).toHaveLength(1000);
  });

  it('a missing set or a wrong-family address is an error naming the entry', async () => {
    await expect(ipsetAdd(exchange, [{ set: 'no-such-set', ip: '10.0.0.1' }])).rejects.toThrow(/ipset add no-such-set 10\.0\.0\.1 refused/);
    await expect(ipsetAdd(exchange, [{ set: 'probes-v6', ip: '10.0.0.1' }])).rejects.toThrow(/ipset add probes-v6 10\.0\.0\.1 refused/);
    await expect(ipsetAdd(exchange, [{ set: 'probes-v4', ip: 'not-an-ip' }])).rejects.toThrow(/invalid ipset entry address/);
  });
});
