import { afterAll, describe, expect, it } from 'vitest';

import { desiredFromFamily, reconcileRestore } from '../src/diff.js';
import type { Family } from '../src/model.js';
import { NetnsApplier, type NetnsSpec } from '../src/netns-applier.js';
import { attributes } from '../src/netlink-codec.js';
import { NftInstallReplay } from '../src/nft-replay.js';
import type { NetlinkExchange } from '../src/rtnetlink.js';
import { inpodRules } from '../src/presets.js';
import { inpodRouting } from '../src/routing.js';
import { addNetns, delNetns, directAt, netlinkAt, recording, requireRootTools, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'iptables-nft-restore', 'ip6tables-nft-restore', 'iptables-nft-save', 'nft']);

const names: string[] = [];
afterAll(() => names.forEach(delNetns));

function netns(tag: string): string {
  const name = uniqueName(tag);
  names.push(name);
  addNetns(name);
  return name;
}

/**
 * A fresh install's restore text per family, as NetnsApplier renders it. What was learnt is kept
 * per text for the process: `tag` (a comment line) makes a test's texts its own.
 */
function freshTexts(prefix: string, tproxy = true, tag = ''): Map<string, Family> {
  const out = new Map<string, Family>();
  for (const fam of inpodRules({ ipv6: true, mode: tproxy ? 'tproxy' : 'redirect' }).families) {
    out.set(`${tag && `# ${tag}\n`}${reconcileRestore(fam.family, desiredFromFamily(fam), [], prefix)}`, fam.family);
  }
  return out;
}

const cmdOf = (f: Family): string => (f === 'ipv4' ? 'iptables-nft-restore' : 'ip6tables-nft-restore');

/** Runs each text's restore in `name` through a replaying executor; returns the commands that really ran. */
async function install(name: string, texts: Map<string, Family>, tamper?: (dump: Uint8Array) => void): Promise<string[]> {
  const path = `/var/run/netns/${name}`;
  const inner = recording(directAt(path).executor);
  const netlink = netlinkAt(path);
  const exchange: NetlinkExchange = tamper
    ? async (req, n, protocol) => {
        const reply = await netlink(req, n, protocol);
        // A GETRULE dump (nfnetlink subsystem 10, message 7) is what a replay is checked by.
        if (new DataView(req.buffer, req.byteOffset).getUint16(4, true) === ((10 << 8) | 7)) tamper(reply);
        return reply;
      }
    : netlink;
  const exec = new NftInstallReplay({ netlink: exchange }).executor(inner, texts);
  for (const [input, family] of texts) {
    const r = await exec.run(cmdOf(family), ['--noflush'], { input });
    expect(r.code, r.stderr).toBe(0);
  }
  return inner.calls.map((c) => c.cmd);
}

/** iptables-save of a family without its comment lines (they carry a date). */
function saved(name: string, family: Family): string {
  const out = sh('ip', ['netns', 'exec', name, family === 'ipv4' ? 'iptables-nft-save' : 'ip6tables-nft-save']);
  return out
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .join('\n');
}

describe('NftInstallReplay (real netns, iptables-nft)', () => {
  it('installs the second pod by nfnetlink replay: iptables-save and nft show exactly what iptables-nft-restore made', async () => {
    const texts = freshTexts('ISTIO');
    const first = netns('rpa');
    const second = netns('rpb');
    expect(await install(first, texts)).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);
    expect(await install(second, texts)).toEqual([]);
    for (const family of ['ipv4', 'ipv6'] as const) {
      const want = saved(first, family);
      expect(want).toContain('-A PREROUTING -j ISTIO_PRERT');
      expect(saved(second, family)).toBe(want);
    }
    // Every expression of every rule, as the kernel holds it (rule handles are the kernel's own numbering).
    const list = (n: string): string =>
      sh('ip', ['netns', 'exec', n, 'nft', '--debug=netlink', 'list', 'ruleset'])
        .replace(/^# Warning.*$/gm, '')
        .replace(/^(ip6? \S+ \S+)( \d+)+$/gm, '$1');
    expect(list(second)).toBe(list(first));
  });

  it('runs the command when the netns already holds a table of the family (nothing is replayed into it)', async () => {
    const texts = freshTexts('ISTIO');
    await install(netns('rpc'), texts);
    const busy = netns('rpd');
    sh('ip', ['netns', 'exec', busy, 'iptables-nft', '-t', 'nat', '-A', 'OUTPUT', '-d', '10.9.9.9/32', '-j', 'ACCEPT']);
    expect(await install(busy, texts)).toEqual(['iptables-nft-restore']);
    const v4 = saved(busy, 'ipv4');
    expect(v4).toContain('-A OUTPUT -d 10.9.9.9/32 -j ACCEPT');
    expect(v4).toContain('-A OUTPUT -j ISTIO_OUTPUT');
  });

  it('never learns from a netns holding more than the text makes: foreign rules are not copied to other pods', async () => {
    const texts = freshTexts('WRPF', false);
    const dirty = netns('rpe');
    sh('ip', ['netns', 'exec', dirty, 'iptables-nft', '-t', 'filter', '-A', 'INPUT', '-s', '10.8.8.8/32', '-j', 'DROP']);
    expect(await install(dirty, texts)).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);
    const next = netns('rpf');
    // Learnt from the clean IPv6 family only: IPv4 runs the command again (and learns now).
    expect(await install(next, texts)).toEqual(['iptables-nft-restore']);
    expect(saved(next, 'ipv4')).not.toContain('10.8.8.8');
    expect(await install(netns('rpg'), texts)).toEqual([]);
  });

  it('checks every replay by what it reads back: a rule that differs is undone and the command runs; counters alone may differ', async () => {
    const texts = freshTexts('ISTIO', false, 'read back different');
    const first = netns('rpk');
    expect(await install(first, texts)).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);
    // The first replay is checked expression by expression; later ones against what it read back.
    expect(await install(netns('rpl'), texts)).toEqual([]);
    expect(await install(netns('rpm'), texts)).toEqual([]);
    // The first expression of the first rule read back under another name ('payload' → 'Payload' …).
    let renamed = 0;
    const rename = (dump: Uint8Array): void => {
      const rule = attributes(dump.subarray(20)).find((a) => a.type === 4);
      const name = rule && attributes(attributes(rule.data)[0]?.data ?? new Uint8Array()).find((a) => a.type === 1);
      if (name?.data[0] === undefined) return;
      name.data[0] ^= 0x20;
      renamed++;
    };
    const odd = netns('rpn');
    expect(await install(odd, texts, rename)).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);
    expect(renamed).toBe(2);
    for (const family of ['ipv4', 'ipv6'] as const) expect(saved(odd, family)).toBe(saved(first, family));
    // The text is no longer replayed once a replay read back different.
    expect(await install(netns('rpo'), texts)).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);

    // Packets counted between the replay and its check: the rules are still the text's.
    const counted = freshTexts('ISTIO', false, 'counted');
    expect(await install(netns('rpq'), counted)).toHaveLength(2);
    expect(await install(netns('rpr'), counted)).toEqual([]);
    const count = (dump: Uint8Array): void => {
      for (const rule of attributes(dump.subarray(20)).filter((a) => a.type === 4)) {
        for (const elem of attributes(rule.data)) {
          const parts = attributes(elem.data);
          if (Buffer.from(parts.find((a) => a.type === 1)?.data ?? []).toString('latin1') !== 'counter\0') continue;
          const packets = attributes(parts.find((a) => a.type === 2)?.data ?? new Uint8Array()).find((a) => a.type === 2);
          if (packets) packets.data[7] = 3;
          if (packets) counts++;
          return;
        }
      }
    };
    let counts = 0;
    expect(await install(netns('rps'), counted, count)).toEqual([]);
    expect(counts).toBe(2);
  });

  it('NetnsApplier with replay: the second new pod runs no command; the applier reads it in sync, repairs drift and removes it', async () => {
    const spec = (facts: { ipv6: boolean }): NetnsSpec => ({ ruleSet: inpodRules({ ipv6: facts.ipv6 }), routing: inpodRouting({ ipv6: facts.ipv6 }), sysctls: { 'net.ipv4.tcp_migrate_req': '1' } });
    const applier = (name: string): { applier: NetnsApplier; calls: { cmd: string }[] } => {
      const path = `/var/run/netns/${name}`;
      const direct = directAt(path);
      const executor = recording(direct.executor);
      return { applier: new NetnsApplier({ executor, backend: 'nft', netlink: netlinkAt(path), sysctls: direct.sysctls, replay: true }), calls: executor.calls };
    };
    const first = netns('rph');
    const a = applier(first);
    expect(await a.applier.apply(spec, { likelyNew: true })).toMatchObject({ changed: true, hadRules: false });
    expect(a.calls.map((c) => c.cmd)).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);

    const second = netns('rpi');
    const b = applier(second);
    expect(await b.applier.apply(spec, { likelyNew: true })).toMatchObject({ changed: true, hadRules: false, ipv6: true });
    expect(b.calls).toEqual([]);
    for (const family of ['ipv4', 'ipv6'] as const) expect(saved(second, family)).toBe(saved(first, family));

    const again = applier(second);
    expect(await again.applier.apply(spec)).toMatchObject({ changed: false, diff: { inSync: true } });
    sh('ip', ['netns', 'exec', second, 'iptables-nft', '-t', 'nat', '-D', 'OUTPUT', '-j', 'ISTIO_OUTPUT']);
    const repaired = await applier(second).applier.apply(spec);
    expect(repaired).toMatchObject({ changed: true, hadRules: true });
    expect(saved(second, 'ipv4')).toBe(saved(first, 'ipv4'));

    await applier(second).applier.remove(() => ({ families: ['ipv4', 'ipv6'], routing: inpodRouting({ ipv6: true }) }));
    for (const family of ['ipv4', 'ipv6'] as const) expect(saved(second, family)).not.toContain('ISTIO');
  });
});
