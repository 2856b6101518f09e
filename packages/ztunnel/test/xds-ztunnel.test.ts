// The wiring INTEGRATION.md prescribes, on today's Ztunnel: CaClient as its certificate source,
// XdsClient writing into its WorkloadStore, ZDS started only after the first xDS response. What
// istiod pushes must show up in /config_dump and in the store the data path resolves with.
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CaClient } from '../src/ca-client/ca-client.js';
import { TunnelProtocol } from '../src/xds/gen/workload_pb.js';
import { Ztunnel } from '../src/ztunnel.js';
import { TestControlPlane, ipBytes, waitFor } from './support-control-plane.js';

let cp: TestControlPlane | undefined;
let zt: Ztunnel | undefined;
let ca: CaClient | undefined;

afterEach(async () => {
  await zt?.stop({ deadlineMs: 0 });
  ca?.close();
  await cp?.close();
});

async function configDump(port: number): Promise<{ workloads: { uid: string; workloadIps: string[] }[]; services: { hostname: string }[]; certificates: { identity: string; serial?: string }[] }> {
  const res = await fetch(`http://127.0.0.1:${port}/config_dump`);
  expect(res.status).toBe(200);
  return (await res.json()) as never;
}

it('ztunnel routes and dumps what istiod pushes, with certificates from Istio CA', async () => {
  cp = await TestControlPlane.start();
  cp.setWorkload({
    uid: 'Kubernetes//Pod/default/web-0',
    name: 'web-0',
    namespace: 'default',
    serviceAccount: 'web',
    addresses: [ipBytes('10.0.0.5')],
    tunnelProtocol: TunnelProtocol.HBONE,
    services: { 'default/web.default.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080 }] } },
  });
  cp.setService({ name: 'web', namespace: 'default', hostname: 'web.default.svc.cluster.local', addresses: [{ address: ipBytes('10.96.0.10') }], ports: [{ servicePort: 80, targetPort: 8080 }] });

  const token = () => cp!.token ?? undefined;
  ca = new CaClient({ address: `https://${cp.address}`, rootCaPem: cp.rootCaPem, trustBundlePem: cp.rootCaPem, token });
  // The control plane does not answer yet: start() waits (admin up, not ready, saying xds).
  await cp.stop();
  zt = new Ztunnel({
    inpodUds: join(tmpdir(), `wxz-${process.pid}-${randomBytes(3).toString('hex')}.sock`),
    ca,
    xds: { address: `https://${cp.address}`, rootCaPem: cp.rootCaPem, token, node: { nodeName: 'node-a' }, backoff: { initialMs: 10, maxMs: 100 } },
    adminAddress: '127.0.0.1:0',
    metricsAddress: null,
    readinessAddress: null,
  });
  let started = false;
  const starting = zt.start().then(() => (started = true));
  await waitFor('admin listening', () => zt!.addresses().admin);
  await new Promise((r) => setTimeout(r, 300));
  expect(started).toBe(false);
  expect(zt.pending()).toEqual(expect.arrayContaining([expect.stringContaining('istio.workload.Address'), expect.stringContaining('istio.security.Authorization')]));
  await cp.restart();
  await starting;
  // Only the node agent (none in this test) is left to wait for.
  expect(zt.pending()).toEqual(['node agent connection']);
  const admin = zt.addresses().admin!.port;
  const xdsDump = ((await configDump(admin)) as unknown as { xds: { types: { lastAck: unknown }[] } }).xds;
  expect(xdsDump.types).toHaveLength(2);
  expect(xdsDump.types.every((t) => t.lastAck !== null)).toBe(true);
  expect(() => new Ztunnel({ inpodUds: '/x', ca: ca!, xds: { address: 'http://x:1' }, localXdsPath: '/y' })).toThrow(expect.objectContaining({ code: 'ERR_ZTUNNEL_CONFIG' }));

  expect(zt.store.resolve('10.96.0.10', 80)).toMatchObject({ address: '10.0.0.5', port: 8080 });
  let dump = await configDump(admin);
  expect(dump.workloads.map((w) => w.uid)).toEqual(['Kubernetes//Pod/default/web-0']);
  expect(dump.services.map((s) => s.hostname)).toEqual(['web.default.svc.cluster.local']);

  // Pushed while running: in the dump promptly.
  const t0 = Date.now();
  cp.setWorkload({ uid: 'u2', name: 'db-0', namespace: 'data', addresses: [ipBytes('10.0.0.9')] });
  cp.removeService('default/web.default.svc.cluster.local');
  await waitFor('push in store', () => zt!.store.workloadByIp('10.0.0.9') && !zt!.store.serviceByVip('10.96.0.10'));
  dump = await configDump(admin);
  // Nothing on the push path waits on a timer (1 s is the idle-machine bar); the margin is for load.
  expect(Date.now() - t0).toBeLessThan(3000);
  expect(dump.workloads.map((w) => w.uid).sort()).toEqual(['Kubernetes//Pod/default/web-0', 'u2']);
  expect(dump.services).toEqual([]);

  // A pod's identity gets its certificate from the CA, and the dump shows it.
  const web = zt.store.workloadByUid('Kubernetes//Pod/default/web-0')!;
  const { release } = await zt.identities.acquire(zt.store.identityOf(web), () => {});
  dump = await configDump(admin);
  expect(dump.certificates).toEqual([expect.objectContaining({ identity: 'spiffe://cluster.local/ns/default/sa/web', serial: cp.issued[0]!.serial })]);
  expect(ca.certificates()[0]).toMatchObject({ identity: 'spiffe://cluster.local/ns/default/sa/web', serial: cp.issued[0]!.serial });
  release();
});
