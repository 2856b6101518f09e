import { describe, expect, it } from 'vitest';

import { IptablesError } from './errors.js';
import { inpodRouting } from './routing.js';
import { concat } from './netlink-codec.js';
import { missingRouting, readNftGeneration, readRouting, sendRouting, type NetlinkExchange } from './rtnetlink.js';

// The wire format against hand-built kernel replies; the real kernel is in test/netns-applier.test.ts.

function msg(type: number, seq: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + payload.length + ((4 - (payload.length % 4)) % 4));
  const v = new DataView(out.buffer);
  v.setUint32(0, 16 + payload.length, true);
  v.setUint16(4, type, true);
  v.setUint32(8, seq, true);
  out.set(payload, 16);
  return out;
}
function ack(seq: number, errno = 0): Uint8Array {
  const p = new Uint8Array(20);
  new DataView(p.buffer).setInt32(0, -errno, true);
  return msg(2, seq, p);
}
function withAttrs(header: number[], attrs: [number, number][]): Uint8Array {
  const p = new Uint8Array(12 + attrs.length * 8);
  p.set(header);
  const v = new DataView(p.buffer);
  attrs.forEach(([t, value], i) => {
    v.setUint16(12 + i * 8, 8, true);
    v.setUint16(14 + i * 8, t, true);
    v.setUint32(16 + i * 8, value, true);
  });
  return p;
}
const cat = (...parts: Uint8Array[]): Uint8Array => concat(parts);

describe('rtnetlink', () => {
  const routing = inpodRouting({ ipv6: true });

  it('sends one message per change (rule add: CREATE|EXCL, u32 attributes) and returns the refused ones', async () => {
    const sent: Uint8Array[] = [];
    const exchange: NetlinkExchange = (req, n) => {
      sent.push(req);
      expect(n).toBe(4);
      return cat(ack(1), ack(2, 17), ack(3), ack(4));
    };
    const changes = missingRouting({ rules: [], routes: [] }, routing);
    const refused = await sendRouting(exchange, changes);
    expect(refused).toEqual([{ change: changes[1], errno: 17 }]);
    const v = new DataView(sent[0]!.buffer);
    // First message: RTM_NEWRULE, REQUEST|ACK|EXCL|CREATE, AF_INET, FR_ACT_TO_TBL, then priority, fwmark, mask, table.
    expect([v.getUint16(4, true), v.getUint16(6, true), sent[0]![16], sent[0]![23]]).toEqual([32, 0x605, 2, 1]);
    expect([0, 1, 2, 3].map((i) => [v.getUint16(30 + i * 8, true), v.getUint32(32 + i * 8, true)])).toEqual([
      [6, 32764],
      [10, 0x111],
      [16, 0xfff],
      [15, 133],
    ]);
  });

  it('an answer short of one Ack per change is an error, not a silent success', async () => {
    await expect(sendRouting(() => ack(1), missingRouting({ rules: [], routes: [] }, routing))).rejects.toThrow(/acknowledged 1 of 4/);
  });

  it('reads plain fwmark rules and local routes through lo, per family, and skips anything narrower', async () => {
    const rules = cat(
      msg(32, 1, withAttrs([2, 0, 0, 0, 133, 0, 0, 1], [[6, 32764], [10, 0x111], [16, 0xfff], [15, 133]])),
      // from 10.0.0.0/8: not the plain rule
      msg(32, 1, withAttrs([2, 0, 8, 0, 133, 0, 0, 1], [[6, 32764], [10, 0x111], [16, 0xfff], [15, 133]])),
      msg(32, 1, withAttrs([10, 0, 0, 0, 254, 0, 0, 1], [[6, 32766], [15, 254]])),
      msg(3, 1, new Uint8Array(4)),
    );
    const routes = cat(
      msg(24, 2, withAttrs([10, 0, 0, 0, 133, 3, 254, 2], [[15, 133], [4, 1]])),
      msg(24, 2, withAttrs([2, 24, 0, 0, 254, 3, 0, 1], [[15, 254], [4, 2]])),
      msg(3, 2, new Uint8Array(4)),
    );
    const replies = [rules, routes];
    const state = await readRouting(() => replies.shift()!, ['ipv4', 'ipv6']);
    expect(state).toEqual({
      rules: [{ family: 'ipv4', fwmark: 0x111, mask: 0xfff, priority: 32764, table: 133 }],
      routes: [{ family: 'ipv6', destination: '::/0', device: 'lo', table: 133 }],
    });
    expect(missingRouting(state, routing).map((c) => c.op + ('rule' in c ? ` rule ${c.rule.family}` : ` route ${c.route.family}`))).toEqual([
      'replace route ipv4',
      'add rule ipv6',
    ]);
  });

  it('does not take an inverted rule, one with another selector, or one that suppresses its table default route', async () => {
    const rule = [[6, 32764], [10, 0x111], [16, 0xfff], [15, 133], [14, 0xffffffff]] as [number, number][];
    const rules = cat(
      // not fwmark 0x111/0xfff (fib_rule_hdr.flags FIB_RULE_INVERT)
      msg(32, 1, withAttrs([2, 0, 0, 0, 133, 0, 0, 1, 2, 0, 0, 0], rule)),
      // iif "eth" (FRA_IIFNAME)
      msg(32, 1, withAttrs([2, 0, 0, 0, 133, 0, 0, 1], [...rule, [3, 0x00687465]])),
      // suppress_prefixlength 0: the rule would skip table 133's local default route
      msg(32, 1, withAttrs([2, 0, 0, 0, 133, 0, 0, 1], [[6, 32764], [10, 0x111], [16, 0xfff], [15, 133], [14, 0]])),
      // tos 0x10
      msg(32, 1, withAttrs([2, 0, 0, 0x10, 133, 0, 0, 1], rule)),
      msg(3, 1, new Uint8Array(4)),
    );
    const replies = [rules, msg(3, 2, new Uint8Array(4))];
    const state = await readRouting(() => replies.shift()!, ['ipv4']);
    expect(state.rules).toEqual([]);
    // The plain rule with suppress_prefixlength unset (-1, as the kernel reports it) is Weir's.
    const plain = [cat(msg(32, 1, withAttrs([2, 0, 0, 0, 133, 0, 0, 1], rule)), msg(3, 1, new Uint8Array(4))), msg(3, 2, new Uint8Array(4))];
    expect((await readRouting(() => plain.shift()!, ['ipv4'])).rules).toEqual([{ family: 'ipv4', fwmark: 0x111, mask: 0xfff, priority: 32764, table: 133 }]);
  });

  it('refuses a route it cannot express (only local <any> dev lo)', async () => {
    const odd = { rules: [], routes: [{ family: 'ipv4' as const, destination: '10.0.0.0/8', device: 'eth0', table: 7 }] };
    await expect(sendRouting(() => new Uint8Array(), missingRouting({ rules: [], routes: [] }, odd))).rejects.toThrow(IptablesError);
  });

  it('reads the nftables generation (big-endian NFTA_GEN_ID) over NETLINK_NETFILTER', async () => {
    const gen = new Uint8Array(4 + 8);
    const v = new DataView(gen.buffer);
    v.setUint16(4, 8, true);
    v.setUint16(6, 1, true);
    v.setUint32(8, 0x01020304, false);
    let protocol: number | undefined;
    const g = await readNftGeneration((_req, _n, p) => {
      protocol = p;
      return cat(msg((10 << 8) | 15, 1, gen), ack(1));
    });
    expect([g, protocol]).toEqual([0x01020304, 12]);
  });
});
