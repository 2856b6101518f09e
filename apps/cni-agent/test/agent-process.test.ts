import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Server } from 'node:net';
import { fileURLToPath } from 'node:url';
import { FakeApiServer } from '@weir/fake-apiserver';
import { listenTcp, openNetns, type Netns } from '@weir/netns';
import { Topology, type SupervisedProcess, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { istioLines, nsRun, requireRoot, tcpRead, uniq, until, ZtunnelPeer } from '../../../packages/cni-agent/test/support.js';
import { DaemonSetApi } from './daemonset-api.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const AGENT = resolve(here, '../dist/main.js');
const PLUGIN = resolve(here, '../../cni-plugin/dist/weir-cni');
const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };

/**
 * The weir-cni-agent binary as the sandbox runs it: inside a simulated node's netns, talking to a
 * (fake) API server, installing the real weir-cni plugin into the node's CNI chain, and pods created
 * by running that chain as a runtime would.
 */
describe('weir-cni-agent process (root, real netns, real CNI chain with weir-cni, ZDS peer)', () => {
  let topo: Topology;
  let node: TopologyNode;
  let api: FakeApiServer;
  let dsApi: DaemonSetApi;
  let dir: string;
  let runDir: string;
  let zdsSocket: string;
  let apiUrl: string;
  let peer: ZtunnelPeer;
  let agent: SupervisedProcess | undefined;
  const relays: SupervisedProcess[] = [];
  const apps: { netns: Netns; server: Server }[] = [];
  let web: TopologyPod;
  let client: TopologyPod;

  async function startAgent(extraArgs: string[] = []): Promise<SupervisedProcess> {
    const p = await node.spawn({
      name: uniq('agent'),
      cmd: process.execPath,
      args: [
        AGENT,
        '--node-name', 'n1',
        '--kube-api', apiUrl,
        '--run-dir', runDir,
        '--zds-socket', zdsSocket,
        '--ready-address', '127.0.0.1:18000',
        '--install', '--plugin-binary', PLUGIN,
        '--cni-bin-dir', node.cniBinDir,
        '--cni-conf-dir', node.cniConfDir,
        '--drift-interval', '1s',
        ...extraArgs,
      ],
      env: { LOG_FORMAT: 'json', LOG_LEVEL: 'debug' },
    });
    try {
      await until('agent ready', async () => (await node.exec('curl', ['-sf', 'http://127.0.0.1:18000/readyz'])).stdout === 'ready\n', 60_000);
    } catch (err) {
      throw new Error(`${(err as Error).message}; agent log: ${(await p.readLog()).slice(-3000)}`);
    }
    // Ready comes first, then the plugin is chained (istio-cni's order).
    await until('plugin chained', async () => (await readFile(node.conflistPath, 'utf8')).includes('"weir-cni"'), 30_000);
    return p;
  }

  /** Creates the pod in the API, then runs the node's CNI chain (bridge, …, weir-cni) for it. */
  async function createPod(name: string, namespace: string): Promise<TopologyPod> {
    const uid = randomUUID();
    api.createPod({
      metadata: { name, namespace, uid },
      spec: { nodeName: 'n1', serviceAccountName: name, containers: [{ name: 'app', image: 'x' }] },
      status: { phase: 'Pending' },
    });
    const pod = await node.addPod({ name, namespace, uid });
    api.updatePod(namespace, name, (p) => {
      p.status = { phase: 'Running', podIP: pod.ip, podIPs: [{ ip: pod.ip }] };
    });
    const netns = openNetns(pod.netnsPath);
    const server = await listenTcp({ netns, host: '0.0.0.0', port: 8080 });
    server.on('connection', (s) => s.end('app\n'));
    apps.push({ netns, server });
    return pod;
  }

  beforeAll(async () => {
    await requireRoot();
    for (const f of [AGENT, PLUGIN]) if (!existsSync(f)) throw new Error(`${f} is missing: build it first (npm run build -w …)`);
    dir = await mkdtemp(join(tmpdir(), 'weir-agent-proc-'));
    runDir = join(dir, 'run');
    zdsSocket = join(dir, 'ztunnel.sock');
    topo = await Topology.create({ name: uniq('wcp') });
    node = await topo.addNode({ name: 'n1' });
    api = await FakeApiServer.start();
    api.createNamespace('apps', AMBIENT);
    api.createNamespace('plain');
    // apps/v1 DaemonSets (the agent's upgrade check) in front of the fake.
    dsApi = await DaemonSetApi.start(api);
    // The fake API listens on the test's loopback; relay it into the node netns through a unix socket.
    const relaySock = join(dir, 'api.sock');
    relays.push(
      await topo.spawn({ name: uniq('relay-host'), netns: '/proc/self/ns/net'.replace('self', String(process.pid)), cmd: 'socat', args: [`UNIX-LISTEN:${relaySock},fork`, `TCP:127.0.0.1:${new URL(dsApi.url).port}`] }),
    );
    relays.push(await node.spawn({ name: uniq('relay-node'), cmd: 'socat', args: ['TCP-LISTEN:16443,bind=127.0.0.1,fork,reuseaddr', `UNIX-CONNECT:${relaySock}`] }));
    apiUrl = 'http://127.0.0.1:16443';
    await until('relay up', () => existsSync(relaySock));
    peer = new ZtunnelPeer(zdsSocket);
    peer.start();
    agent = await startAgent();
    await until('ztunnel snapshot', () => peer.snapshots > 0);
    client = await createPod('client', 'plain');
  }, 120_000);

  afterAll(async () => {
    await agent?.stop('SIGTERM').catch(() => undefined);
    await peer?.close();
    for (const a of apps) {
      a.server.close();
      a.netns.close();
    }
    for (const r of relays) await r.stop().catch(() => undefined);
    await topo?.destroy();
    await dsApi?.close();
    await api?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('installs weir-cni last in the node conflist; a pod created in an enrolled namespace starts captured', async () => {
    const conflist = JSON.parse(await readFile(node.conflistPath, 'utf8')) as { plugins: { type: string }[] };
    expect(conflist.plugins.at(-1)?.type).toBe('weir-cni');
    web = await createPod('web', 'apps');
    // The chain (and so the pod's start) finished only after /cmdadd got its 200: all of it holds now.
    expect((await istioLines(web.netnsPath)).length).toBeGreaterThan(10);
    expect(peer.log).toContain(`add ${web.uid}`);
    expect(api.getPod('apps', 'web')?.metadata.annotations?.['ambient.istio.io/redirection']).toBe('enabled');
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    expect(await istioLines(client.netnsPath)).toEqual([]);
    const metrics = (await node.exec('curl', ['-sf', 'http://127.0.0.1:18000/metrics'])).stdout;
    expect(metrics).toMatch(/^weir_cni_agent_pods_enrolled 1$/m);
    expect(metrics).toMatch(/^weir_cni_agent_enrollment_duration_seconds_count\{trigger="cmdadd"\} 1$/m);
  });

  it('SIGKILL: pods stay captured, enrolled ADDs fail while it is down, the restart repairs drift and resends the snapshot', async () => {
    await agent!.stop('SIGKILL');
    agent = undefined;
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    // A rule deleted while the agent is down.
    await nsRun(web.netnsPath, 'iptables', ['-t', 'nat', '-D', 'ISTIO_OUTPUT', '-d', '169.254.7.127/32', '-p', 'tcp', '-m', 'tcp', '-j', 'ACCEPT']);
    const before = await istioLines(web.netnsPath);
    // No pod in an enrolled namespace starts uncaptured: the plugin fails its ADD.
    await expect(createPod('blocked', 'apps')).rejects.toThrow(/weir-cni ADD/);
    // Others are unaffected.
    const other = await createPod('other', 'plain');
    expect(await istioLines(other.netnsPath)).toEqual([]);
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);

    const snapshots = peer.snapshots;
    agent = await startAgent();
    await until('snapshot after restart', () => peer.snapshots > snapshots);
    const after = await istioLines(web.netnsPath);
    expect(after.length).toBe(before.length + 1);
    expect(after).toContain('-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT');
    expect(peer.log).toContain(`add ${web.uid} (same netns)`);
    expect(await tcpRead(client.netnsPath, web.ip, 8080)).toBe(`ztunnel ${web.uid}`);
    const log = await agent.readLog();
    expect(log).toContain('restart reconcile repaired in-pod rules');
    // And new enrolled pods start again.
    const again = await createPod('again', 'apps');
    expect(await tcpRead(client.netnsPath, again.ip, 8080)).toBe(`ztunnel ${again.uid}`);
  });

  it('the periodic drift check repairs a rule changed by hand and logs it', async () => {
    await nsRun(web.netnsPath, 'iptables', ['-t', 'mangle', '-F', 'ISTIO_PRERT']);
    await until('drift repaired', async () => (await istioLines(web.netnsPath)).some((l) => l.includes('TPROXY --on-port 15006')), 10_000);
    // The line comes once routing is checked too, just after the rules are back.
    await until('drift repair logged', async () => (await agent!.readLog()).includes('drift check repaired in-pod rules'));
  });

  it('SIGTERM without a real uninstall (upgrade) leaves the plugin chained; `uninstall` removes it', async () => {
    await agent!.stop('SIGTERM');
    agent = undefined;
    let conflist = JSON.parse(await readFile(node.conflistPath, 'utf8')) as { plugins: { type: string }[] };
    expect(conflist.plugins.at(-1)?.type).toBe('weir-cni');
    const r = await node.exec(process.execPath, [
      AGENT, 'uninstall', '--node-name', 'n1', '--pods-file', '/dev/null', '--run-dir', runDir,
      '--install', '--plugin-binary', PLUGIN, '--cni-bin-dir', node.cniBinDir, '--cni-conf-dir', node.cniConfDir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    conflist = JSON.parse(await readFile(node.conflistPath, 'utf8')) as { plugins: { type: string }[] };
    expect(conflist.plugins.map((p) => p.type)).not.toContain('weir-cni');
    expect(existsSync(join(node.cniBinDir, 'weir-cni'))).toBe(false);
  });

  it('--uninstall-on-exit: SIGTERM while the DaemonSet exists (upgrade) keeps the plugin; once it is being deleted, removes it', async () => {
    const chained = async () =>
      (JSON.parse(await readFile(node.conflistPath, 'utf8')) as { plugins: { type: string }[] }).plugins.some((p) => p.type === 'weir-cni');
    const args = ['--uninstall-on-exit', '--daemonset-name', 'weir-cni-agent', '--pod-namespace', 'weir-system'];
    dsApi.set('weir-system', 'weir-cni-agent');
    agent = await startAgent(args);
    await until('plugin chained', chained);
    expect(await agent.stop('SIGTERM', 30_000)).toMatchObject({ code: 0 });
    expect(await agent.readLog()).toContain('DaemonSet weir-system/weir-cni-agent still exists (upgrade or restart)');
    agent = undefined;
    expect(await chained()).toBe(true);
    expect(existsSync(join(node.cniBinDir, 'weir-cni'))).toBe(true);

    agent = await startAgent(args);
    dsApi.set('weir-system', 'weir-cni-agent', { deleting: true });
    expect(await agent.stop('SIGTERM', 30_000)).toMatchObject({ code: 0 });
    expect(await agent.readLog()).toContain('DaemonSet weir-system/weir-cni-agent is being deleted');
    agent = undefined;
    expect(await chained()).toBe(false);
    expect(existsSync(join(node.cniBinDir, 'weir-cni'))).toBe(false);
    expect(dsApi.requests.map((r) => r.status)).toEqual([200, 200]);
  });
});
