import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cniArgs, loadConfList, pluginConfig, resultIpv4 } from './cni.js';
import { primaryConfList } from './node.js';

describe('CNI config handling', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'topology-cni-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads the lexically first config, wrapping a single-plugin .conf into a list', async () => {
    await writeFile(join(dir, '20-other.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'other', plugins: [{ type: 'ptp' }] }));
    await writeFile(join(dir, '10-net.conf'), JSON.stringify({ cniVersion: '0.4.0', name: 'net', type: 'bridge', bridge: 'br9' }));
    await writeFile(join(dir, '00-ignored.conflist.tmp'), '{');
    expect(await loadConfList(dir)).toEqual({ cniVersion: '0.4.0', name: 'net', plugins: [{ type: 'bridge', bridge: 'br9' }] });
  });

  it('names the directory when there is nothing to load', async () => {
    await expect(loadConfList(dir)).rejects.toThrow(`no CNI network config in ${dir}`);
  });

  it('gives each plugin the list name and version, and prevResult only when there is one', () => {
    const list = primaryConfList({ podCidr: '10.244.3.0/24', ipamDataDir: '/x/ipam', cniVersion: '1.0.0', chain: [{ type: 'weir-cni', config: { cni_agent_run_dir: '/run/w' } }] });
    expect(list.plugins.map((p) => p.type)).toEqual(['bridge', 'weir-cni']);
    expect(list.plugins[0]).toMatchObject({ bridge: 'cni0', isGateway: true, ipMasq: false, ipam: { type: 'host-local', ranges: [[{ subnet: '10.244.3.0/24' }]], dataDir: '/x/ipam' } });
    const first = pluginConfig(list, list.plugins[0] as (typeof list.plugins)[0], undefined);
    expect(first).not.toHaveProperty('prevResult');
    const prev = { cniVersion: '1.0.0', ips: [{ address: '10.244.3.2/24' }] };
    expect(pluginConfig(list, list.plugins[1] as (typeof list.plugins)[0], prev)).toEqual({
      type: 'weir-cni',
      cni_agent_run_dir: '/run/w',
      cniVersion: '1.0.0',
      name: 'k8s-pod-network',
      prevResult: prev,
    });
  });

  it('formats CNI_ARGS as kubelet runtimes do and reads the pod IPv4 from a result', () => {
    expect(cniArgs({ containerId: 'c1', netnsPath: '/n', ifName: 'eth0', podName: 'web', podNamespace: 'demo', podUid: 'u1' })).toBe(
      'IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1',
    );
    expect(resultIpv4({ cniVersion: '1.0.0', ips: [{ address: 'fd00::2/64' }, { address: '10.244.1.7/24' }] })).toBe('10.244.1.7');
    expect(resultIpv4({ cniVersion: '1.0.0' })).toBeUndefined();
  });
});
