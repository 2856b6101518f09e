import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { run } from '../../../packages/cni-plugin/test/harness.js';

const BIN = join(fileURLToPath(new URL('.', import.meta.url)), '../dist/weir-cni');

/** An ADD the plugin answers without any call (excluded namespace), and a DEL. */
const CONF = JSON.stringify({
  cniVersion: '1.0.0',
  name: 'k8s-pod-network',
  type: 'weir-cni',
  exclude_namespaces: ['kube-system'],
  cni_agent_run_dir: '/nonexistent/weir-env-test',
  prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.1.2.3/24' }] },
});
const CNI = {
  PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
  CNI_CONTAINERID: 'c1',
  CNI_NETNS: '/nonexistent/netns',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  CNI_ARGS: 'K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-0',
};

function exec(env: Record<string, string>, command: 'ADD' | 'DEL') {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: build it with npm run build -w @weir/app-cni-plugin`);
  return run(BIN, [], { env: { ...CNI, ...env, CNI_COMMAND: command }, input: CONF });
}

describe('weir-cni binary and the runtime environment it inherits', () => {
  it('is not broken by variables it does not own (LOG_FORMAT and friends set for something else)', async () => {
    const foreign = { LOG_FORMAT: 'logfmt', LOG_LEVEL: 'TRACE', KUBECONFIG: '/nonexistent/kubeconfig', NODE_OPTIONS: '' };
    for (const command of ['ADD', 'DEL'] as const) {
      const r = await exec(foreign, command);
      expect(r.exitCode, `${command}: ${r.stderr}`).toBe(0);
      expect(r.stderr).not.toContain('LOG_FORMAT');
    }
    const add = await exec(foreign, 'ADD');
    expect(JSON.parse(add.stdout)).toMatchObject({ ips: [{ address: '10.1.2.3/24' }] });
  });

  it('takes its log format from WEIR_CNI_LOG_FORMAT, and a bad value only warns', async () => {
    const json = await exec({ WEIR_CNI_LOG_FORMAT: 'json' }, 'ADD');
    expect(json.exitCode, json.stderr).toBe(0);
    const line = JSON.parse(json.stderr.trim().split('\n')[0] ?? '') as { msg: string; level: string };
    expect(line).toMatchObject({ level: 'info', msg: 'pod namespace excluded' });

    for (const command of ['ADD', 'DEL'] as const) {
      const bad = await exec({ WEIR_CNI_LOG_FORMAT: 'JSON5' }, command);
      expect(bad.exitCode, bad.stderr).toBe(0);
      expect(bad.stderr.match(/WEIR_CNI_LOG_FORMAT "JSON5" ignored/g)).toHaveLength(1);
      expect(bad.stderr).toMatch(/^\S+ +WARN cni: /);
    }
  });
});
