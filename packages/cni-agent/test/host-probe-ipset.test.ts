// The node's probe ipset as pods come and go: removals read the sets and delete over netlink in
// the agent's process (no `ipset` exec, however many pods), coalesced into one batch, and take
// exactly the removed pods' entries — a pod that reuses a deleted pod's IP keeps its own.
import { netnsExecutor, type CommandExecutor } from '@weir/iptables-builder';
import { Topology, type TopologyNode } from '@weir/topology';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { IptablesPodRules, type Logger, type PodInfo } from '../src/index.js';
import { nsRun, requireRoot, uniq } from './support.js';

const V4 = 'istio-inpod-probes-v4';
const V6 = 'istio-inpod-probes-v6';

/** Records every command the agent runs in the node netns. */
function recording(base: CommandExecutor): CommandExecutor & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    run(cmd, args, opts) {
      calls.push(`${cmd} ${args.join(' ')}`);
      return base.run(cmd, args, opts);
    },
  };
}

/** Keeps the agent's debug lines (the batch line says how many changes one write carried). */
function capturing(): Logger & { lines: { obj: Record<string, unknown>; msg: string | undefined }[] } {
  const lines: { obj: Record<string, unknown>; msg: string | undefined }[] = [];
  const keep = (obj: object, msg?: string): void => void lines.push({ obj: obj as Record<string, unknown>, msg });
  const logger = { lines, info: keep, warn: keep, error: keep, debug: keep, child: () => logger };
  return logger;
}

const pod = (uid: string, ip: string): PodInfo =>
  ({ uid, name: uid, namespace: 'apps', labels: {}, annotations: {}, serviceAccount: 'default', ips: [ip], hostNetwork: false, nodeName: 'n1' }) as unknown as PodInfo;

describe('probe ipset removal over netlink (root, real node netns)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let rules: IptablesPodRules;
  let host: ReturnType<typeof recording>;
  let log: ReturnType<typeof capturing>;
  const tag = Math.random().toString(36).slice(2, 6);
  const saved = async (set: string): Promise<string[]> => (await nsRun(node.netnsPath, 'ipset', ['save', set])).split('\n').filter((l) => l.startsWith('add ')).sort();
  const ipsetCalls = (): string[] => host.calls.filter((c) => /(^|\s)ipset(\s|$)/.test(c));

  beforeAll(async () => {
    await requireRoot();
    topo = await Topology.create({ name: uniq('wcp') });
    node = await topo.addNode({ name: 'n1' });
    host = recording(netnsExecutor(node.netnsPath));
    log = capturing();
    rules = new IptablesPodRules({ ipv6: true, hostNetnsPath: node.netnsPath, hostExecutor: host, logger: log });
    await rules.setupHost();
  }, 90_000);

  afterAll(async () => {
    await rules?.teardownHost().catch(() => undefined);
    rules?.close();
    await topo?.destroy();
  }, 60_000);

  beforeEach(() => {
    host.calls.length = 0;
    log.lines.length = 0;
  });

  it('deleting 40 pods at once removes exactly their entries (IPv4 and IPv6) in one batch, with no ipset exec', async () => {
    const pods = Array.from({ length: 60 }, (_, i) => ({ uid: `uid-${tag}-${i}`, v4: `10.77.0.${i + 1}`, v6: `fd00:77::${(i + 1).toString(16)}` }));
    await Promise.all(pods.map((p) => rules.addHostProbe(pod(p.uid, p.v4), [p.v4, p.v6])));
    // A deleted pod's IP handed to a new pod, added with its own UID while the old pod is still being removed.
    const old = pod(`uid-${tag}-old`, '10.77.1.1');
    await rules.addHostProbe(old, ['10.77.1.1', 'fd00:77::1:1']);
    await rules.addHostProbe(pod(`uid-${tag}-new`, '10.77.1.1'), ['10.77.1.1']);
    // Someone else's entry (no comment) and one of a pod this agent does not know.
    await nsRun(node.netnsPath, 'ipset', ['add', V4, '10.77.9.9']);
    await nsRun(node.netnsPath, 'ipset', ['add', V4, '10.77.9.8', 'comment', 'uid-not-removed']);
    expect(await saved(V4)).toHaveLength(63);
    expect(await saved(V6)).toHaveLength(61);
    host.calls.length = 0;
    log.lines.length = 0;

    const gone = pods.slice(0, 40);
    await Promise.all([...gone.map((p) => rules.removeHostProbe(pod(p.uid, p.v4))), rules.removeHostProbe(old)]);

    const kept = pods.slice(40);
    expect(await saved(V4)).toEqual(
      [
        ...kept.map((p) => `add ${V4} ${p.v4} comment "${p.uid}"`),
        `add ${V4} 10.77.1.1 comment "uid-${tag}-new"`,
        `add ${V4} 10.77.9.9`,
        `add ${V4} 10.77.9.8 comment "uid-not-removed"`,
      ].sort(),
    );
    expect(await saved(V6)).toEqual(kept.map((p) => `add ${V6} ${p.v6} comment "${p.uid}"`).sort());
    expect(ipsetCalls()).toEqual([]);
    expect(host.calls).toEqual([]);
    const batches = log.lines.filter((l) => l.msg === 'probe ipset updated');
    expect(batches.map((b) => ({ removals: b.obj.removals, deleted: b.obj.deleted, via: b.obj.via }))).toEqual([{ removals: 41, deleted: 81, via: 'netlink' }]);
  });

  it('an add and a removal of the same pod in one burst keep their order (added then removed: gone; removed then added: there)', async () => {
    const a = pod(`uid-${tag}-a`, '10.77.2.1');
    const b = pod(`uid-${tag}-b`, '10.77.2.2');
    await rules.addHostProbe(b, ['10.77.2.2']);
    await Promise.all([rules.addHostProbe(a, ['10.77.2.1']), rules.removeHostProbe(a), rules.removeHostProbe(b), rules.addHostProbe(b, ['10.77.2.2'])]);
    const v4 = await saved(V4);
    expect(v4.filter((l) => l.includes('10.77.2.'))).toEqual([`add ${V4} 10.77.2.2 comment "uid-${tag}-b"`]);
    expect(ipsetCalls()).toEqual([]);
  });

  it('the startup sync lists the sets over netlink and drops only entries of pods not kept, with no ipset exec', async () => {
    await nsRun(node.netnsPath, 'ipset', ['add', V4, '10.77.3.1', 'comment', `uid-${tag}-stale`]);
    await nsRun(node.netnsPath, 'ipset', ['add', V6, 'fd00:77::3:1', 'comment', `uid-${tag}-stale`]);
    host.calls.length = 0;
    const keep = new Set((await saved(V4)).map((l) => /comment "([^"]+)"/.exec(l)?.[1]).filter((u): u is string => u !== undefined && u !== `uid-${tag}-stale`));
    const before4 = await saved(V4);
    const stale = await rules.syncHostProbes(keep);
    expect(stale.sort()).toEqual([`10.77.3.1 (uid uid-${tag}-stale)`, `fd00:77::3:1 (uid uid-${tag}-stale)`]);
    expect(await saved(V4)).toEqual(before4.filter((l) => !l.includes('10.77.3.1')));
    expect((await saved(V6)).some((l) => l.includes('fd00:77::3:1'))).toBe(false);
    expect(host.calls).toEqual([]);
  });

  it('without the node netns opened (host not set up) removal still works, through ipset save and one ipset restore', async () => {
    const plain = recording(netnsExecutor(node.netnsPath));
    const fallback = new IptablesPodRules({ ipv6: true, hostNetnsPath: node.netnsPath, hostExecutor: plain });
    try {
      const p = pod(`uid-${tag}-fb`, '10.77.4.1');
      await fallback.addHostProbe(p, ['10.77.4.1', 'fd00:77::4:1']);
      expect(await saved(V4)).toContain(`add ${V4} 10.77.4.1 comment "uid-${tag}-fb"`);
      await fallback.removeHostProbe(p);
      expect((await saved(V4)).some((l) => l.includes('10.77.4.1'))).toBe(false);
      expect((await saved(V6)).some((l) => l.includes('fd00:77::4:1'))).toBe(false);
      expect(plain.calls).toEqual(['ipset -exist restore', `ipset save ${V4}`, `ipset save ${V6}`, 'ipset -exist restore']);
    } finally {
      fallback.close();
    }
  });
});
