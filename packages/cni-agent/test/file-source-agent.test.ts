import { mkdtemp, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeAgent, FilePodSource, type NodeAgent } from '../src/index.js';
import { istioLines, requireRoot, uniq, until, ZtunnelPeer, teardownAgentTest } from './support.js';

/** The local sandbox's mode: pods, namespaces and netns paths from a YAML file, no API server. */
describe('node agent with a static pods file (root, real netns)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let pod: TopologyPod;
  let dir: string;
  let file: string;
  let peer: ZtunnelPeer;
  let agent: NodeAgent | undefined;

  async function writePods(labels: Record<string, string>, present = true): Promise<void> {
    const doc = {
      namespaces: [{ name: 'apps', labels: { 'istio.io/dataplane-mode': 'ambient' } }],
      pods: present ? [{ name: pod.name, namespace: 'apps', uid: pod.uid, ips: [pod.ip], netns: pod.netnsPath, labels, node: 'n1' }] : [],
    };
    await writeFile(`${file}.tmp`, stringify(doc));
    await rename(`${file}.tmp`, file);
  }

  beforeAll(async () => {
    await requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'weir-agent-file-'));
    file = join(dir, 'pods.yaml');
    topo = await Topology.create({ name: uniq('wcf') });
    node = await topo.addNode({ name: 'n1' });
    pod = await node.addPod({ name: 'web', namespace: 'apps' });
    await writePods({});
    agent = createNodeAgent({
      nodeName: 'n1',
      source: new FilePodSource({ path: file, nodeName: 'n1' }),
      runDir: join(dir, 'run'),
      zdsSocket: join(dir, 'ztunnel.sock'),
      rules: { hostNetnsPath: node.netnsPath, mode: 'redirect' },
      health: false,
      driftIntervalMs: 0,
      retryInitialMs: 50,
    });
    await agent.start();
    peer = new ZtunnelPeer(join(dir, 'ztunnel.sock'));
    peer.start();
  }, 90_000);

  afterAll(() => teardownAgentTest({ agent, peer, topo, dir }), 60_000);

  it('captures a listed pod without a CNI event, releases it on opt-out, forgets it when it leaves the file', async () => {
    await until('captured', () => agent!.pods().find((p) => p.uid === pod.uid)?.state === 'captured');
    expect(peer.log).toContain(`add ${pod.uid}`);
    // redirect mode: Istio ≥ 1.24's nat REDIRECT for inbound instead of TPROXY.
    const lines = await istioLines(pod.netnsPath);
    expect(lines).toContain('-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006');
    expect(lines.some((l) => l.includes('TPROXY'))).toBe(false);

    await writePods({ 'istio.io/dataplane-mode': 'none' });
    await until('released', () => agent!.pods().find((p) => p.uid === pod.uid)?.state === 'idle');
    expect(await istioLines(pod.netnsPath)).toEqual([]);
    expect(peer.log).toContain(`del ${pod.uid}`);

    await writePods({});
    await until('captured again', () => agent!.pods().find((p) => p.uid === pod.uid)?.state === 'captured');
    await writePods({}, false);
    await until('forgotten', () => agent!.pods().length === 0);
  });
});
