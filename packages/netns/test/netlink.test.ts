// netlinkExchange: the socket lives in the target netns (it sees that netns's links and changes
// its rules, not the host's), the calling thread is back home afterwards, and a thread that cannot
// get back aborts the process loudly instead of running on in the wrong netns.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NETLINK_ROUTE, currentNetns, netlinkExchange, openNetns, type Netns } from '../src/index.js';
import { TestNetns, countFds, requireRootAndTools, run, uniqueName } from './helpers.js';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const RTM_GETLINK = 18;
const RTM_NEWRULE = 32;
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
      await new Promise((r) => setTimeout(r, 300));
      const pid = owner.pid!;
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
