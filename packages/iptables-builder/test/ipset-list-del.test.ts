// ipsetList (netlink dump) and ipsetDel against the real kernel, checked with the `ipset` binary's
// view both ways: our writes read back by `ipset save`, the binary's writes read back by our dump.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { IpsetNotFoundError, ipsetAdd, ipsetDel, ipsetList } from '../src/ipset-netlink.js';
import type { NetlinkExchange } from '../src/rtnetlink.js';
import { addNetns, delNetns, netlinkAt, requireRootTools, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'ipset']);

describe('ipsetList and ipsetDel over netlink (root, real netns)', () => {
  const name = uniqueName('L');
  let exchange: NetlinkExchange;
  const ipset = (...args: string[]): string => sh('ip', ['netns', 'exec', name, 'ipset', ...args]);
  const saved = (set: string): string[] => ipset('save', set).split('\n').filter((l) => l.startsWith('add ')).sort();
  const asSave = (entries: readonly { set: string; ip: string; comment?: string }[]): string[] =>
    entries.map((e) => `add ${e.set} ${e.ip}${e.comment === undefined ? '' : ` comment "${e.comment}"`}`).sort();

  beforeAll(() => {
    const path = addNetns(name);
    exchange = netlinkAt(path);
    ipset('create', 'p4', 'hash:ip', 'comment');
    ipset('create', 'p6', 'hash:ip', 'family', 'inet6', 'comment');
    ipset('create', 'plain', 'hash:ip');
  });
  afterAll(() => delNetns(name));

  it('lists what the ipset binary added, IPv4 and IPv6, with and without comments, as `ipset save` prints it', async () => {
    ipset('add', 'p4', '10.244.1.7', 'comment', 'uid-a');
    ipset('add', 'p4', '10.244.1.8');
    ipset('add', 'p6', 'fd00:10:244::1:7', 'comment', 'uid-b');
    ipset('add', 'p6', '2001:db8:0:0:1:0:0:1', 'comment', 'uid c');
    ipset('add', 'plain', '192.0.2.1');
    const v4 = await ipsetList(exchange, 'p4');
    expect(v4).toHaveLength(2);
    expect(v4).toEqual(expect.arrayContaining([{ set: 'p4', ip: '10.244.1.7', comment: 'uid-a' }, { set: 'p4', ip: '10.244.1.8' }]));
    const v6 = await ipsetList(exchange, 'p6');
    expect(v6).toHaveLength(2);
    expect(v6).toEqual(expect.arrayContaining([{ set: 'p6', ip: 'fd00:10:244::1:7', comment: 'uid-b' }, { set: 'p6', ip: '2001:db8::1:0:0:1', comment: 'uid c' }]));
    expect(await ipsetList(exchange, 'plain')).toEqual([{ set: 'plain', ip: '192.0.2.1' }]);
    expect(asSave(v4)).toEqual(saved('p4'));
    expect(asSave(v6)).toEqual(saved('p6'));
  });

  it('an empty set is an empty list; a set that does not exist is IpsetNotFoundError', async () => {
    ipset('create', 'empty', 'hash:ip', 'comment');
    expect(await ipsetList(exchange, 'empty')).toEqual([]);
    const err = await ipsetList(exchange, 'no-such-set').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IpsetNotFoundError);
    expect(err).toMatchObject({ code: 'ERR_IPTABLES_IPSET_NOT_FOUND', set: 'no-such-set', message: expect.stringContaining('ipset no-such-set does not exist') });
    await expect(ipsetList(exchange, 'bad name')).rejects.toThrow(/invalid ipset name/);
  });

  it('deletes exactly the entries named, of both families; an absent entry is no error (-exist)', async () => {
    await ipsetDel(exchange, [
      { set: 'p4', ip: '10.244.1.7' },
      { set: 'p6', ip: 'fd00:10:244::1:7' },
      { set: 'p4', ip: '10.244.200.200' },
    ]);
    expect(saved('p4')).toEqual(['add p4 10.244.1.8']);
    expect(saved('p6')).toEqual(['add p6 2001:db8::1:0:0:1 comment "uid c"']);
    expect(await ipsetList(exchange, 'p6')).toEqual([{ set: 'p6', ip: '2001:db8::1:0:0:1', comment: 'uid c' }]);
    await ipsetDel(exchange, [{ set: 'p4', ip: '10.244.1.7' }]);
  });

  it('a refused delete names the set, the address and the error', async () => {
    await expect(ipsetDel(exchange, [{ set: 'no-such-set', ip: '10.0.0.1' }])).rejects.toThrow(/ipset del no-such-set 10\.0\.0\.1 refused over netlink: error 2 \(ENOENT/);
    await expect(ipsetDel(exchange, [{ set: 'p6', ip: '10.0.0.1' }])).rejects.toThrow(/ipset del p6 10\.0\.0\.1 refused over netlink: error 4097 \(IPSET_ERR_PROTOCOL, e\.g\. an address of the other family/);
    await expect(ipsetDel(exchange, [{ set: 'p4', ip: 'not-an-ip' }])).rejects.toThrow(/invalid ipset entry address/);
  });

  it('re-adding an address with another comment replaces the comment (-exist), as a new pod reusing an IP needs', async () => {
    await ipsetAdd(exchange, [{ set: 'p4', ip: '10.244.3.3', comment: 'uid-old' }]);
    await ipsetAdd(exchange, [{ set: 'p4', ip: '10.244.3.3', comment: 'uid-new' }]);
    expect(saved('p4')).toContain('add p4 10.244.3.3 comment "uid-new"');
    expect((await ipsetList(exchange, 'p4')).filter((e) => e.ip === '10.244.3.3')).toEqual([{ set: 'p4', ip: '10.244.3.3', comment: 'uid-new' }]);
  });

  it('lists 1,000 IPv4 and 1,000 IPv6 entries (a dump of many messages) and deletes half of them', async () => {
    ipset('create', 'big4', 'hash:ip', 'comment');
    ipset('create', 'big6', 'hash:ip', 'family', 'inet6', 'comment');
    const v4 = Array.from({ length: 1000 }, (_, i) => ({ set: 'big4', ip: `10.245.${i >> 8}.${i & 255}`, comment: `0b1c2d3e-4f50-6172-8394-${String(i).padStart(12, '0')}` }));
    const v6 = Array.from({ length: 1000 }, (_, i) => ({ set: 'big6', ip: `fd00:245::${(i + 1).toString(16)}`, comment: `uid-v6-${i}` }));
    // The IPv6 half through the binary (our dump must read its writes), the IPv4 half over netlink.
    sh('ip', ['netns', 'exec', name, 'ipset', 'restore', '-exist'], `${v6.map((e) => `add big6 ${e.ip} comment "${e.comment}"`).join('\n')}\n`);
    await ipsetAdd(exchange, v4);

    // The reply is several dump messages (about 60 bytes an entry, a few KiB a message).
    const seen: number[] = [];
    const counting: NetlinkExchange = async (req, n, p) => {
      const r = await exchange(req, n, p);
      seen.push(countMessages(r));
      return r;
    };
    const got4 = await ipsetList(counting, 'big4');
    expect(seen[0]).toBeGreaterThan(3);
    expect(asSave(got4)).toEqual(asSave(v4));
    expect(asSave(got4)).toEqual(saved('big4'));
    const got6 = await ipsetList(exchange, 'big6');
    expect(asSave(got6)).toEqual(asSave(v6));
    expect(asSave(got6)).toEqual(saved('big6'));

    await ipsetDel(exchange, [...v4.filter((_, i) => i % 2 === 0), ...v6.filter((_, i) => i % 2 === 1)]);
    expect(saved('big4')).toEqual(asSave(v4.filter((_, i) => i % 2 === 1)));
    expect(saved('big6')).toEqual(asSave(v6.filter((_, i) => i % 2 === 0)));
    expect(asSave(await ipsetList(exchange, 'big4'))).toEqual(saved('big4'));
  });
});

function countMessages(reply: Uint8Array): number {
  const v = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  let n = 0;
  for (let at = 0; at + 16 <= reply.length; at += (v.getUint32(at, true) + 3) & ~3) n++;
  return n;
}
