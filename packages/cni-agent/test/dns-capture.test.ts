import type { Server } from 'node:net';
import { listenTcp, openNetns, type Netns } from '@weir/netns';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DNS_CAPTURE_ANNOTATION, IptablesPodRules, type PodInfo } from '../src/index.js';
import { nsRun, requireRoot, tcpRead, uniq } from './support.js';

describe('DNS capture per pod (root, real netns)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let on: TopologyPod;
  let off: TopologyPod;
  let peer: TopologyPod;
  const netnses: Netns[] = [];
  const servers: Server[] = [];
  const rules = new IptablesPodRules({ ipv6: false });
  const info = (p: TopologyPod, annotations: Record<string, string>): PodInfo =>
    ({ uid: p.uid, name: p.name, namespace: p.namespace, labels: {}, annotations, serviceAccount: 'default', ips: [p.ip], hostNetwork: false, nodeName: 'n1' }) as PodInfo;

  async function answer(ns: Netns, port: number, reply: string): Promise<void> {
    const s = await listenTcp({ netns: ns, host: '0.0.0.0', port, mark: 0x539 });
    s.on('connection', (c) => c.end(`${reply}\n`));
    servers.push(s);
  }

  beforeAll(async () => {
    await requireRoot();
    topo = await Topology.create({ name: uniq('wcd') });
    node = await topo.addNode({ name: 'n1' });
    on = await node.addPod({ name: 'dns-on', namespace: 'apps' });
    off = await node.addPod({ name: 'dns-off', namespace: 'apps' });
    peer = await node.addPod({ name: 'resolver', namespace: 'apps' });
    for (const p of [on, off]) {
      const ns = openNetns(p.netnsPath);
      netnses.push(ns);
      // Stand-ins for ztunnel's DNS proxy (15053) and outbound listener (15001).
      await answer(ns, 15053, 'ztunnel-dns');
      await answer(ns, 15001, 'ztunnel-out');
    }
    const peerNs = openNetns(peer.netnsPath);
    netnses.push(peerNs);
    await answer(peerNs, 53, 'resolver');
  }, 90_000);

  afterAll(async () => {
    rules.close();
    for (const s of servers) s.close();
    for (const n of netnses) n.close();
    await topo?.destroy();
  }, 60_000);

  it('is on by default: UDP and TCP 53 go to 15053 (UDP end to end: the ztunnel DNS tests)', async () => {
    // The agent's own Netns handle: the production path (restores spawned straight into the netns).
    await rules.apply(info(on, {}), netnses[0] as Netns);
    const saved = await nsRun(on.netnsPath, 'iptables-save', []);
    expect(saved).toContain('-p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053');
    expect(saved).toContain('-j CT --zone 1');
    expect(await tcpRead(on.netnsPath, peer.ip, 53)).toBe('ztunnel-dns');
  });

  it(`the pod annotation ${DNS_CAPTURE_ANNOTATION}: "false" turns it off for that pod only`, async () => {
    await rules.apply(info(off, { [DNS_CAPTURE_ANNOTATION]: 'false' }), netnses[1] as Netns);
    const saved = await nsRun(off.netnsPath, 'iptables-save', []);
    expect(saved).not.toContain('15053');
    expect(saved).not.toContain('CT --zone');
    // TCP 53 is then ordinary outbound TCP (15001), not the DNS proxy.
    expect(await tcpRead(off.netnsPath, peer.ip, 53)).toBe('ztunnel-out');
    expect(rules.dnsCaptureFor(info(off, { [DNS_CAPTURE_ANNOTATION]: 'true' }))).toBe(true);
    expect(new IptablesPodRules({ dnsCapture: false }).dnsCaptureFor(info(off, { [DNS_CAPTURE_ANNOTATION]: 'true' }))).toBe(false);
  });
});
