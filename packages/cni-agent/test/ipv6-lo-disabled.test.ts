// A pod whose IPv6 is off on lo but on on eth0 (ipv6: auto): the IPv6 capture route cannot go in.
// The capture must fail closed (not handed to ztunnel, retried) and say why — in the agent's log,
// the pod's status and the CNI ADD's failure reason — not as a bare errno.
import { mkdtemp, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilePodSource, type NodeAgent } from '../src/index.js';
import { nsRun, postCmdAdd, recordingLogger, requireRoot, uniq, until, ZtunnelPeer, teardownAgentTest, startAgentWithPeer } from './support.js';

const WHY = 'IPv6 is disabled on lo but enabled on eth0 in the netns: the IPv6 capture route (ip -6 route replace local ::/0 dev lo table 133) needs IPv6 on lo';

describe('pod with IPv6 off on lo, on on eth0 (root, real netns, ipv6: auto)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let pod: TopologyPod;
  let dir: string;
  let peer: ZtunnelPeer;
  let agent: NodeAgent | undefined;
  const { logger, lines } = recordingLogger();

  beforeAll(async () => {
    await requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'weir-agent-lo6-'));
    const file = join(dir, 'pods.yaml');
    topo = await Topology.create({ name: uniq('wcl') });
    node = await topo.addNode({ name: 'n1' });
    pod = await node.addPod({ name: 'lo6', namespace: 'apps' });
    await nsRun(pod.netnsPath, 'sysctl', ['-q', '-w', 'net.ipv6.conf.eth0.disable_ipv6=0']);
    await nsRun(pod.netnsPath, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=1']);
    const doc = {
      namespaces: [{ name: 'apps', labels: { 'istio.io/dataplane-mode': 'ambient' } }],
      pods: [{ name: pod.name, namespace: 'apps', uid: pod.uid, ips: [pod.ip], netns: pod.netnsPath, labels: {}, node: 'n1' }],
    };
    await writeFile(`${file}.tmp`, stringify(doc));
    await rename(`${file}.tmp`, file);
    ({ agent, peer } = await startAgentWithPeer({ dir, source: new FilePodSource({ path: file, nodeName: 'n1' }), rules: { hostNetnsPath: node.netnsPath, ipv6: 'auto', dnsCapture: false }, logger }));
  }, 90_000);

  afterAll(() => teardownAgentTest({ agent, peer, topo, dir }), 60_000);

  it('fails closed, naming lo and eth0 and what to set, in the log, the pod status and the CNI ADD answer; captures once lo has IPv6', async () => {
    await until('ztunnel peer snapshot', () => peer.snapshots > 0);
    const res = await postCmdAdd(join(dir, 'run', 'pluginevent.sock'), {
      Netns: pod.netnsPath,
      PodName: pod.name,
      PodNamespace: 'apps',
      IPs: [{ Interface: 0, Address: { IP: pod.ip, Mask: '////AA==' }, Gateway: '' }],
    });
    expect(res.status).toBe(500);
    expect(res.text).toContain(`applying in-pod rules for apps/${pod.name}`);
    expect(res.text).toContain(WHY);
    expect(res.text).toContain('net.ipv6.conf.lo.disable_ipv6=0');

    const status = agent!.pods().find((p) => p.uid === pod.uid);
    expect(status?.state).toBe('pending');
    expect(status?.lastError).toContain(WHY);
    const failed = lines.find((l) => l.level === 'warn' && l.msg?.startsWith('pod pending') && l.obj.uid === pod.uid);
    expect(failed?.obj).toMatchObject({ reason: 'rules_failed', err: expect.stringContaining(WHY) });
    // Fail closed: never handed to ztunnel while the IPv6 capture is not whole.
    expect(peer.log).not.toContain(`add ${pod.uid}`);

    await nsRun(pod.netnsPath, 'sysctl', ['-q', '-w', 'net.ipv6.conf.lo.disable_ipv6=0']);
    await until('captured after lo got IPv6', () => agent!.pods().find((p) => p.uid === pod.uid)?.state === 'captured');
    expect(await nsRun(pod.netnsPath, 'ip', ['-6', 'route', 'show', 'table', '133'])).toMatch(/local default dev lo/);
    expect(peer.log).toContain(`add ${pod.uid}`);
  });
});
