// A remembered netns path (a hint kept across restarts) that now names another pod's netns must not
// be captured under this pod's identity: it is used only when the netns holds one of the pod's IPs
// (checked in-process over rtnetlink), else dropped and logged, and the /proc scan finds the pod.
// A hint that is still right is used as is, even for a netns no process is in (no scan could find it).
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { mkdir, mkdtemp, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { openNetns } from '@weir/netns';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePodSource, type NodeAgent } from '../src/index.js';
import { netnsAddresses, netnsLocalAddresses } from '../src/proc-scan.js';
import { istioLines, nsRun, recordingLogger, requireRoot, teardownAgentTest, uniq, until, ZtunnelPeer, startAgentWithPeer } from './support.js';

describe('netns hints that are stale (root, real netns, iptables, ZDS peer)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let web: TopologyPod;
  let other: TopologyPod;
  let dir: string;
  let peer: ZtunnelPeer;
  let agent: NodeAgent | undefined;
  /** A pod sandbox with no process in it (netns only): only its hint can find it. */
  const quiet = { name: uniq('agentfix-q'), uid: randomUUID(), ip: '10.250.7.2' };
  const quietPath = `/var/run/netns/${quiet.name}`;
  const { logger, lines } = recordingLogger();

  beforeAll(async () => {
    await requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'weir-agentfix-hint-'));
    topo = await Topology.create({ name: uniq('agentfix-') });
    node = await topo.addNode({ name: 'n1' });
    web = await node.addPod({ name: 'web', namespace: 'apps' });
    other = await node.addPod({ name: 'db', namespace: 'other' });
    execFileSync('ip', ['netns', 'add', quiet.name]);
    for (const args of [['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1'], ['addr', 'add', `${quiet.ip}/24`, 'dev', 'eth0'], ['link', 'set', 'eth1', 'up'], ['link', 'set', 'eth0', 'up'], ['link', 'set', 'lo', 'up']]) {
      execFileSync('ip', ['-n', quiet.name, ...args]);
    }
    const file = join(dir, 'pods.yaml');
    const doc = {
      namespaces: [
        { name: 'apps', labels: { 'istio.io/dataplane-mode': 'ambient' } },
        { name: 'other', labels: {} },
      ],
      pods: [
        // No netns: the agent finds them from its hints, else /proc.
        { name: 'web', namespace: 'apps', uid: web.uid, ips: [web.ip], labels: {}, node: 'n1' },
        { name: 'quiet', namespace: 'apps', uid: quiet.uid, ips: [quiet.ip], labels: {}, node: 'n1' },
        { name: 'db', namespace: 'other', uid: other.uid, ips: [other.ip], netns: other.netnsPath, labels: {}, node: 'n1' },
      ],
    };
    await writeFile(`${file}.tmp`, stringify(doc));
    await rename(`${file}.tmp`, file);
    // As a previous agent left them: web's sandbox was recreated and its old path now names db's netns.
    await mkdir(join(dir, 'run'), { recursive: true });
    await writeFile(join(dir, 'run', 'pod-netns.json'), JSON.stringify({ [web.uid]: other.netnsPath, [quiet.uid]: quietPath }));
    ({ agent, peer } = await startAgentWithPeer({ dir, source: new FilePodSource({ path: file, nodeName: 'n1' }), rules: { hostNetnsPath: node.netnsPath, dnsCapture: false }, logger }));
  }, 90_000);

  afterAll(async () => {
    try {
      await teardownAgentTest({ agent, peer, topo, dir });
    } finally {
      execFileSync('ip', ['netns', 'del', quiet.name], { stdio: 'ignore' });
    }
  }, 60_000);

  it("a hint naming another pod's netns is dropped and logged, that netns untouched; the /proc scan finds the pod's own", async () => {
    await until('web captured', () => agent!.pods().find((p) => p.uid === web.uid)?.state === 'captured');
    const status = agent!.pods().find((p) => p.uid === web.uid);
    expect(status?.netns).toMatch(/^\/proc\/\d+\/ns\/net$/);
    expect(statSync(status!.netns!).ino).toBe(statSync(web.netnsPath).ino);
    // The check (rtnetlink, on the open netns) sees the addresses the scan reads through /proc.
    const pid = Number(/^\/proc\/(\d+)\//.exec(status!.netns!)![1]);
    const netns = openNetns(web.netnsPath);
    try {
      const seen = netnsLocalAddresses(netns);
      expect(seen).toEqual(await netnsAddresses('/proc', pid));
      expect(seen.has(web.ip)).toBe(true);
    } finally {
      netns.close();
    }
    expect((await istioLines(web.netnsPath)).length).toBeGreaterThan(0);
    expect(await istioLines(other.netnsPath)).toEqual([]);
    expect(await nsRun(other.netnsPath, 'ip', ['rule', 'show'])).not.toMatch(/lookup 133/);
    const dropped = lines.filter((l) => l.msg?.startsWith('netns path not proven the pod\'s'));
    expect(dropped).toHaveLength(1);
    expect(dropped[0]).toMatchObject({ level: 'warn', obj: { uid: web.uid, netns: other.netnsPath, from: 'hint', reason: expect.stringContaining(`holds none of the pod's IPs ${web.ip}`) } });
    // ztunnel holds web's uid with web's netns, and never got db's netns under it.
    await until('ztunnel took web', () => peer.proxies.get(web.uid));
    expect(peer.proxies.get(web.uid)!.netns.sameAs(statSync(web.netnsPath))).toBe(true);
    expect(peer.log.filter((l) => l === `add ${web.uid}`)).toHaveLength(1);
  });

  it('a hint that is right is used as is: a netns with no process in it (no scan could find it) is captured', async () => {
    await until('quiet captured', () => agent!.pods().find((p) => p.uid === quiet.uid)?.state === 'captured');
    expect(agent!.pods().find((p) => p.uid === quiet.uid)?.netns).toBe(quietPath);
    expect((await istioLines(quietPath)).length).toBeGreaterThan(0);
    expect(lines.some((l) => l.obj.uid === quiet.uid && l.msg?.startsWith('netns path not proven'))).toBe(false);
  });
});
