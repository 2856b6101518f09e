import { describe, expect, it } from 'vitest';
import { decodeStdin } from './config.js';
import { cniResultSchema, parsePluginConfig } from './config-schema.js';
import { DEFAULT_ENABLEMENT_SELECTORS } from './enrollment.js';
import { CniPluginError } from './errors.js';

const base = { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'weir-cni' };

function fails(conf: Record<string, unknown>): CniPluginError {
  try {
    parsePluginConfig(conf);
  } catch (err) {
    return err as CniPluginError;
  }
  throw new Error('expected a CniPluginError');
}

describe('parsePluginConfig', () => {
  it('applies istio-cni defaults', () => {
    const c = parsePluginConfig(base);
    expect(c).toMatchObject({
      cniVersion: '1.0.0',
      pluginLogLevel: 'info',
      cniAgentRunDir: '/var/run/istio-cni',
      ambientEnabled: true,
      excludeNamespaces: [],
      podNamespace: 'istio-system',
      kubeconfigPath: '/var/run/istio-cni/istio-cni-kubeconfig',
      prevResult: undefined,
    });
    expect(c.enablementSelectors).toEqual(DEFAULT_ENABLEMENT_SELECTORS);
  });

  it('honours the kubeconfig field and the older kubernetes block', () => {
    expect(parsePluginConfig({ ...base, cni_agent_run_dir: '/run/x/', kubeconfig: '/etc/kc' }).kubeconfigPath).toBe('/etc/kc');
    expect(parsePluginConfig({ ...base, cni_agent_run_dir: '/run/x/' }).kubeconfigPath).toBe('/run/x/istio-cni-kubeconfig');
    const old = parsePluginConfig({ ...base, exclude_namespaces: ['a'], kubernetes: { kubeconfig: '/k', exclude_namespaces: ['b'] } });
    expect(old).toMatchObject({ kubeconfigPath: '/k', excludeNamespaces: ['a', 'b'] });
  });

  it('names each bad field with code 7, an unsupported version with code 1', () => {
    const e = fails({ ...base, plugin_log_level: 'loud', enablement_selectors: [{ podSelector: { matchExpressions: [{ key: 'a', operator: 'Near' }] } }] });
    expect(e.cniCode).toBe(7);
    expect(e.message).toContain('plugin_log_level');
    expect(e.message).toContain('enablement_selectors.0.podSelector.matchExpressions.0.operator');
    expect(fails({ ...base, name: 'bad name' }).message).toContain('name');
    expect(fails({ ...base, cniVersion: '0.2.0' }).cniCode).toBe(1);
    expect(fails({ ...base, cniVersion: undefined }).cniCode).toBe(7);
  });

  it('decodes stdin or fails with code 6', () => {
    expect(decodeStdin(Buffer.from(JSON.stringify(base)))).toEqual(base);
    for (const bad of ['', '  \n', '[1]', 'null', '{']) {
      expect(() => decodeStdin(bad)).toThrow(CniPluginError);
    }
  });

  it('keeps unknown fields (prevResult passes through unchanged) and refuses each bad field with code 7', () => {
    const prevResult = {
      dns: { nameservers: ['10.96.0.10'], x: 1 },
      routes: [{ gw: '10.244.1.1', dst: '0.0.0.0/0' }],
      extra: { a: [1, 2] },
      ips: [{ gateway: '10.244.1.1', address: '10.244.1.5/24', interface: 2, mtu: 1500 }, { address: 'fd00::5/64', version: '6' }],
      interfaces: [{ mac: '0a:58:0a:f4:01:05', name: 'eth0', sandbox: '/var/run/netns/x' }],
      cniVersion: '1.0.0',
    };
    const conf = { ...base, prevResult, exclude_namespaces: ['kube-system'], kubernetes: { exclude_namespaces: ['x'], other: true }, custom: 'kept' };
    const parsed = parsePluginConfig(conf);
    expect(parsed.prevResult).toEqual(prevResult);
    expect(cniResultSchema.parse(prevResult)).toEqual(prevResult);
    expect(parsed.excludeNamespaces).toEqual(['kube-system', 'x']);
    expect(parsed.raw).toBe(conf);
    expect(parsePluginConfig({ ...conf, enablement_selectors: DEFAULT_ENABLEMENT_SELECTORS }).enablementSelectors).toEqual(DEFAULT_ENABLEMENT_SELECTORS);
    expect(fails({ ...conf, prevResult: { ...prevResult, ips: [{ address: '10.244.1.5' }] } }).message).toBe(
      'invalid network config: prevResult.ips.0.address: must be a CIDR address like 10.0.0.5/24',
    );
    expect(fails({ ...conf, ambient_enabled: 'yes' }).message).toBe('invalid network config: ambient_enabled: Invalid input: expected boolean, received string');
    for (const bad of [
      { ...conf, prevResult: { ...prevResult, ips: [{ address: '10.244.1.5/24', interface: -1 }] } },
      { ...conf, prevResult: { ...prevResult, interfaces: [{ mac: 'x' }] } },
      { ...conf, exclude_namespaces: ['a', 1] },
      { ...conf, kubernetes: { kubeconfig: '' } },
      { ...conf, pod_namespace: null },
    ]) {
      expect(fails(bad).cniCode).toBe(7);
    }
  });
});
