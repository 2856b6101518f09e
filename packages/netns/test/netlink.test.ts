// netlinkExchange: the socket lives in the target netns (it sees that netns's links and changes
// its rules, not the host's), the calling thread is back home afterwards, and a thread that cannot
// get back aborts the process loudly instead of running on in the wrong netns.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NETLINK_ROUTE, currentNetns, listAddresses, netlinkExchange, openNetns, type Netns } from '../src/index.js';
import { TestNetns, countFds, requireRootAndTools, run, uniqueName } from './helpers.js';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const RTM_GETLINK = 18;
const RTM_NEWROUTE = 24;
const RTM_GETROUTE = 26;
const RTM_NEWRULE = 32;
const RTM_DELRULE = 33;
const IFLA_IFNAME = 3;

function message(type: number, flags: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length, true);
  v.setUint16(4, type, true);
  v.setUint16(6, flags | 1, true);
  v.setUint32(8, 1, true);
  out.set(body, 16);
  return out;
}

/** Interface names in an RTM_GETLINK dump. */
function linkNames(reply: Buffer): string[] {
  const names: string[] = [];
  for (let at = 0; at + 16 <= reply.length; ) {
    const len = reply.readUInt32LE(at);
    if (reply.readUInt16LE(at + 4) === 16 /* RTM_NEWLINK */) {
      for (let a = at + 32; a + 4 <= at + len; ) {
        const alen = reply.readUInt16LE(a);
        if (alen < 4) break;
        if (reply.readUInt16LE(a + 2) === IFLA_IFNAME) names.push(reply.toString('utf8', a + 4, a + alen).replace(/\0+$/, ''));
        a += (alen + 3) & ~3;
      }
    }
    at += (len + 3) & ~3;
  }
  return names;
}

/** fib_rule_hdr (AF_INET, action FR_ACT_TO_TBL) + FRA_PRIORITY, FRA_FWMARK, FRA_TABLE. */
function ruleBody(priority: number, mark: number, table: number): Uint8Array {
  const body = new Uint8Array(12 + 24);
  body.set([2, 0, 0, 0, 0, 0, 0, 1]);
  const v = new DataView(body.buffer);
  [
    [6, priority],
    [10, mark],
    [15, table],
  ].forEach(([type, value], i) => {
    v.setUint16(12 + i * 8, 8, true);
    v.setUint16(14 + i * 8, type!, true);
    v.setUint32(16 + i * 8, value!, true);
  });
  return body;
}

/** The messages of a netlink reply: type and, for NLMSG_ERROR, the (negative) errno. */
function replyMessages(reply: Buffer): { type: number; error?: number }[] {
  const out: { type: number; error?: number }[] = [];
  for (let at = 0; at + 16 <= reply.length; ) {
    const len = reply.readUInt32LE(at);
    const type = reply.readUInt16LE(at + 4);
    out.push(type === 2 ? { type, error: reply.readInt32LE(at + 16) } : { type });
    at += (len + 3) & ~3;
  }
  return out;
}

const dumpLinks = (ns: Netns): string[] => linkNames(netlinkExchange(ns, NETLINK_ROUTE, message(RTM_GETLINK, 0x300, new Uint8Array(16)), 1));

describe('netlinkExchange', () => {
  let t: TestNetns;
  let ns: Netns;
  const dummy = uniqueName('nl');
  const peer = uniqueName('np');

  beforeAll(() => {
    requireRootAndTools('unshare', 'nsenter');
    t = new TestNetns('nl');
    t.ip('link', 'add', dummy, 'type', 'veth', 'peer', 'name', peer);
    ns = openNetns(t.path);
  });
  afterAll(() => {
    ns?.close();
    t?.delete();
  });

  it('talks to the target netns and leaves the calling thread where it was', () => {
    const home = currentNetns();
    try {
      expect(dumpLinks(ns).sort()).toEqual(['lo', dummy, peer].sort());
      expect(currentNetns().sameAs(home)).toBe(true);
      expect(dumpLinks(home)).not.toContain(dummy);
    } finally {
      home.close();
    }
  });

  it('changes the target netns only: a fwmark rule acked there, absent from the host', () => {
    const before = countFds();
    // fib_rule_hdr (AF_INET, action FR_ACT_TO_TBL) + FRA_PRIORITY 31000, FRA_FWMARK 0x4242, FRA_TABLE 142
    const body = new Uint8Array(12 + 24);
    body.set([2, 0, 0, 0, 142, 0, 0, 1]);
    const v = new DataView(body.buffer);
    [
      [6, 31000],
      [10, 0x4242],
      [15, 142],
    ].forEach(([type, value], i) => {
      v.setUint16(12 + i * 8, 8, true);
      v.setUint16(14 + i * 8, type!, true);
      v.setUint32(16 + i * 8, value!, true);
    });
    const reply = netlinkExchange(ns, NETLINK_ROUTE, message(RTM_NEWRULE, 0x4 | 0x400 | 0x200, body), 1);
    expect(reply.readUInt16LE(4)).toBe(2); // NLMSG_ERROR, i.e. the ack
    expect(reply.readInt32LE(16)).toBe(0);
    expect(t.ip('-4', 'rule', 'show')).toMatch(/^31000:\s+from all fwmark 0x4242 lookup 142/m);
    expect(run('ip', ['-4', 'rule', 'show'])).not.toMatch(/fwmark 0x4242/);
    // The same rule again: the kernel's refusal comes back as data (EEXIST), not as a throw.
    const again = netlinkExchange(ns, NETLINK_ROUTE, message(RTM_NEWRULE, 0x4 | 0x400 | 0x200, body), 1);
    expect(again.readInt32LE(16)).toBe(-17);
    expect(countFds()).toBe(before);
  });

  it('takes 1,000 acked messages in one exchange: every ack arrives (no ENOBUFS on the queued acks)', () => {
    // 500 rules added and the same 500 deleted: 1,000 acks, all queued while the kernel handles the send.
    const adds = Array.from({ length: 500 }, (_, i) => message(RTM_NEWRULE, 0x4 | 0x400 | 0x200, ruleBody(20000 + i, 0x1000 + i, 150)));
    const dels = Array.from({ length: 500 }, (_, i) => message(RTM_DELRULE, 0x4, ruleBody(20000 + i, 0x1000 + i, 150)));
    const all = [...adds, ...dels];
    const request = new Uint8Array(all.reduce((n, m) => n + m.length, 0));
    all.reduce((at, m) => (request.set(m, at), at + m.length), 0);
    const reply = replyMessages(netlinkExchange(ns, NETLINK_ROUTE, request, 1000));
    expect(reply).toHaveLength(1000);
    expect(reply.filter((m) => m.type === 2 && m.error === 0)).toHaveLength(1000);
    expect(t.ip('-4', 'rule', 'show')).not.toMatch(/lookup 150/);
  });

  it('receives a 2,000-route dump whole in one exchange', () => {
    // rtmsg (AF_INET, dst_len 32, table RT_TABLE_UNSPEC, proto boot, scope link, unicast) + RTA_DST,
    // RTA_OIF (lo), RTA_TABLE 151: routes 10.77.x.y/32 in a scratch table.
    const routes = Array.from({ length: 2000 }, (_, i) => {
      const body = new Uint8Array(12 + 24);
      body.set([2, 32, 0, 0, 0, 3, 253, 1]);
      const v = new DataView(body.buffer);
      v.setUint16(12, 8, true);
      v.setUint16(14, 1, true);
      body.set([10, 77, i >> 8, i & 0xff], 16);
      v.setUint16(20, 8, true);
      v.setUint16(22, 4, true);
      v.setUint32(24, 1, true);
      v.setUint16(28, 8, true);
      v.setUint16(30, 15, true);
      v.setUint32(32, 151, true);
      return message(RTM_NEWROUTE, 0x4 | 0x400 | 0x200, body);
    });
    const request = new Uint8Array(routes.reduce((n, m) => n + m.length, 0));
    routes.reduce((at, m) => (request.set(m, at), at + m.length), 0);
    t.ip('link', 'set', 'lo', 'up');
    const acks = replyMessages(netlinkExchange(ns, NETLINK_ROUTE, request, 2000));
    expect(acks.filter((m) => m.error === 0)).toHaveLength(2000);
    // The dump (IPv4, all tables) is far over 64 KiB; the kernel splits it into datagrams of at
    // most 32 KiB, and the exchange reads them all up to NLMSG_DONE.
    const dump = netlinkExchange(ns, NETLINK_ROUTE, message(RTM_GETROUTE, 0x300, new Uint8Array([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), 1);
    expect(dump.length).toBeGreaterThan(64 * 1024);
    const msgs = replyMessages(dump);
    expect(msgs.at(-1)?.type).toBe(3); // NLMSG_DONE
    expect(msgs.filter((m) => m.type === RTM_NEWROUTE).length).toBeGreaterThanOrEqual(2000);
    t.ip('route', 'flush', 'table', '151');
  });

  it('bounds the whole exchange when the caller expects more replies than the kernel sends', () => {
    const started = Date.now();
    expect(() => netlinkExchange(ns, NETLINK_ROUTE, message(RTM_GETLINK, 0x300, new Uint8Array(16)), 3)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_TIMEOUT', errno: 110 }));
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(1900);
    expect(took).toBeLessThan(3500);
  });

  it('rejects bad arguments and a closed netns with stable codes', () => {
    expect(() => netlinkExchange(ns, NETLINK_ROUTE, new Uint8Array(4), 1)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_INVALID_ARGUMENT' }));
    expect(() => netlinkExchange(ns, NETLINK_ROUTE, message(RTM_GETLINK, 0x300, new Uint8Array(16)), 0)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_INVALID_ARGUMENT' }));
    const closed = openNetns(t.path);
    closed.close();
    expect(() => dumpLinks(closed)).toThrow(expect.objectContaining({ code: 'ERR_NETNS_BAD_FD' }));
  });

  it('aborts the process, saying why, when the thread cannot setns back home', async () => {
    // A process in a user namespace U that owns netns T, while still in the host netns (owned by
    // the initial user namespace): it may enter T, but not return to the host netns.
    const owner: ChildProcess = spawn('unshare', ['-U', '-r', '-n', 'sleep', '60'], { stdio: 'ignore' });
    try {
      const pid = owner.pid!;
      // Until unshare has made both namespaces (a fixed 300 ms could end first on a loaded machine,
      // and the check below would then run in the host's namespaces).
      const mine = (ns: string): string => readlinkSync(`/proc/self/ns/${ns}`);
      const its = (ns: string): string => {
        try {
          return readlinkSync(`/proc/${pid}/ns/${ns}`);
        } catch {
          return mine(ns);
        }
      };
      const end = Date.now() + 10_000;
      while ((its('user') === mine('user') || its('net') === mine('net')) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(its('user'), 'unshare made its user namespace').not.toBe(mine('user'));
      expect(its('net'), 'unshare made its netns').not.toBe(mine('net'));
      const code = `
const n = await import(${JSON.stringify(pathToFileURL(dist).href)});
const req = new Uint8Array(32); const v = new DataView(req.buffer); v.setUint32(0, 32, true); v.setUint16(4, ${RTM_GETLINK}, true); v.setUint16(6, 0x301, true);
n.netlinkExchange(n.openNetns('/proc/${pid}/ns/net'), n.NETLINK_ROUTE, req, 1);
console.log('STILL RUNNING');
`;
      const r = spawnSync('nsenter', [`--user=/proc/${pid}/ns/user`, '--', process.execPath, '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
      expect(r.stdout).not.toMatch(/STILL RUNNING/);
      expect(r.signal).toBe('SIGABRT');
      expect(r.stderr).toMatch(/FATAL: setns back to the original network namespace failed/);
    } finally {
      owner.kill();
    }
  });
});

describe('listAddresses', () => {
  let t: TestNetns | undefined;
  let ns: Netns | undefined;

  beforeAll(() => {
    requireRootAndTools();
    t = new TestNetns('la');
    // Both ends of a veth pair in the one netns, each with an address of its own.
    const a = uniqueName('la-a').slice(0, 15);
    const b = uniqueName('la-b').slice(0, 15);
    t.ip('link', 'add', a, 'type', 'veth', 'peer', 'name', b);
    t.ip('link', 'set', a, 'up');
    t.ip('link', 'set', b, 'up');
    t.ip('addr', 'add', '10.77.0.5/24', 'dev', a);
    t.ip('addr', 'add', '10.77.1.1', 'peer', '10.77.1.2', 'dev', b);
    t.ip('-6', 'addr', 'add', 'fd00:0:0:7::5/64', 'dev', a, 'nodad');
    ns = openNetns(t.path);
  });

  afterAll(() => {
    ns?.close();
    t?.delete();
  });

  it("lists the netns's own addresses, both families, with scope, prefix and interface", () => {
    const found = listAddresses(ns!);
    const by = (address: string) => found.find((f) => f.address === address);
    expect(by('127.0.0.1')).toMatchObject({ family: 4, scope: 254, prefixLength: 8 });
    expect(by('10.77.0.5')).toMatchObject({ family: 4, scope: 0, prefixLength: 24 });
    // Point-to-point: the local address, not the peer's.
    expect(by('10.77.1.1')).toMatchObject({ family: 4, scope: 0 });
    expect(by('10.77.1.2')).toBeUndefined();
    expect(by('fd00:0:0:7::5')).toMatchObject({ family: 6, scope: 0, prefixLength: 64 });
    expect(by('::1')).toMatchObject({ family: 6, scope: 254 });
    expect(found.some((f) => f.family === 6 && f.scope === 253 && f.address.startsWith('fe80::'))).toBe(true);
    const ifindex = Number(t!.ip('-o', 'link', 'show', 'lo').split(':')[0]);
    expect(by('127.0.0.1')?.ifindex).toBe(ifindex);
    // Nothing of the host's.
    const host = currentNetns();
    try {
      expect(listAddresses(host).some((f) => f.address === '10.77.0.5')).toBe(false);
    } finally {
      host.close();
    }
  });
});
