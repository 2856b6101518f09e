import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { FakeApiServer } from '@weir/fake-apiserver';
import { listenTcp, openNetns, type Netns } from '@weir/netns';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeAgent, findPodNetnsInProc, KubePodSource, type NodeAgent } from '../src/index.js';
import { istioLines, nsRun, postCmdAdd, requireRoot, tcpRead, uniq, until, ZtunnelPeer, teardownAgentTest, TEST_AGENT_TIMING } from './support.js';

/** The seed's in-pod rules (tproxy mode, DNS capture off: this agent runs with dnsCapture false), as iptables-save prints them. */
const SEED_RULES = [
  '-A PREROUTING -j ISTIO_PRERT',
  '-A OUTPUT -j ISTIO_OUTPUT',
  '-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff',
  '-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff',
  '-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
  '-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT',
  '-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff',
  '-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
  '-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x111/0xfff',
  '-A OUTPUT -j ISTIO_OUTPUT',
  '-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT',
  '-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT',
  '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT',
  '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
];

const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };

describe('node agent capture (root, real netns, iptables, ZDS peer, fake API)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let api: FakeApiServer;
  let dir: string;
  let kc: KubeConfig;
  let peer: ZtunnelPeer;
  let agent: NodeAgent | undefined;
  const apps: { netns: Netns; server: Server }[] = [];
  let web: TopologyPod;
  let client: TopologyPod;
  let runDir: string;
  let zdsSocket: string;

  /** A pod: in the API first (Pending, no IP, as the scheduler leaves it), then its sandbox. */
  async function addPod(name: string, namespace: string, labels: Record<string, string> = {}, running = false): Promise<TopologyPod> {
    const uid = randomUUID();
    api.createPod({
      metadata: { name, namespace, uid, labels },
      spec: { nodeName: 'n1', serviceAccountName: 'sa-' + name, containers: [{ name: 'app', image: 'x' }] },
      status: { phase: 'Pending' },
    });
    const pod = await node.addPod({ name, namespace, labels, uid });
    if (running) setRunning(pod);
    // The "application": answers `app` on 8080 inside the pod.
    const netns = openNetns(pod.netnsPath);
    const server = await listenTcp({ netns, host: '0.0.0.0', port: 8080 });
    server.on('connection', (s) => s.end('app\n'));
    apps.push({ netns, server });
    return pod;
  }

  function setRunning(pod: TopologyPod): void {
    api.updatePod(pod.namespace, pod.name, (p) => {
      p.status = { phase: 'Running', podIP: pod.ip, podIPs: [{ ip: pod.ip }] };
    });
  }

  function cmdAddBody(pod: TopologyPod) {
    return {
      Netns: pod.netnsPath,
      PodName: pod.name,
      PodNamespace: pod.namespace,
      IPs: [{ Interface: 0, Address: { IP: pod.ip, Mask: '////AA==' }, Gateway: '' }],
    };
  }

  async function startAgent(): Promise<NodeAgent> {
    const a = createNodeAgent({
      nodeName: 'n1',
      source: new KubePodSource({ kubeConfig: kc, nodeName: 'n1', backoffInitialMs: 50 }),
      runDir,
      zdsSocket,
      rules: { hostNetnsPath: node.netnsPath, dnsCapture: false },
      health: { host: '127.0.0.1', port: 0 },
      ...TEST_AGENT_TIMING,
      zdsAckTimeoutMs: 2000,
    });
    await a.start();
    return a;
  }

  beforeAll(async () => {
    await requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'weir-agent-it-'));
    runDir = join(dir, 'run');
    zdsSocket = join(dir, 'ztunnel', 'ztunnel.sock');
    topo = await Topology.create({ name: uniq('wca') });
    node = await topo.addNode({ name: 'n1' });
    api = await FakeApiServer.start();
    kc = new KubeConfig();
    kc.loadFromFile(await api.kubeconfig(join(dir, 'kubeconfig')));
    api.createNamespace('apps', AMBIENT);
    api.createNamespace('plain');
    web = await addPod('web', 'apps');
    client = await addPod('client', 'plain', {}, true);
    agent = await startAgent();
    peer = new ZtunnelPeer(zdsSocket);
    peer.start();
    await until('ztunnel peer snapshot', () => peer.snapshots > 0);
  }, 60_000);

  afterAll(
    () =>
      teardownAgentTest({
        agent,
        peer,
        others: () => {
          for (const a of apps) {
            a.server.close();
            a.netns.close();
          }
        },
        api,
        topo,
        dir,
      }),
    60_000,
  );

  it("serves its effective capture options on /debug/config, the backend as detected", async () => {
    const res = await fetch(`http://127.0.0.1:${agent?.healthAddr?.port}/debug/config`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      node: 'n1',
      runDir,
      capture: { mode: 'tproxy', dnsCapture: false, ipv6: 'auto', probeSnatIp: '169.254.7.127', probeSnatIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff', backend: expect.stringMatching(/^(legacy|nft)$/) },
    });
  });

  it('a new pod in an enrolled namespace is fully captured before /cmdadd returns 200', async () => {
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe('app');
    const res = await postCmdAdd(join(runDir, 'pluginevent.sock'), cmdAddBody(web));
    expect(res).toEqual({ status: 200, text: 'pod captured\n' });
    // All of it true at the moment of the 200:
    expect(await istioLines(web.netnsPath)).toEqual(SEED_RULES);
    expect(peer.log).toContain(`add ${web.uid}`);
    expect(api.getPod('apps', 'web')?.metadata.annotations?.['ambient.istio.io/redirection']).toBe('enabled');
    expect(await nsRun(web.netnsPath, 'ip', ['rule', 'show'])).toMatch(/32764:\s+from all fwmark 0x111\/0xfff lookup 133/);
    expect(await nsRun(web.netnsPath, 'ip', ['route', 'show', 'table', '133'])).toMatch(/local default dev lo/);
    // A ztunnel handover moves queued connections instead of resetting them.
    expect((await nsRun(web.netnsPath, 'cat', ['/proc/sys/net/ipv4/tcp_migrate_req'])).trim()).toBe('1');
    expect(await nsRun(node.netnsPath, 'ipset', ['save', 'istio-inpod-probes-v4'])).toContain(`add istio-inpod-probes-v4 ${web.ip} comment "${web.uid}"`);
    expect(await istioLines(node.netnsPath)).toContain(
      '-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127',
    );
    // Traffic to the app now reaches "ztunnel" in the pod.
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    expect(agent!.pods().find((p) => p.uid === web.uid)?.state).toBe('captured');
    setRunning(web);
  });

  it('rejects bad /cmdadd bodies with 400 and unknown pods with 500, and keeps serving', async () => {
    const sock = join(runDir, 'pluginevent.sock');
    const missing = await postCmdAdd(sock, { PodName: 'web', PodNamespace: 'apps' });
    expect(missing.status).toBe(400);
    expect(missing.text).toMatch(/Netns/);
    expect((await postCmdAdd(sock, '{')).status).toBe(400);
    const unknown = await postCmdAdd(sock, { ...cmdAddBody(web), PodName: 'ghost' });
    expect(unknown.status).toBe(500);
    expect(unknown.text).toContain('apps/ghost not found');
    // A pod in a namespace that is not enrolled: nothing to do, 200, untouched.
    expect(await postCmdAdd(sock, cmdAddBody(client))).toEqual({ status: 200, text: 'pod not enrolled\n' });
    expect(await istioLines(client.netnsPath)).toEqual([]);
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
  });

  it('labelling a running pod\'s namespace enrolls it; removing the label releases it completely', async () => {
    api.setNamespaceLabels('plain', AMBIENT);
    await until('client captured', () => agent!.pods().find((p) => p.uid === client.uid)?.state === 'captured');
    expect(await istioLines(client.netnsPath)).toEqual(SEED_RULES);
    expect(peer.log).toContain(`add ${client.uid}`);
    await until('client annotated', () => api.getPod('plain', 'client')?.metadata.annotations?.['ambient.istio.io/redirection'] === 'enabled');

    api.setNamespaceLabels('plain', {});
    await until('client released', () => agent!.pods().find((p) => p.uid === client.uid)?.state === 'idle');
    expect(await istioLines(client.netnsPath)).toEqual([]);
    expect(await nsRun(client.netnsPath, 'ip', ['rule', 'show'])).not.toMatch(/lookup 133/);
    expect(peer.log).toContain(`del ${client.uid}`);
    expect(api.getPod('plain', 'client')?.metadata.annotations?.['ambient.istio.io/redirection']).toBeUndefined();
    expect(await nsRun(node.netnsPath, 'ipset', ['save', 'istio-inpod-probes-v4'])).not.toContain(client.ip);
    // The pod label opting out wins over the namespace label.
    api.updatePod('plain', 'client', (p) => {
      p.metadata.labels = { 'istio.io/dataplane-mode': 'none' };
    });
    api.setNamespaceLabels('plain', AMBIENT);
    await new Promise((r) => setTimeout(r, 300));
    expect(await istioLines(client.netnsPath)).toEqual([]);
    api.setNamespaceLabels('plain', {});
    api.updatePod('plain', 'client', (p) => {
      p.metadata.labels = {};
    });
  });

  it('bad input from the API and the runtime is logged, retried or rejected while other pods are served', async () => {
    const sock = join(runDir, 'pluginevent.sock');
    // A malformed pod object on this node: skipped.
    api.createPod({ metadata: { name: 'malformed', namespace: 'apps' }, spec: { nodeName: 'n1', hostNetwork: 'yes' } } as never);
    // The API fails the watch and list a few times: the informer restarts with backoff.
    api.failNext(4, 500, { method: 'GET', path: '/api/v1/pods' });
    api.closeWatches();
    // A sandbox whose netns vanished before the agent could enter it.
    const gone = await addPod('vanished', 'apps');
    const body = cmdAddBody(gone);
    await node.removePod(gone);
    const res = await postCmdAdd(sock, body);
    expect(res.status).toBe(500);
    expect(res.text).toMatch(/netns of pod apps\/vanished .* not found/);
    // Meanwhile everything else works: a label change after the API errors is still seen.
    api.setNamespaceLabels('plain', AMBIENT);
    await until('client captured after API errors', () => agent!.pods().find((p) => p.uid === client.uid)?.state === 'captured', 15_000);
    api.setNamespaceLabels('plain', {});
    await until('client released', () => agent!.pods().find((p) => p.uid === client.uid)?.state === 'idle', 15_000);
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    api.deletePod('apps', 'vanished');
    api.deletePod('apps', 'malformed');
    await until('vanished pod forgotten', () => !agent!.pods().some((p) => p.name === 'vanished'));
  });

  it('a ztunnel nack fails /cmdadd (fail closed), leaves the pod pending, and retries until acked', async () => {
    const pod = await addPod('nacked', 'apps');
    peer.nackWith = 'bind 15008: address in use';
    const res = await postCmdAdd(join(runDir, 'pluginevent.sock'), cmdAddBody(pod));
    expect(res.status).toBe(500);
    expect(res.text).toContain('bind 15008: address in use');
    expect(agent!.pods().find((p) => p.uid === pod.uid)?.state).toBe('pending');
    // Rules stay: the pod's traffic is blocked rather than uncaptured.
    expect(await istioLines(pod.netnsPath)).toEqual(SEED_RULES);
    expect(await tcpRead(client.netnsPath, pod.ip, 8080)).toBe('');
    await until('a Kubernetes Event for the failure', () => api.events.some((e) => (e as { reason?: string }).reason === 'AmbientCaptureFailed'));
    peer.nackWith = undefined;
    await until('retried and captured', () => agent!.pods().find((p) => p.uid === pod.uid)?.state === 'captured');
    expect(await tcpRead(client.netnsPath, pod.ip, 8080)).toBe(`ztunnel ${pod.uid}`);
  });

  it('the drift check repairs a rule deleted by hand and reports it', async () => {
    await nsRun(web.netnsPath, 'iptables', ['-t', 'nat', '-D', 'ISTIO_OUTPUT', '-p', 'tcp', '-m', 'mark', '--mark', '0x111/0xfff', '-j', 'ACCEPT']);
    await nsRun(web.netnsPath, 'ip', ['rule', 'del', 'fwmark', '0x111/0xfff', 'lookup', '133']);
    expect(await istioLines(web.netnsPath)).not.toEqual(SEED_RULES);
    expect(await agent!.checkDrift()).toBe(1);
    expect(await istioLines(web.netnsPath)).toEqual(SEED_RULES);
    expect(await nsRun(web.netnsPath, 'ip', ['rule', 'show'])).toMatch(/lookup 133/);
    expect(await agent!.checkDrift()).toBe(0);
    expect(await agent!.metrics.registry.getSingleMetricAsString('weir_cni_agent_reconcile_repairs_total')).toMatch(/ 1$/m);
    // Found in sync, so the next checks go by the netns's nftables generation (no iptables-save):
    // a rule deleted now is still seen and put back, and so is policy routing alone.
    expect(await agent!.checkDrift()).toBe(0);
    await nsRun(web.netnsPath, 'iptables', ['-t', 'nat', '-D', 'ISTIO_OUTPUT', '-p', 'tcp', '-m', 'mark', '--mark', '0x111/0xfff', '-j', 'ACCEPT']);
    expect(await agent!.checkDrift()).toBe(1);
    expect(await istioLines(web.netnsPath)).toEqual(SEED_RULES);
    expect(await agent!.checkDrift()).toBe(0);
    await nsRun(web.netnsPath, 'ip', ['rule', 'del', 'fwmark', '0x111/0xfff', 'lookup', '133']);
    expect(await agent!.checkDrift()).toBe(1);
    expect(await nsRun(web.netnsPath, 'ip', ['rule', 'show'])).toMatch(/lookup 133/);
    expect(await agent!.checkDrift()).toBe(0);
  });

  it('finds a pod netns by /proc scan: pod UID in the cgroup, never the node netns, must hold a pod IP', async () => {
    const found = await findPodNetnsInProc({ uid: web.uid, ips: [web.ip], excludeInodes: [statSync(node.netnsPath).ino] });
    expect(found).toBeDefined();
    expect(statSync(found!.path).ino).toBe(statSync(web.netnsPath).ino);
    expect(await findPodNetnsInProc({ uid: web.uid, ips: ['10.255.255.1'] })).toBeUndefined();
    expect(await findPodNetnsInProc({ uid: web.uid, ips: [web.ip], excludeInodes: [statSync(web.netnsPath).ino] })).toBeUndefined();
  });

  it('restart: pods stay captured while the agent is down, a rule deleted meanwhile is repaired, ztunnel gets a full snapshot', async () => {
    await agent!.stop();
    agent = undefined;
    // Down: the socket is gone, so the plugin cannot get a 200 (it fails the ADD).
    await expect(postCmdAdd(join(runDir, 'pluginevent.sock'), cmdAddBody(web))).rejects.toThrow(/ENOENT|ECONNREFUSED/);
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    await nsRun(web.netnsPath, 'iptables', ['-t', 'mangle', '-D', 'ISTIO_PRERT', '-s', '169.254.7.127/32', '-p', 'tcp', '-m', 'tcp', '-j', 'ACCEPT']);
    const snapshotsBefore = peer.snapshots;
    peer.log.length = 0;
    // A probe entry of a pod deleted while the agent was down.
    await nsRun(node.netnsPath, 'ipset', ['add', 'istio-inpod-probes-v4', '10.244.99.99', 'comment', 'deleted-pod-uid']);
    // Forget the remembered netns paths: the restart must find the pods through /proc.
    await rm(join(runDir, 'pod-netns.json'), { force: true });
    agent = await startAgent();
    expect(await istioLines(web.netnsPath)).toEqual(SEED_RULES);
    const probes = await nsRun(node.netnsPath, 'ipset', ['save', 'istio-inpod-probes-v4']);
    expect(probes).not.toContain('10.244.99.99');
    expect(probes).toContain(`add istio-inpod-probes-v4 ${web.ip} comment "${web.uid}"`);
    await until('a new snapshot', () => peer.snapshots > snapshotsBefore);
    expect(peer.log).toEqual(expect.arrayContaining([`add ${web.uid} (same netns)`, 'snapshot']));
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    await until('captured after the snapshot ack', () => agent!.pods().find((p) => p.uid === web.uid)?.state === 'captured');
  });

  it('pod deletion drops it from ztunnel and the probe ipset without touching the (gone) netns', async () => {
    const pod = await addPod('shortlived', 'apps');
    expect((await postCmdAdd(join(runDir, 'pluginevent.sock'), cmdAddBody(pod))).status).toBe(200);
    api.deletePod('apps', 'shortlived');
    await node.removePod(pod);
    await until('del sent', () => peer.log.includes(`del ${pod.uid}`));
    await until('forgotten', () => !agent!.pods().some((p) => p.uid === pod.uid));
    expect(await nsRun(node.netnsPath, 'ipset', ['save', 'istio-inpod-probes-v4'])).not.toContain(pod.uid);
  });
});
