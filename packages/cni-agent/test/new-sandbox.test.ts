import { randomUUID } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { FakeApiServer } from '@weir/fake-apiserver';
import { openNetns, type Netns } from '@weir/netns';
import { ZdsClient, type ZdsAddEvent } from '@weir/redirect-protocol';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeAgent, KubePodSource, type NodeAgent } from '../src/index.js';
import { istioLines, postCmdAdd, requireRoot, uniq, until, teardownAgentTest, TEST_AGENT_TIMING } from './support.js';

// Review 5 #1: kubelet retries a pod whose ADD timed out with a new sandbox (a new CNI_NETNS) while
// ztunnel is still slow to ack the first one. The new sandbox's ADD must not be answered by the old
// sandbox's capture.

const ACK_DELAY_MS = 4000;
const CMD_ADD_TIMEOUT_MS = 3000;

/** Stands in for ztunnel: holds one netns per uid (a new one for the same uid replaces it), acks the first Add late. */
class SlowFirstAckPeer {
  readonly client: ZdsClient;
  readonly netns = new Map<string, Netns>();
  readonly log: string[] = [];
  snapshots = 0;
  #adds = 0;

  constructor(path: string) {
    this.client = new ZdsClient({ path, backoff: { initialMs: 10, maxMs: 200 } });
  }

  start(): void {
    this.client.start({
      onAdd: async (ev: ZdsAddEvent) => {
        if (this.#adds++ === 0) await new Promise((r) => setTimeout(r, ACK_DELAY_MS));
        const old = this.netns.get(ev.uid);
        if (old?.sameAs(ev.netns)) {
          ev.netns.close();
          return;
        }
        old?.close();
        this.netns.set(ev.uid, ev.netns);
        this.log.push(`add ${ev.uid} ${ev.netns.id.ino}`);
      },
      onKeep: async () => undefined,
      onDel: async (uid) => {
        this.netns.get(uid)?.close();
        this.netns.delete(uid);
        this.log.push(`del ${uid}`);
      },
      onSnapshotSent: async () => {
        this.snapshots++;
      },
    });
  }

  async close(): Promise<void> {
    await this.client.close();
    for (const n of this.netns.values()) n.close();
  }
}

describe('which pod and which sandbox a /cmdadd is for (root, real netns, iptables, ZDS peer, fake API)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let api: FakeApiServer;
  let dir: string;
  let agent: NodeAgent | undefined;
  let peer: SlowFirstAckPeer | undefined;
  let runDir: string;

  beforeAll(async () => {
    await requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'weir-agent-sbx-'));
    runDir = join(dir, 'run');
    topo = await Topology.create({ name: uniq('wsb') });
    node = await topo.addNode({ name: 'n1' });
    api = await FakeApiServer.start();
    const kc = new KubeConfig();
    kc.loadFromFile(await api.kubeconfig(join(dir, 'kubeconfig')));
    api.createNamespace('apps', { 'istio.io/dataplane-mode': 'ambient' });
    const zdsSocket = join(dir, 'ztunnel', 'ztunnel.sock');
    agent = createNodeAgent({
      nodeName: 'n1',
      source: new KubePodSource({ kubeConfig: kc, nodeName: 'n1', backoffInitialMs: 50 }),
      runDir,
      zdsSocket,
      rules: { hostNetnsPath: node.netnsPath, dnsCapture: false },
      ...TEST_AGENT_TIMING,
      cmdAddTimeoutMs: CMD_ADD_TIMEOUT_MS,
      zdsAckTimeoutMs: ACK_DELAY_MS + 6000,
    });
    await agent.start();
    peer = new SlowFirstAckPeer(zdsSocket);
    peer.start();
    await until('ztunnel peer snapshot', () => peer!.snapshots > 0);
  }, 60_000);

  afterAll(() => teardownAgentTest({ agent, peer, api, topo, dir }), 60_000);

  it("the second sandbox's ADD is answered 200 only with the ISTIO chains in its own netns, and ztunnel ends up holding it", async () => {
    const uid = randomUUID();
    api.createPod({
      metadata: { name: 'web', namespace: 'apps', uid },
      spec: { nodeName: 'n1', serviceAccountName: 'sa-web', containers: [{ name: 'app', image: 'x' }] },
      status: { phase: 'Pending' },
    });
    // Two sandboxes of the one pod `web`: each its own netns with its own address, as a runtime makes them.
    const s1: TopologyPod = await node.addPod({ name: 'web-s1', namespace: 'apps', uid });
    const s2: TopologyPod = await node.addPod({ name: 'web-s2', namespace: 'apps', uid });
    const body = (s: TopologyPod) => ({
      Netns: s.netnsPath,
      PodName: 'web',
      PodNamespace: 'apps',
      IPs: [{ Interface: 0, Address: { IP: s.ip, Mask: '////AA==' }, Gateway: '' }],
    });
    const sock = join(runDir, 'pluginevent.sock');

    const first = await postCmdAdd(sock, body(s1));
    expect(first.status).toBe(500);
    expect(first.text).toContain(`not captured within ${CMD_ADD_TIMEOUT_MS} ms`);
    const second = await postCmdAdd(sock, body(s2));
    // What holds at the moment of the 200:
    const s2Rules = await istioLines(s2.netnsPath);
    expect(second).toEqual({ status: 200, text: 'pod captured\n' });
    expect(s2Rules).toContain('-A OUTPUT -j ISTIO_OUTPUT');
    expect(s2Rules).toContain('-A PREROUTING -j ISTIO_PRERT');
    expect(s2Rules.some((l) => l.includes('REDIRECT --to-ports 15001'))).toBe(true);
    // ztunnel was handed the second sandbox for the uid, which replaced the first.
    const held = peer!.netns.get(uid);
    const want = openNetns(s2.netnsPath);
    try {
      expect(held?.sameAs(want)).toBe(true);
    } finally {
      want.close();
    }
    expect(peer!.log.filter((l) => l.startsWith(`add ${uid}`))).toHaveLength(2);
    expect(agent!.pods().find((p) => p.uid === uid)).toMatchObject({ state: 'captured', netns: s2.netnsPath });
  });

  // Review 5 #7: a StatefulSet pod recreated under the same name must not be judged by its predecessor.
  it("an ADD whose PodUID is not the pod's the source has under that name fails (500), a matching one is captured", async () => {
    const spec = { nodeName: 'n1', serviceAccountName: 'sa-db', containers: [{ name: 'app', image: 'x' }] };
    const oldUid = api.createPod({ metadata: { name: 'db-0', namespace: 'apps' }, spec, status: { phase: 'Pending' } }).metadata.uid ?? '';
    await until('db-0 in the agent cache', () => agent!.pods().some((p) => p.uid === oldUid));
    const sandbox = await node.addPod({ name: 'db-0', namespace: 'apps' });
    const sock = join(runDir, 'pluginevent.sock');
    const body = (PodUID: string) => ({
      Netns: sandbox.netnsPath,
      PodName: 'db-0',
      PodNamespace: 'apps',
      PodUID,
      IPs: [{ Interface: 0, Address: { IP: sandbox.ip, Mask: '////AA==' }, Gateway: '' }],
    });
    const unknown = randomUUID();
    const wrong = await postCmdAdd(sock, body(unknown));
    expect(wrong.status).toBe(500);
    expect(wrong.text).toContain(`pod apps/db-0 uid ${unknown} (the CNI ADD's K8S_POD_UID) not found: the pod source has uid ${oldUid} under that name`);
    expect(await istioLines(sandbox.netnsPath)).toEqual([]);
    expect(agent!.pods().find((p) => p.uid === oldUid)?.state).toBe('idle');

    api.deletePod('apps', 'db-0');
    const newUid = api.createPod({ metadata: { name: 'db-0', namespace: 'apps' }, spec, status: { phase: 'Pending' } }).metadata.uid ?? '';
    expect(await postCmdAdd(sock, body(newUid))).toEqual({ status: 200, text: 'pod captured\n' });
    expect(agent!.pods().find((p) => p.uid === newUid)).toMatchObject({ state: 'captured', netns: sandbox.netnsPath });
    expect(await istioLines(sandbox.netnsPath)).toContain('-A OUTPUT -j ISTIO_OUTPUT');
  });
});
