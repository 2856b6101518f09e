import { readFileSync } from 'node:fs';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RuleApplier } from '../src/applier.js';
import { netnsExecutor, type CommandExecutor } from '../src/executor.js';
import { inpodRules } from '../src/presets.js';
import { renderNft } from '../src/render-nft.js';
import { addNetns, delNetns, recording, requireRootTools, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'nsenter', 'nft']);

const golden = readFileSync(new URL('../testdata/nftables-default.golden', import.meta.url), 'utf8');
const names: string[] = [];
afterAll(() => names.forEach(delNetns));

function netns(tag: string): { name: string; path: string } {
  const name = uniqueName(tag);
  names.push(name);
  return { name, path: addNetns(name) };
}

interface NftJsonItem {
  chain?: { table: string; name: string; type?: string; hook?: string; prio?: number };
  rule?: { table: string; chain: string; expr: unknown[]; comment?: string };
}

/**
 * The ruleset as the kernel holds it: per chain its hook, and per rule its expressions (counter and
 * comment aside) as a sorted multiset, since the matches of one rule are a conjunction.
 */
function kernelView(ns: string): Record<string, unknown> {
  const json = JSON.parse(sh('ip', ['netns', 'exec', ns, 'nft', '-j', 'list', 'ruleset'])) as { nftables: NftJsonItem[] };
  const view: Record<string, unknown[]> = {};
  for (const item of json.nftables) {
    if (item.chain) view[`${item.chain.table}/${item.chain.name}`] = [`${item.chain.type} ${item.chain.hook} ${item.chain.prio}`];
    if (item.rule) {
      const exprs = item.rule.expr
        .filter((e) => !(typeof e === 'object' && e !== null && 'counter' in e))
        .map((e) => JSON.stringify(e))
        .sort();
      view[`${item.rule.table}/${item.rule.chain}`]?.push(exprs);
    }
  }
  return view;
}

describe('nft rendering', () => {
  it('redirect mode loads into the kernel as the same ruleset as nftables-default.golden', () => {
    const a = netns('ga');
    const b = netns('gb');
    sh('ip', ['netns', 'exec', a.name, 'nft', '-f', '-'], golden);
    sh('ip', ['netns', 'exec', b.name, 'nft', '-f', '-'], renderNft(inpodRules({ mode: 'redirect' })));
    expect(kernelView(b.name)).toEqual(kernelView(a.name));
  });
});

describe('nftables backend in a fresh netns', () => {
  const ns = { name: '', path: '' };
  const list = (): string => sh('ip', ['netns', 'exec', ns.name, 'nft', 'list', 'ruleset']);
  const rules = inpodRules({ mode: 'redirect' });
  beforeAll(() => {
    Object.assign(ns, netns('nf'));
    sh('ip', ['netns', 'exec', ns.name, 'nft', '-f', '-'], 'add table inet other\nadd chain inet other c\nadd rule inet other c tcp dport 9999 accept\n');
  });

  it('applies once, then runs nothing but listings', async () => {
    const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend: 'nftables' });
    expect(await applier.apply(rules)).toMatchObject({ changed: true, repaired: [], backend: 'nftables' });
    const before = list();
    const exec = recording(netnsExecutor(ns.path));
    expect((await new RuleApplier({ executor: exec, backend: 'nftables' }).apply(rules)).changed).toBe(false);
    expect(exec.calls.every((c) => c.cmd === 'nft' && c.args[0] === 'list')).toBe(true);
    expect(list()).toBe(before);
  });

  it('names a rule deleted by hand and puts it back', async () => {
    const applier = new RuleApplier({ executor: netnsExecutor(ns.path), backend: 'nftables' });
    const chain = sh('ip', ['netns', 'exec', ns.name, 'nft', '-a', 'list', 'chain', 'inet', 'istio-ambient-nat', 'istio-output']);
    const handle = /redirect to :15001 .*# handle (\d+)/.exec(chain)?.[1];
    expect(handle).toBeDefined();
    sh('ip', ['netns', 'exec', ns.name, 'nft', 'delete', 'rule', 'inet', 'istio-ambient-nat', 'istio-output', 'handle', String(handle)]);
    const diff = await applier.diff(rules);
    expect(diff.changes).toEqual([
      {
        kind: 'missing-rule',
        family: 'ipv4',
        table: 'istio-ambient-nat',
        chain: 'istio-output',
        rule: 'ip daddr != 127.0.0.1/32 meta l4proto tcp meta mark and 0xfff != 0x539 counter redirect to :15001',
      },
    ]);
    const result = await applier.apply(rules);
    expect(result.repaired.map((r) => r.rule)).toEqual([diff.changes[0] && 'rule' in diff.changes[0] ? diff.changes[0].rule : '']);
    expect((await applier.diff(rules)).inSync).toBe(true);
  });

  it('a failing transaction changes nothing and reports nft stderr', async () => {
    const before = list();
    const broken: CommandExecutor = {
      run: (cmd, args, opts) =>
        netnsExecutor(ns.path).run(cmd, args, opts?.input === undefined ? opts : { input: `${opts.input}add rule inet istio-ambient-nat istio-output weirmissing\n` }),
    };
    await expect(new RuleApplier({ executor: broken, backend: 'nftables' }).apply(inpodRules({ mode: 'tproxy' }))).rejects.toMatchObject({
      code: 'ERR_IPTABLES_RESTORE_FAILED',
      stderr: expect.stringContaining('weirmissing'),
    });
    expect(list()).toBe(before);
  });

  it('cleanup removes the istio-ambient tables and nothing else', async () => {
    await new RuleApplier({ executor: netnsExecutor(ns.path), backend: 'nftables' }).cleanup();
    const text = list();
    expect(text).not.toMatch(/istio/);
    expect(text).toMatch(/table inet other[\s\S]*tcp dport 9999 accept/);
  });
});
