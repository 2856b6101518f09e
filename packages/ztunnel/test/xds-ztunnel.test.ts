// The wiring INTEGRATION.md prescribes, on today's Ztunnel: CaClient as its certificate source,
// XdsClient writing into its WorkloadStore, ZDS started only after the first xDS response. What
// istiod pushes must show up in /config_dump and in the store the data path resolves with.
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CaClient } from '../src/ca-client/ca-client.js';
import { XdsClient } from '../src/xds/client.js';
import { TunnelProtocol } from '../src/xds/gen/workload_pb.js';
import { Ztunnel } from '../src/ztunnel.js';
import { TestControlPlane, ipBytes, waitFor } from './support-control-plane.js';

let cp: TestControlPlane | undefined;
let zt: Ztunnel | undefined;
let xds: XdsClient | undefined;
let ca: CaClient | undefined;

afterEach(async () => {
  await xds?.close();
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
  zt = new Ztunnel({
    inpodUds: join(tmpdir(), `wxz-${process.pid}-${randomBytes(3).toString('hex')}.sock`),
    ca,
    adminAddress: '127.0.0.1:0',
    metricsAddress: null,
    readinessAddress: null,
  });
  xds = new XdsClient({ address: `https://${cp.address}`, rootCaPem: cp.rootCaPem, token, store: zt.store, node: { nodeName: 'node-a' } });
  xds.start();
  await xds.ready();
  await zt.start();
  const admin = zt.addresses().admin!.port;

  expect(zt.store.resolve('10.96.0.10', 80)).toMatchObject({ address: '10.0.0.5', port: 8080 });
  let dump = await configDump(admin);
  expect(dump.workloads.map((w) => w.uid)).toEqual(['Kubernetes//Pod/default/web-0']);
  expect(dump.services.map((s) => s.hostname)).toEqual(['web.default.svc.cluster.local']);

  // Pushed while running: in the dump within 1 s.
  const t0 = Date.now();
  cp.setWorkload({ uid: 'u2', name: 'db-0', namespace: 'data', addresses: [ipBytes('10.0.0.9')] });
  cp.removeService('default/web.default.svc.cluster.local');
  await waitFor('push in store', () => zt!.store.workloadByIp('10.0.0.9') && !zt!.store.serviceByVip('10.96.0.10'));
  dump = await configDump(admin);
  expect(Date.now() - t0).toBeLessThan(1000);
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
