/**
 * A dry-run policy is logged once per change, not once per xDS push (security review 6, section 7):
 * every push used to re-evaluate every live inbound connection and log every dry-run policy again.
 * In-process ztunnel fed by TestControlPlane over real gRPC, real pod netns with Istio's REDIRECT
 * rules, a live HBONE connection from pod a to pod b.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectTcp, openNetns, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, expect, it, onTestFinished } from 'vitest';
import { Ztunnel, createLogger } from '../src/index.js';
import { Action, Scope } from '../src/xds/gen/authorization_pb.js';
import { TunnelProtocol } from '../src/xds/gen/workload_pb.js';
import { TestControlPlane, ipBytes } from './support-control-plane.js';
import { EchoApp, capturePod, handOver, requireRoot, startAcked, testZtunnel, uniqueName, waitFor } from './support.js';

let topo: Topology;
let dir: string;
let cp: TestControlPlane;
let zds: ZdsServer;
let zt: Ztunnel;
let a: TopologyPod, b: TopologyPod;
let appB: EchoApp;
let nsA: Netns;
const log: { msg: string; [k: string]: unknown }[] = [];
const DRY_RUN = 'dry-run authorization policy evaluated';
const dryRunLines = (): number => log.filter((l) => l.msg === DRY_RUN).length;

const pod = (p: TopologyPod, sa: string) => ({
  uid: p.uid,
  name: p.name,
  namespace: p.namespace,
  serviceAccount: sa,
  trustDomain: 'cluster.local',
  addresses: [ipBytes(p.ip)],
  tunnelProtocol: TunnelProtocol.HBONE,
  node: 'n1',
});

const dryRunDeny = (port: number) => ({
  name: 'audit-ns1',
  namespace: b.namespace,
  scope: Scope.NAMESPACE,
  action: Action.DENY,
  dryRun: true,
  // From ns1 and to `port` (two clauses: both must match).
  rules: [{ clauses: [{ matches: [{ namespaces: [{ matchType: { case: 'exact' as const, value: 'ns1' } }] }] }, { matches: [{ destinationPorts: [port] }] }] }],
});

beforeAll(async () => {
  requireRoot();
  dir = await mkdtemp(join(tmpdir(), 'wzt-dry-'));
  topo = await Topology.create({ name: uniqueName('y') });
  const n1 = await topo.addNode({ name: 'n1' });
  a = await n1.addPod({ name: 'a', namespace: 'ns1' });
  b = await n1.addPod({ name: 'b', namespace: 'ns2' });
  for (const p of [a, b]) await capturePod(p, { mode: 'redirect' });
  nsA = openNetns(a.netnsPath);
  cp = await TestControlPlane.start();
  cp.setWorkload(pod(a, 'sa-a'));
  cp.setWorkload(pod(b, 'sa-b'));
  cp.setPolicy(dryRunDeny(8080));
  zds = new ZdsServer({ path: join(dir, 'zds.sock') });
  await zds.start();
  const { logger } = createLogger({ level: 'debug', format: 'json', write: (l) => log.push(JSON.parse(l) as { msg: string }) });
  zt = testZtunnel(zds, {
    xds: { address: `https://${cp.address}`, rootCaPem: cp.rootCaPem, token: () => cp.token ?? undefined, backoff: { initialMs: 10, maxMs: 100 } },
    ca: await LocalCa.create({ trustDomain: 'cluster.local' }),
    origSrc: 'never',
    logger,
  });
  await startAcked(zt, zds);
  await handOver(zds, zt, [[a, 'sa-a'], [b, 'sa-b']]);
  appB = await EchoApp.start(b, 8080);
}, 120_000);

afterAll(async () => {
  await appB?.close();
  nsA?.close();
  await zt?.stop({ deadlineMs: 0 });
  await zds?.close();
  await cp?.close();
  await topo?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

it('logs a dry-run policy when a connection is admitted and when the policy changes, not on every xDS push', async () => {
  const socket = await connectTcp({ netns: nsA, family: 4, host: b.ip, port: 8080 });
  socket.on('error', () => {});
  onTestFinished(() => void socket.destroy());
  const echo = (text: string): Promise<string> =>
    new Promise((resolve) => {
      socket.once('data', (d: Buffer) => resolve(String(d)));
      socket.write(text);
    });
  expect(await echo('one')).toBe('one');
  await waitFor('the admission dry-run line', async () => dryRunLines() === 1);
  expect(log.find((l) => l.msg === DRY_RUN)).toMatchObject({ policy: 'ns2/audit-ns1', action: 'Deny', matched: true, src: a.ip });

  // Ten pushes of a workload elsewhere in the mesh (pod churn): each replaces the store state.
  for (let i = 0; i < 10; i++) {
    cp.setWorkload({ uid: `Kubernetes//Pod/ns9/churn-${i}`, name: `churn-${i}`, namespace: 'ns9', addresses: [ipBytes(`10.250.0.${i + 1}`)] });
  }
  await waitFor('the pushes applied', async () => zt.store.workloadByIp('10.250.0.10') !== undefined);
  await new Promise((r) => setTimeout(r, 200));
  expect(dryRunLines()).toBe(1);
  // A policy of another namespace changes nothing that applies to b.
  cp.setPolicy({ name: 'elsewhere', namespace: 'ns9', scope: Scope.NAMESPACE, action: Action.DENY, rules: [] });
  await waitFor('the other policy applied', async () => zt.store.config.policies.length === 2);
  expect(dryRunLines()).toBe(1);

  // The dry-run policy itself changes: one line for the live connection, which keeps running.
  cp.setPolicy(dryRunDeny(9090));
  await waitFor('the changed dry-run line', async () => dryRunLines() === 2);
  expect(log.filter((l) => l.msg === DRY_RUN)[1]).toMatchObject({ policy: 'ns2/audit-ns1', matched: false });
  expect(await echo('two')).toBe('two');
  await new Promise((r) => setTimeout(r, 200));
  expect(dryRunLines()).toBe(2);
});
