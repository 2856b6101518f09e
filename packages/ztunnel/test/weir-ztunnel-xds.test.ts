// The real `weir-ztunnel` binary against "istiod": the real `weir-test-control-plane` binary (Delta
// xDS + Istio CA over TLS with a bearer token) in the node's netns, serving a YAML file it re-reads.
// Pods handed over by ZDS are taken only once xDS is ready; a DENY pushed over xDS refuses real pod
// traffic within a second; certificates come from the CA; a control plane outage keeps traffic going.
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openNetns, type Netns } from '@weir/netns';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type SupervisedProcess, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { EchoApp, capturePod, execFileP, localConfigYaml, podListeners, requireRoot, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

const here = dirname(fileURLToPath(import.meta.url));
const ZTUNNEL = join(here, '../../../apps/ztunnel/dist/main.js');
const CONTROL_PLANE = join(here, '../../../apps/ztunnel/dist/test-control-plane.js');
const CP_ADDR = '127.0.0.1:15012';

let topo: Topology;
let dir: string;
let n1: TopologyNode;
let a: TopologyPod, b: TopologyPod;
let zds: ZdsServer;
let zt: SupervisedProcess;
let cp: SupervisedProcess | undefined;
let appB: EchoApp;
let nsA: Netns;
let configPath: string;

const workloads = () => [
  { pod: a, serviceAccount: 'sa-a', node: 'n1' },
  { pod: b, serviceAccount: 'sa-b', node: 'n1' },
];

async function nodeGet(url: string): Promise<{ status: number; body: string }> {
  const r = await n1.exec('curl', ['-s', '-m', '5', '-w', '\n%{http_code}', url]);
  const i = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(i + 1)), body: r.stdout.slice(0, i) };
}

interface Dump {
  xds: { types: { typeUrl: string; resources: { name: string }[]; lastAck?: unknown; lastNack?: unknown }[] } | null;
  ca: { certificates?: { identity: string; serial: string }[] };
  certificates: { identity: string; serial?: string; chain?: string }[];
  pods: unknown[];
}
const dump = async (): Promise<Dump> => JSON.parse((await nodeGet('http://127.0.0.1:15000/config_dump')).body) as Dump;

const startControlPlane = (): Promise<SupervisedProcess> =>
  n1.spawn({
    name: `cp-${Date.now()}`,
    cmd: process.execPath,
    args: [CONTROL_PLANE, '--config', configPath, '--out-dir', join(dir, 'cp'), '--listen', CP_ADDR, '--token', 'test-token'],
  });

beforeAll(async () => {
  requireRoot();
  for (const bin of [ZTUNNEL, CONTROL_PLANE]) {
    if (!(await readFile(bin).then(() => true, () => false))) {
      await execFileP('npm', ['run', 'build', '-w', '@weir/app-ztunnel'], { cwd: join(here, '../../..'), timeout: 120_000 });
    }
  }
  dir = await mkdtemp(join(tmpdir(), 'wzt-xds-'));
  topo = await Topology.create({ name: uniqueName('x') });
  n1 = await topo.addNode({ name: 'n1' });
  a = await n1.addPod({ name: 'a', namespace: 'ns1' });
  b = await n1.addPod({ name: 'b', namespace: 'ns2' });
  for (const p of [a, b]) await capturePod(p);
  configPath = join(dir, 'mesh.yaml');
  await writeFile(configPath, localConfigYaml(workloads()));
  zds = new ZdsServer({ path: join(dir, 'ztunnel.sock') });
  await zds.start();
  // Not connected yet: the pods ride the snapshot.
  for (const [pod, sa] of [[a, 'sa-a'], [b, 'sa-b']] as const) await zdsAddPod(zds, pod, sa).catch(() => {});
  appB = await EchoApp.start(b, 8080);
  nsA = openNetns(a.netnsPath);
}, 120_000);

afterAll(async () => {
  if (cp) process.kill(cp.pid, 'SIGCONT');
  await cp?.stop();
  await appB?.close();
  nsA?.close();
  await zds?.close();
  await topo?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

it('takes pods only after xDS is ready, enforces what xDS pushes within 1 s, uses CA certificates, survives a control plane outage', async () => {
  // The token and root files exist before the control plane does (as a mounted secret would).
  await writeFile(join(dir, 'token'), 'test-token');
  cp = await startControlPlane();
  await cp.waitForOutput('"xdsAddress"', 15_000);
  const root = await readFile(join(dir, 'cp', 'root-cert.pem'), 'utf8');
  // Frozen: connections are accepted by the kernel but never answered (an istiod not serving yet).
  process.kill(cp.pid, 'SIGSTOP');

  zt = await n1.spawn({
    name: 'ztunnel-xds',
    cmd: process.execPath,
    args: [ZTUNNEL],
    env: {
      INPOD_UDS: zds.path,
      NODE_NAME: 'n1',
      XDS_ADDRESS: `https://${CP_ADDR}`,
      XDS_ROOT_CA: join(dir, 'cp', 'root-cert.pem'),
      AUTH_TOKEN: join(dir, 'token'),
      POD_NAME: 'ztunnel-n1',
      POD_NAMESPACE: 'istio-system',
      ISTIO_META_ENABLE_HBONE: 'true',
      CONNECTION_TERMINATION_DEADLINE: '1s',
      DNS_PROXY: 'false',
    },
  });
  await zt.waitForOutput(/^xds_address: https:\/\/127\.0\.0\.1:15012$/m);
  await zt.waitForOutput(/^log_level: /m);
  const log = await zt.readLog();
  expect(log).toMatch(/^ca_address: https:\/\/127\.0\.0\.1:15012$/m);
  expect(log).toMatch(/^proxy_metadata: \{"ENABLE_HBONE":"true"\}$/m);

  // Control plane not answering: not ready, saying why, and no pod taken over.
  await waitFor('readiness served', async () => (await nodeGet('http://127.0.0.1:15021/healthz/ready')).status === 500);
  await new Promise((r) => setTimeout(r, 1500));
  expect((await nodeGet('http://127.0.0.1:15021/healthz/ready')).body).toContain('xds');
  expect((await podListeners(a)).has(15001)).toBe(false);
  expect((await dump()).pods).toEqual([]);

  process.kill(cp.pid, 'SIGCONT');
  await waitFor('ready after xDS', async () => (await nodeGet('http://127.0.0.1:15021/healthz/ready')).status === 200, 30_000);
  for (const pod of [a, b]) expect((await podListeners(pod)).get(15001), pod.name).toEqual([zt.pid]);
  expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');

  // Certificates: issued by the control plane's CA, the same serial in the CA client and the manager.
  let d = await dump();
  expect(d.xds?.types.map((t) => t.typeUrl).sort()).toEqual(['type.googleapis.com/istio.security.Authorization', 'type.googleapis.com/istio.workload.Address']);
  expect(d.xds?.types.every((t) => t.lastAck && !t.lastNack)).toBe(true);
  const certB = d.certificates.find((c) => c.identity === 'spiffe://cluster.local/ns/ns2/sa/sa-b');
  expect(certB?.serial).toBeTruthy();
  expect(d.ca.certificates?.find((c) => c.identity === certB!.identity)?.serial).toBe(certB!.serial);
  const leaf = new X509Certificate(certB!.chain!);
  expect(leaf.verify(new X509Certificate(root).publicKey)).toBe(true);
  expect(leaf.serialNumber.toLowerCase().replace(/^0+/, '')).toBe(certB!.serial!.toLowerCase().replace(/[^0-9a-f]/g, '').replace(/^0+/, ''));

  // A DENY pushed over xDS refuses new connections within 1 s.
  await writeFile(configPath, localConfigYaml(workloads(), '- {name: deny-8080, namespace: ns2, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}'));
  const t0 = Date.now();
  await waitFor('DENY enforced', async () => (await tryConnect(nsA, b.ip, 8080, 2000)) !== 'ok', 10_000);
  // 1 s + the control plane's 200 ms file poll on an idle machine; nothing on the push path waits
  // on a timer, so the margin (two processes and a netns connect on a loaded machine) hides no fallback.
  expect(Date.now() - t0).toBeLessThan(4000);
  d = await dump();
  expect(d.xds?.types.find((t) => t.typeUrl.endsWith('Authorization'))?.resources.map((r) => r.name)).toEqual([expect.stringContaining('deny-8080')]);
  await writeFile(configPath, localConfigYaml(workloads()));
  await waitFor('DENY removed', async () => (await tryConnect(nsA, b.ip, 8080, 2000)) === 'ok', 5000);

  // Control plane (xDS and CA) gone: state and cached certificates keep traffic flowing, still ready.
  await cp.stop();
  cp = undefined;
  await new Promise((r) => setTimeout(r, 1000));
  expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
  expect((await nodeGet('http://127.0.0.1:15021/healthz/ready')).status).toBe(200);
  expect((await dump()).certificates.find((c) => c.identity === certB!.identity)?.serial).toBe(certB!.serial);
}, 180_000);
