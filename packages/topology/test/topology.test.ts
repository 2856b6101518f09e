import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CniInvocationError,
  Topology,
  cniArgs,
  httpEcho,
  listNetns,
  run,
  tcpEcho,
  type TopologyNode,
  type TopologyPod,
} from '../src/index.js';
import { netnsOwnedBy, requirePrerequisites, rootNetnsView, uniqueName } from './helpers.js';

const recordPlugin = fileURLToPath(new URL('./fixtures/record-plugin.mjs', import.meta.url));

describe('two nodes, two pods each', () => {
  const name = uniqueName('t');
  let rootBefore: Awaited<ReturnType<typeof rootNetnsView>>;
  let topo: Topology;
  let node1: TopologyNode;
  let node2: TopologyNode;
  let a1: TopologyPod;
  let a2: TopologyPod;
  let b1: TopologyPod;
  let b2: TopologyPod;
  let recordDir: string;

  beforeAll(async () => {
    await requirePrerequisites();
    rootBefore = await rootNetnsView();
    topo = await Topology.create({ name });
    recordDir = join(topo.stateDir, 'records');
    node1 = await topo.addNode({ name: 'node-1', cniChain: [{ type: 'record', binary: recordPlugin, config: { recordDir } }] });
    node2 = await topo.addNode({ name: 'node-2' });
    [a1, a2, b1, b2] = await Promise.all([
      node1.addPod({ name: 'a1', namespace: 'demo', labels: { app: 'a1' } }),
      node1.addPod({ name: 'a2', namespace: 'demo' }),
      node2.addPod({ name: 'b1', namespace: 'demo' }),
      node2.addPod({ name: 'b2', namespace: 'legacy' }),
    ]);
  });

  afterAll(async () => {
    await topo?.destroy();
  });

  it('gives each node an underlay address and its pods addresses from its pod CIDR', () => {
    expect(node1.ip).toBe('172.18.0.11');
    expect(node2.ip).toBe('172.18.0.12');
    expect(node1.podCidr).toBe('10.244.1.0/24');
    expect(node2.podCidr).toBe('10.244.2.0/24');
    for (const pod of [a1, a2]) expect(pod.ip).toMatch(/^10\.244\.1\.\d+$/);
    for (const pod of [b1, b2]) expect(pod.ip).toMatch(/^10\.244\.2\.\d+$/);
    expect(new Set([a1.ip, a2.ip, b1.ip, b2.ip]).size).toBe(4);
    expect(a1.netnsPath).toBe(`/var/run/netns/${name}-demo-a1`);
    expect(a1.labels).toEqual({ app: 'a1' });
    expect(a1.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(a1.containerId).toMatch(/^[0-9a-f]{64}$/);
  });

  it('wires the pod netns as the bridge plugin reported it', async () => {
    const eth0 = a1.cniResult.interfaces?.find((i) => i.name === 'eth0');
    expect(eth0?.sandbox).toBe(a1.netnsPath);
    expect(a1.cniResult.ips?.[0]).toMatchObject({ address: `${a1.ip}/24`, gateway: '10.244.1.1' });
    const addr = await a1.exec('ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0'], { check: true });
    expect(addr.stdout).toContain(`inet ${a1.ip}/24`);
    const route = await a1.exec('ip', ['route', 'show', 'default'], { check: true });
    expect(route.stdout.trim()).toBe('default via 10.244.1.1 dev eth0');
    const bridge = await node1.exec('ip', ['-4', '-o', 'addr', 'show', 'dev', 'cni0'], { check: true });
    expect(bridge.stdout).toContain('inet 10.244.1.1/24');
    const routes = await node1.exec('ip', ['route', 'show', '10.244.2.0/24'], { check: true });
    expect(routes.stdout.trim()).toBe('10.244.2.0/24 via 172.18.0.12 dev eth0');
  });

  it('never touches the root netns: links, routes and rules are unchanged while it runs', async () => {
    expect(await rootNetnsView()).toEqual(rootBefore);
    const ours = await netnsOwnedBy(name);
    expect(ours.sort()).toEqual([`${name}-demo-a1`, `${name}-demo-a2`, `${name}-demo-b1`, `${name}-legacy-b2`, `${name}-node-1`, `${name}-node-2`, `${name}-underlay`].sort());
  });

  it('carries real TCP between pods on the same node, byte for byte, without NAT', async () => {
    const server = await a2.spawn({ name: 'same-node-echo', ...tcpEcho({ port: 9000 }) });
    await server.waitForOutput('listening on');
    const result = await a1.probeTcp({ host: a2.ip, port: 9000, bytes: 1 << 20 });
    expect(result).toMatchObject({ ok: true, remote: `${a2.ip}:9000`, sentBytes: 1 << 20, receivedBytes: 1 << 20 });
    expect(result.receivedSha256).toBe(result.sentSha256);
    expect(result.local?.startsWith(`${a1.ip}:`)).toBe(true);
    await server.waitForOutput(`connection from ${result.local}`);
    await server.stop();
  });

  it('carries real TCP across nodes, and the server sees the client pod address', async () => {
    const sink = await b1.spawn({ name: 'cross-node-sink', ...tcpEcho({ port: 9001, mode: 'sink' }) });
    await sink.waitForOutput('listening on');
    const result = await a1.probeTcp({ host: b1.ip, port: 9001, payload: 'hello across nodes' });
    expect(result.ok).toBe(true);
    const answer = JSON.parse(result.received ?? '') as { bytes: number; client: string; sha256: string };
    expect(answer).toMatchObject({ bytes: 18, client: result.local, sha256: result.sentSha256 });
    expect(answer.client.startsWith(`${a1.ip}:`)).toBe(true);
  });

  it('captures what crosses the underlay between the nodes', async () => {
    const capture = await topo.capture(topo.underlayNetnsPath, { name: 'wire', filter: 'tcp port 9002' });
    const sink = await b1.spawn({ name: 'wire-sink', ...tcpEcho({ port: 9002, mode: 'sink' }) });
    await sink.waitForOutput('listening on');
    const secret = `plaintext-${Date.now()}`;
    expect((await a1.probeTcp({ host: b1.ip, port: 9002, payload: secret })).ok).toBe(true);
    await capture.stop();
    expect((await capture.bytes()).includes(secret)).toBe(true);
    expect(await capture.decode()).toContain(`${a1.ip}.`);
    // Same-node traffic never reaches the underlay.
    const local = await topo.capture(topo.underlayNetnsPath, { name: 'local', filter: 'tcp port 9002' });
    expect((await a2.probeTcp({ host: b1.ip, port: 9002, payload: 'x' })).ok).toBe(true);
    const sameNode = await a2.spawn({ name: 'same-sink', ...tcpEcho({ port: 9002, mode: 'sink' }) });
    await sameNode.waitForOutput('listening on');
    expect((await a1.probeTcp({ host: a2.ip, port: 9002, payload: 'same-node-secret' })).ok).toBe(true);
    await local.stop();
    expect((await local.bytes()).includes('same-node-secret')).toBe(false);
    // …while a2's cross-node connection did (its address, in the IP header).
    expect((await local.bytes()).includes(Buffer.from(a2.ip.split('.').map(Number)))).toBe(true);
  });

  it('serves HTTP from the echo program to a pod on the other node', async () => {
    const server = await b2.spawn({ name: 'httpbin', ...httpEcho({ port: 8000, name: 'httpbin' }) });
    await server.waitForOutput('listening on');
    const curl = await a2.exec('curl', ['-sS', '-H', 'x-test: yes', `http://${b2.ip}:8000/anything?q=1`], { check: true });
    const body = JSON.parse(curl.stdout) as { server: string; method: string; path: string; query: object; headers: Record<string, string>; client: { address: string } };
    expect(body).toMatchObject({ server: 'httpbin', method: 'GET', path: '/anything', query: { q: '1' }, client: { address: a2.ip } });
    expect(body.headers['x-test']).toBe('yes');
    const status = await a2.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://${b2.ip}:8000/status/418`]);
    expect(status.stdout).toBe('418');
    expect(await server.readLog()).toContain(`request GET /anything from ${a2.ip}:`);
  });

  it('refuses a connection to a port nobody listens on (a real RST, not a timeout)', async () => {
    const result = await a1.probeTcp({ host: b1.ip, port: 9999, timeoutMs: 3000 });
    expect(result).toMatchObject({ ok: false, code: 'ECONNREFUSED' });
  });

  it('runs the chain as a runtime does: node netns, CNI_* env, K8S args, prevResult threaded', async () => {
    const records = readdirSync(recordDir)
      .filter((f) => f.endsWith('-ADD.json'))
      .map((f) => JSON.parse(readFileSync(join(recordDir, f), 'utf8')) as { env: Record<string, string>; config: Record<string, unknown>; netns: string });
    const record = records.find((r) => r.env.CNI_CONTAINERID === a1.containerId);
    expect(record).toBeDefined();
    expect(record?.env).toEqual({
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: a1.containerId,
      CNI_NETNS: a1.netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_PATH: node1.cniBinDir,
      CNI_ARGS: cniArgs(a1.runtimeArgs),
    });
    expect(record?.env.CNI_ARGS).toBe(`IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=a1;K8S_POD_INFRA_CONTAINER_ID=${a1.containerId};K8S_POD_UID=${a1.uid}`);
    expect(record?.config).toMatchObject({ type: 'record', name: 'k8s-pod-network', cniVersion: '1.0.0', recordDir });
    expect((record?.config.prevResult as { ips: Array<{ address: string }> }).ips[0]?.address).toBe(`${a1.ip}/24`);
    const nodeNetns = (await node1.exec('readlink', ['/proc/self/ns/net'], { check: true })).stdout.trim();
    expect(record?.netns).toBe(nodeNetns);
    // The final result of the chain is what the last plugin printed.
    expect(a1.cniResult).toEqual(record?.config.prevResult);
  });

  it('puts pod processes in a cgroup named by the pod UID, as kubelet does', async () => {
    const pause = a1.processes.find((p) => p.name === 'demo.a1.pause');
    expect(pause?.running).toBe(true);
    const cgroup = readFileSync(`/proc/${pause?.pid}/cgroup`, 'utf8');
    expect(cgroup).toContain(`/kubepods/besteffort/pod${a1.uid}/${a1.containerId}`);
    const netns = (await a1.exec('readlink', ['/proc/self/ns/net'], { check: true })).stdout.trim();
    expect(await run('readlink', [`/proc/${pause?.pid}/ns/net`]).then((r) => r.stdout.trim())).toBe(netns);
  });

  it('runs CNI CHECK through the chain, which fails once the pod lost its address', async () => {
    await node1.checkPod(a1);
    const check = readdirSync(recordDir)
      .filter((f) => f.endsWith('-CHECK.json'))
      .map((f) => JSON.parse(readFileSync(join(recordDir, f), 'utf8')) as { env: Record<string, string>; config: Record<string, unknown> })
      .find((r) => r.env.CNI_CONTAINERID === a1.containerId);
    expect(check?.config.prevResult).toEqual(a1.cniResult);
    const pod = await node2.addPod({ name: 'checked', namespace: 'demo' });
    await node2.checkPod(pod);
    await pod.exec('ip', ['addr', 'flush', 'dev', 'eth0'], { check: true });
    await expect(node2.checkPod(pod)).rejects.toThrow(/CNI plugin bridge CHECK for pod demo\/checked failed/);
    await node2.removePod(pod);
  });

  it('removes a pod with CNI DEL (reverse order, cached result), releasing its address and netns', async () => {
    const pod = await node1.addPod({ name: 'short-lived', namespace: 'demo' });
    const ipamFile = join(topo.stateDir, 'nodes', 'node-1', 'cni', 'ipam', 'k8s-pod-network', pod.ip);
    expect(existsSync(ipamFile)).toBe(true);
    const worker = await pod.spawn({ name: 'short-lived-worker', cmd: 'sleep', args: ['1000'] });
    await node1.removePod(pod);
    expect(worker.running).toBe(false);
    expect(existsSync(ipamFile)).toBe(false);
    expect(await listNetns()).not.toContain(pod.netns);
    expect(node1.pod('demo', 'short-lived')).toBeUndefined();
    const del = readdirSync(recordDir)
      .filter((f) => f.endsWith('-DEL.json'))
      .map((f) => JSON.parse(readFileSync(join(recordDir, f), 'utf8')) as { env: Record<string, string>; config: Record<string, unknown> })
      .find((r) => r.env.CNI_CONTAINERID === pod.containerId);
    expect(del?.config.prevResult).toEqual(pod.cniResult);
  });

  it('rolls back a pod whose chain ADD fails, reporting the plugin error', async () => {
    await node2.installCniPlugin({ type: 'record', binary: recordPlugin, config: { recordDir: join(topo.stateDir, 'fail'), fail: 'yes' } });
    const error = await node2.addPod({ name: 'doomed', namespace: 'demo' }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(CniInvocationError);
    expect((error as CniInvocationError).cniCode).toBe(11);
    expect((error as Error).message).toContain('CNI plugin record ADD for pod demo/doomed failed');
    expect((error as Error).message).toContain('asked to fail; fail=yes');
    expect(await netnsOwnedBy(`${name}-demo-doomed`)).toEqual([]);
    expect(node2.pod('demo', 'doomed')).toBeUndefined();
    // The bridge plugin's DEL ran too: the address went back to the pool.
    expect(readdirSync(join(topo.stateDir, 'nodes', 'node-2', 'cni', 'ipam', 'k8s-pod-network')).filter((f) => /^\d/.test(f)).sort()).toEqual([b1.ip, b2.ip].sort());
  });

  it('can be attached from its state file by another handle', async () => {
    const other = await Topology.attach(topo.stateDir);
    expect(other.nodes.map((n) => n.name)).toEqual(['node-1', 'node-2']);
    expect(other.pod('legacy', 'b2')?.ip).toBe(b2.ip);
    expect(other.process('httpbin')?.running).toBe(true);
    expect(other.process('httpbin')?.pid).toBe(topo.process('httpbin')?.pid);
  });

  it('destroys everything it made, leaves the root netns as it was, and is idempotent', async () => {
    const processes = topo.processes;
    const report = await topo.destroy();
    expect(report.netns).toHaveLength(7);
    expect(await netnsOwnedBy(name)).toEqual([]);
    expect(await rootNetnsView()).toEqual(rootBefore);
    expect(existsSync(topo.stateDir)).toBe(false);
    expect(processes.filter((p) => p.running).map((p) => p.name)).toEqual([]);
    await topo.destroy();
    await expect(node1.addPod({ name: 'late', namespace: 'demo' })).rejects.toMatchObject({ code: 'TOPOLOGY_DESTROYED' });
  });
});
