// The capture the agent runs for a Netns handle on the iptables backends: the restores spawned
// directly in the pod netns (no nsenter, no shell), sysctls in-process. It must install, stay
// idempotent, repair drift, and never touch another netns when its fd went stale.
import { readdirSync, readFileSync } from 'node:fs';
import { openNetns, type Netns } from '@weir/netns';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IptablesPodRules, type PodInfo } from '../src/index.js';
import { istioLines, nsRun, requireRoot, uniq } from './support.js';

/** Names of this process's child processes now. */
function children(): string[] {
  return readdirSync('/proc/self/task').flatMap((t) =>
    readFileSync(`/proc/self/task/${t}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map((pid) => {
        try {
          return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
        } catch {
          return 'gone';
        }
      }),
  );
}

describe('in-pod rules without nsenter or a shell (root, real netns)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let a: TopologyPod;
  let b: TopologyPod;
  let rules: IptablesPodRules;
  const netnses: Netns[] = [];
  const info = (p: TopologyPod): PodInfo =>
    ({ uid: p.uid, name: p.name, namespace: p.namespace, labels: {}, annotations: {}, serviceAccount: 'default', ips: [p.ip], hostNetwork: false, nodeName: 'n1' }) as unknown as PodInfo;

  beforeAll(async () => {
    await requireRoot();
    topo = await Topology.create({ name: uniq('wcx') });
    node = await topo.addNode({ name: 'n1' });
    a = await node.addPod({ name: 'direct-a', namespace: 'apps' });
    b = await node.addPod({ name: 'direct-b', namespace: 'apps' });
    rules = new IptablesPodRules({ hostNetnsPath: node.netnsPath });
    await rules.setupHost();
  }, 90_000);

  afterAll(async () => {
    await rules?.teardownHost().catch(() => undefined);
    rules?.close();
    for (const n of netnses) n.close();
    await topo?.destroy();
  }, 60_000);

  it('installs a new pod, sets its sysctl, stays in sync, and repairs drift, with no pod shell started', async () => {
    const before = children().filter((c) => c === 'sh' || c === 'nsenter').length;
    const ns = openNetns(a.netnsPath);
    netnses.push(ns);
    const first = await rules.apply(info(a), ns, { likelyNew: true });
    expect(first).toEqual({ changed: true, repaired: [] });
    expect((await istioLines(a.netnsPath)).length).toBeGreaterThan(10);
    expect((await nsRun(a.netnsPath, 'ip6tables-save', [])).split('\n').some((l) => l.startsWith('-A ISTIO_'))).toBe(true);
    expect((await nsRun(a.netnsPath, 'cat', ['/proc/sys/net/ipv4/tcp_migrate_req'])).trim()).toBe('1');
    expect(await rules.apply(info(a), ns)).toEqual({ changed: false, repaired: [] });
    // Only the host's shell (setupHost): the pod's commands ran without one, and none is left running.
    expect(children().filter((c) => c === 'sh' || c === 'nsenter').length).toBe(before);

    await nsRun(a.netnsPath, 'iptables', ['-w', '-t', 'nat', '-D', 'ISTIO_OUTPUT', '-d', '169.254.7.127/32', '-p', 'tcp', '-m', 'tcp', '-j', 'ACCEPT']);
    await nsRun(a.netnsPath, 'sh', ['-c', 'echo 0 > /proc/sys/net/ipv4/tcp_migrate_req']);
    const repaired = await rules.apply(info(a), ns);
    expect(repaired.changed).toBe(true);
    expect(repaired.repaired).toContain('ipv4 nat ISTIO_OUTPUT: -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT');
    expect(repaired.repaired).toContain('sysctl net.ipv4.tcp_migrate_req');
    expect((await nsRun(a.netnsPath, 'cat', ['/proc/sys/net/ipv4/tcp_migrate_req'])).trim()).toBe('1');
    expect(await rules.apply(info(a), ns)).toEqual({ changed: false, repaired: [] });

    await rules.remove(info(a), ns);
    expect(await istioLines(a.netnsPath)).toEqual([]);
  });

  it('a handle whose fd now names another netns fails the capture and installs nothing anywhere (fail closed)', async () => {
    const stale = openNetns(a.netnsPath);
    const fd = stale.fd;
    stale.close();
    const other = openNetns(b.netnsPath);
    netnses.push(other);
    expect(other.fd).toBe(fd);
    // The agent's handle still says "open" (closed behind its back): only the identity check stands between it and pod b.
    const behindItsBack = Object.create(stale, { closed: { value: false }, checkedFd: { value: () => fd } }) as Netns;
    await expect(rules.apply(info(a), behindItsBack, { likelyNew: true })).rejects.toThrow();
    expect(await istioLines(b.netnsPath)).toEqual([]);
    expect(await istioLines(a.netnsPath)).toEqual([]);
  });
});
