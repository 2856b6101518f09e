/**
 * Where a sandbox's ztunnels got their workloads, policies and certificates, checked from the outside in
 * both control-plane modes: each ztunnel's environment (/proc/<pid>/environ), the effective configuration
 * it printed at start, and its `/config_dump`.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { expect } from 'vitest';
import type { Sandbox, ZtunnelConfigDump } from './sandbox.js';

export const ADDRESS_TYPE = 'type.googleapis.com/istio.workload.Address';
export const AUTHORIZATION_TYPE = 'type.googleapis.com/istio.security.Authorization';
const DEMO_IDENTITY = 'spiffe://cluster.local/ns/demo/sa/default';

async function environ(pid: number): Promise<Map<string, string>> {
  const raw = await readFile(`/proc/${pid}/environ`, 'utf8');
  return new Map(
    raw
      .split('\0')
      .filter((kv) => kv.includes('='))
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
}

/**
 * local: LOCAL_XDS_PATH and the shared CA files, no xDS client. xds: no LOCAL_XDS_PATH nor local CA; the
 * control plane serves and every ztunnel holds an ACKed xDS stream to it, its Address resources are the
 * sandbox's pods, and the demo identity's certificate was issued by the control plane's CA.
 */
export async function expectConfigSource(sandbox: Sandbox): Promise<void> {
  const status = await sandbox.status();
  const cp = status.controlPlane;
  expect(cp.mode).toBe(sandbox.mode);
  const pods = JSON.parse(await readFile(sandbox.podsFilePath, 'utf8')) as { pods: Array<{ name: string; uid: string; node: string; namespace: string }> };
  for (const node of status.nodes) {
    expect(node.ztunnelPid, `${node.name} ztunnel`).toEqual(expect.any(Number));
    const env = await environ(node.ztunnelPid as number);
    const log = await sandbox.logs(node.name, 'ztunnel');
    const dump: ZtunnelConfigDump = await sandbox.configDump(node.name);
    if (cp.mode === 'local') {
      expect(env.get('LOCAL_XDS_PATH')).toBe(cp.localXdsPath);
      expect(env.get('WEIR_CA_CERT')).toBe(cp.caCert);
      expect(env.has('XDS_ADDRESS')).toBe(false);
      expect(log).toContain(`local_xds_path: ${cp.localXdsPath}\n`);
      expect(log).toContain('xds_address: ~\n');
      expect(dump.config).toMatchObject({ localXdsPath: cp.localXdsPath, xdsAddress: null });
      expect(dump.xds).toBeNull();
      continue;
    }
    expect([...env.keys()].filter((k) => k === 'LOCAL_XDS_PATH' || k.startsWith('WEIR_CA_')), `${node.name} ztunnel env`).toEqual([]);
    expect(Object.fromEntries([...env].filter(([k]) => /^(XDS_|CA_|AUTH_TOKEN|ALT_)/.test(k)))).toEqual({
      XDS_ADDRESS: cp.address,
      CA_ADDRESS: cp.address,
      XDS_ROOT_CA: cp.rootCa,
      CA_ROOT_CA: cp.rootCa,
      AUTH_TOKEN: cp.tokenFile,
      ALT_XDS_HOSTNAME: 'istiod.istio-system.svc',
      ALT_CA_HOSTNAME: 'istiod.istio-system.svc',
    });
    expect(log).toContain('local_xds_path: ~\n');
    expect(log).toContain(`xds_address: ${cp.address}\n`);
    expect(log).toContain(`ca: istio ${cp.address}\n`);
    expect(dump.config).toEqual(expect.objectContaining({ localXdsPath: null, xdsAddress: cp.address }));
    expect(dump.xds).toMatchObject({ address: cp.address, connected: true, ready: true });
    const types = dump.xds?.types ?? [];
    expect(types.map((t) => t.typeUrl).sort()).toEqual([AUTHORIZATION_TYPE, ADDRESS_TYPE].sort());
    for (const t of types) {
      expect(t.lastAck, `${node.name} ${t.typeUrl} ACKed`).not.toBeNull();
      expect(t.lastNack, `${node.name} ${t.typeUrl} NACKed`).toBeNull();
    }
    // Every pod of the sandbox is an Address resource (named by its uid) with a version from the server.
    const addresses = types.find((t) => t.typeUrl === ADDRESS_TYPE)?.resources ?? [];
    for (const pod of pods.pods) {
      const resource = addresses.find((r) => r.name.includes(pod.uid));
      expect(resource, `${node.name}: no Address resource for ${pod.namespace}/${pod.name} (${pod.uid})`).toBeDefined();
      expect(resource?.version).toMatch(/^\S+$/);
    }
    // Certificates from the control plane's CA: the CA client and the proxies hold the same one, and it
    // chains to the root the control plane wrote.
    if (pods.pods.some((p) => p.node === node.name && p.namespace === 'demo')) {
      const cert = dump.certificates.find((c) => c.identity === DEMO_IDENTITY);
      expect(cert?.serial, `${node.name}: certificate for ${DEMO_IDENTITY}`).toBeTruthy();
      expect('certificates' in dump.ca ? dump.ca.certificates.find((c) => c.identity === DEMO_IDENTITY)?.serial : 'local CA').toBe(cert?.serial);
      const root = new X509Certificate(await readFile(cp.rootCa, 'utf8'));
      const leaf = new X509Certificate(cert?.chain ?? '');
      expect(leaf.verify(root.publicKey), `${node.name}: ${DEMO_IDENTITY} certificate is not signed by ${cp.rootCa}`).toBe(true);
      expect(leaf.subjectAltName).toContain(`URI:${DEMO_IDENTITY}`);
    }
  }
  if (cp.mode === 'xds') {
    expect(cp).toMatchObject({ pid: expect.any(Number), serving: true, connected: status.nodes.map((n) => n.name).sort() });
  }
}

/** The names of the policies ztunnel on `node` holds as xDS Authorization resources. */
export async function xdsPolicies(sandbox: Sandbox, node: string): Promise<string[]> {
  const dump = await sandbox.configDump(node);
  return (dump.xds?.types.find((t) => t.typeUrl === AUTHORIZATION_TYPE)?.resources ?? []).map((r) => r.name);
}

/** uid → version of each xDS Address resource ztunnel on `node` holds (resources are named by workload uid). */
export async function addressVersions(sandbox: Sandbox, node: string): Promise<Map<string, string>> {
  const dump = await sandbox.configDump(node);
  const resources = dump.xds?.types.find((t) => t.typeUrl === ADDRESS_TYPE)?.resources ?? [];
  return new Map(resources.map((r) => [r.name.slice(r.name.lastIndexOf('/') + 1), r.version]));
}
