/**
 * The plugin's acceptance suite, run once against the library in-process and once against the
 * single executable (apps/cni-plugin): the same cases must pass for both.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ChainHarness, staleSocket, TestAgent, type Invoke, type Pod } from './harness.js';

const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
/** Debian's reference plugins (1.1.1) stop at 1.0.0; a 1.1.0 chain gets their result converted, as libcni does. */
const primaryVersion = (v: string) => (v === '1.1.0' ? '1.0.0' : v);

interface CniErrorOut {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export function cniPluginSuite(label: string, invoke: Invoke): void {
  describe(`CNI plugin (${label})`, () => {
    let h: ChainHarness;
    let agent: TestAgent | undefined;

    beforeAll(async () => {
      h = await ChainHarness.create();
      h.api.setNamespaceLabels('mesh', { 'istio.io/dataplane-mode': 'ambient' });
      h.api.setNamespaceLabels('plain', {});
    });
    afterAll(async () => {
      await agent?.close();
      await h?.close();
    });
    afterEach(async () => {
      await agent?.close();
      agent = undefined;
    });

    async function add(pod: Pod, cniVersion: string, extra: Record<string, unknown> = {}) {
      const prev = await h.primaryAdd(pod, primaryVersion(cniVersion));
      prev['cniVersion'] = cniVersion;
      const out = await invoke(h.env('ADD', pod), JSON.stringify(h.pluginConf(cniVersion, prev, extra)));
      return { prev, out };
    }

    function cniError(stdout: string): CniErrorOut {
      return JSON.parse(stdout) as CniErrorOut;
    }

    it('VERSION lists the supported versions', async () => {
      const r = await invoke({ CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: '1.0.0' }));
      expect(r.exitCode).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ cniVersion: '1.0.0', supportedVersions: VERSIONS });
      const bare = await invoke({ CNI_COMMAND: 'VERSION' }, '');
      expect(JSON.parse(bare.stdout)).toEqual({ cniVersion: '1.1.0', supportedVersions: VERSIONS });
    });

    it.each(VERSIONS)('ADD for a pod the agent says is not enrolled prints the bridge result unchanged, without the API (cniVersion %s)', async (v) => {
      agent = await TestAgent.listen(h.socketPath);
      agent.mode = 'not-enrolled';
      const pod = await h.addPod(`web-${v.replaceAll('.', '')}`, 'plain');
      h.api.clearRequests();
      const { prev, out } = await add(pod, v);
      expect(out.stderr).not.toContain('ERROR');
      expect(out.stderr).toContain('node agent has nothing to capture');
      expect(out.exitCode).toBe(0);
      expect(JSON.parse(out.stdout)).toEqual(prev);
      expect(prev['cniVersion']).toBe(v);
      // The agent decides: the plugin asked it, and never the API.
      expect(agent.events).toHaveLength(1);
      expect(h.api.requests).toEqual([]);
    });

    it('with the agent unreachable, a pod outside the mesh is looked up in the API and passes through', async () => {
      const pod = await h.addPod('plain-down', 'plain');
      h.api.clearRequests();
      const { prev, out } = await add(pod, '1.0.0');
      expect(out.exitCode).toBe(0);
      expect(JSON.parse(out.stdout)).toEqual(prev);
      expect(out.stderr).toContain('node agent unreachable, checking enrollment with the Kubernetes API');
      expect(h.api.requests.map((r) => r.path).sort()).toEqual([`/api/v1/namespaces/plain`, `/api/v1/namespaces/plain/pods/${pod.name}`]);
    });

    it('converts a prevResult of another version to the config cniVersion', async () => {
      const pod = await h.addPod('convert', 'plain');
      const prev = await h.primaryAdd(pod, '1.0.0');
      const out = await invoke(h.env('ADD', pod), JSON.stringify(h.pluginConf('0.4.0', prev)));
      expect(out.exitCode).toBe(0);
      const result = JSON.parse(out.stdout) as { cniVersion: string; ips: { version: string; address: string }[] };
      expect(result.cniVersion).toBe('0.4.0');
      expect(result.ips.map((i) => i.version)).toEqual(['4']);
      expect({ ...result, cniVersion: '1.0.0', ips: result.ips.map(({ version: _v, ...rest }) => rest) }).toEqual(prev);
    });

    it('ADD for an enrolled pod with the agent down fails with code 11 naming the socket', async () => {
      const pod = await h.addPod('enrolled-down', 'mesh');
      h.api.clearRequests();
      const { out } = await add(pod, '1.0.0');
      expect(out.exitCode).not.toBe(0);
      const err = cniError(out.stdout);
      expect(err.code).toBe(11);
      expect(err.cniVersion).toBe('1.0.0');
      expect(err.msg).toContain(h.socketPath);
      expect(err.msg).toContain('unreachable (ENOENT)');
      expect(h.api.requests).toHaveLength(2);
    });

    it('a killed agent (its socket file left, nobody listening) counts as unreachable: API fallback, enrolled fails', async () => {
      const runDir = join(h.dir, 'killed-agent');
      await mkdir(runDir, { recursive: true });
      await staleSocket(join(runDir, 'pluginevent.sock'));
      const kubeconfig = join(h.runDir, 'istio-cni-kubeconfig');
      const plain = await h.addPod('plain-killed', 'plain');
      const passed = await add(plain, '1.0.0', { cni_agent_run_dir: runDir, kubeconfig });
      expect(passed.out.exitCode).toBe(0);
      expect(JSON.parse(passed.out.stdout)).toEqual(passed.prev);
      const mesh = await h.addPod('mesh-killed', 'mesh');
      const { out } = await add(mesh, '1.0.0', { cni_agent_run_dir: runDir, kubeconfig });
      const err = cniError(out.stdout);
      expect(err.code).toBe(11);
      expect(err.msg).toContain(`${join(runDir, 'pluginevent.sock')} is unreachable (ECONNREFUSED)`);
    });

    it('ADD for an enrolled pod posts the event to the agent and prints the result', async () => {
      agent = await TestAgent.listen(h.socketPath);
      const pod = await h.addPod('enrolled-up', 'plain', { labels: { 'istio.io/dataplane-mode': 'ambient' } });
      h.api.clearRequests();
      const { prev, out } = await add(pod, '1.1.0');
      expect(out.exitCode).toBe(0);
      expect(JSON.parse(out.stdout)).toEqual(prev);
      expect(out.stderr).toContain('node agent captured pod');
      expect(h.api.requests).toEqual([]);
      const ip = (prev['ips'] as { address: string; gateway: string }[])[0]!;
      expect(agent.events).toEqual([
        {
          method: 'POST',
          url: '/cmdadd',
          contentType: 'application/json',
          body: {
            Netns: pod.netnsPath,
            PodName: pod.name,
            PodNamespace: 'plain',
            PodUID: pod.uid,
            IPs: [{ Interface: 2, Address: { IP: ip.address.split('/')[0], Mask: '////AA==' }, Gateway: ip.gateway }],
          },
        },
      ]);
    });

    it('ADD fails with code 11 when the agent answers non-200, even for a pod the API would call not enrolled', async () => {
      agent = await TestAgent.listen(h.socketPath);
      agent.mode = 'fail';
      for (const [name, ns] of [['enrolled-500', 'mesh'], ['plain-500', 'plain']] as const) {
        const pod = await h.addPod(name, ns);
        h.api.clearRequests();
        const { out } = await add(pod, '0.4.0');
        const err = cniError(out.stdout);
        expect(out.exitCode).not.toBe(0);
        expect(err.code).toBe(11);
        expect(err.msg).toContain('answered 500');
        expect(err.msg).toContain('no ztunnel connection');
        // A reachable agent is the authority: no second opinion from the API.
        expect(h.api.requests).toEqual([]);
      }
    });

    it('ADD fails with code 11 when the agent answers 200 with neither "pod captured" nor "pod not enrolled"', async () => {
      agent = await TestAgent.listen(h.socketPath);
      agent.mode = 'other';
      const pod = await h.addPod('enrolled-ok', 'mesh');
      const { out } = await add(pod, '1.0.0');
      const err = cniError(out.stdout);
      expect(out.exitCode).not.toBe(0);
      expect(err.code).toBe(11);
      expect(err.msg).toContain(h.socketPath);
      expect(err.msg).toContain('answered 200 with an unknown body: ok');
    });

    it('ADD fails with code 11 when the agent does not answer within 5 s', async () => {
      agent = await TestAgent.listen(h.socketPath);
      agent.mode = 'hang';
      const pod = await h.addPod('enrolled-slow', 'mesh');
      const started = Date.now();
      const { out } = await add(pod, '1.0.0');
      expect(Date.now() - started).toBeGreaterThanOrEqual(5000);
      const err = cniError(out.stdout);
      expect(err.code).toBe(11);
      expect(err.msg).toContain(h.socketPath);
      expect(err.msg).toContain('5000 ms');
    }, 20_000);

    it('skips excluded namespaces, the agent pod and host-network sandboxes without any call', async () => {
      agent = await TestAgent.listen(h.socketPath);
      h.api.clearRequests();
      const sys = await h.addPod('coredns-1', 'kube-system', { labels: { 'istio.io/dataplane-mode': 'ambient' } });
      h.api.setNamespaceLabels('istio-system', { 'istio.io/dataplane-mode': 'ambient' });
      const agentPod = await h.addPod('istio-cni-node-x7k2p', 'istio-system');
      const hostNet = await h.addPod('host-net', 'mesh');
      for (const pod of [sys, agentPod]) {
        const { prev, out } = await add(pod, '1.0.0', { exclude_namespaces: ['kube-system'] });
        expect(out.exitCode).toBe(0);
        expect(JSON.parse(out.stdout)).toEqual(prev);
      }
      const hostNs = `/proc/${process.pid}/ns/net`;
      const r = await invoke(h.env('ADD', hostNet, { CNI_NETNS: hostNs }), JSON.stringify(h.pluginConf('1.0.0', undefined)));
      expect(r.exitCode).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ cniVersion: '1.0.0' });
      expect(h.api.requests).toEqual([]);
      expect(agent.events).toEqual([]);
    });

    it('agent unreachable and the API failing: fail closed with code 11 naming both, whatever the pod', async () => {
      const pod = await h.addPod('api-down', 'plain');
      h.api.failNext(2, 500);
      const { out } = await add(pod, '1.0.0');
      expect(out.exitCode).not.toBe(0);
      const err = cniError(out.stdout);
      expect(err.code).toBe(11);
      expect(err.msg).toContain(`node agent unreachable at ${h.socketPath} (ENOENT)`);
      expect(err.msg).toMatch(/API lookup failed: .*500/);
      expect(err.msg).toContain('not started');
    });

    it('agent unreachable and no kubeconfig: fail closed with code 11 naming both', async () => {
      const pod = await h.addPod('no-kubeconfig', 'plain');
      const { out } = await add(pod, '1.0.0', { cni_agent_run_dir: h.dir });
      const err = cniError(out.stdout);
      expect(err.code).toBe(11);
      expect(err.msg).toContain(`node agent unreachable at ${join(h.dir, 'pluginevent.sock')}`);
      expect(err.msg).toContain(`API lookup failed: kubeconfig ${join(h.dir, 'istio-cni-kubeconfig')}`);
    });

    it('reads the kubeconfig from the kubeconfig field when given (the agent-down lookup)', async () => {
      const pod = await h.addPod('custom-kc', 'plain');
      const kc = await h.api.kubeconfig(join(h.dir, 'custom-kubeconfig'));
      h.api.clearRequests();
      // The run dir has neither a socket nor a kubeconfig: only the field can lead to the API.
      const { prev, out } = await add(pod, '1.0.0', { cni_agent_run_dir: h.dir, kubeconfig: kc });
      expect(out.exitCode).toBe(0);
      expect(JSON.parse(out.stdout)).toEqual(prev);
      expect(h.api.requests).toHaveLength(2);
    });

    it('DEL twice exits 0 both times; CHECK validates', async () => {
      const pod = await h.addPod('del-check', 'plain');
      const { prev } = await add(pod, '1.0.0');
      const check = await invoke(h.env('CHECK', pod), JSON.stringify(h.pluginConf('1.0.0', prev)));
      expect(check).toMatchObject({ exitCode: 0, stdout: '' });
      const noPrev = await invoke(h.env('CHECK', pod), JSON.stringify(h.pluginConf('1.0.0', undefined)));
      expect(noPrev.exitCode).not.toBe(0);
      expect(cniError(noPrev.stdout)).toMatchObject({ code: 7 });
      expect(cniError(noPrev.stdout).msg).toContain('prevResult');
      await h.primaryDel(pod, '1.0.0');
      for (let i = 0; i < 2; i++) {
        const del = await invoke(h.env('DEL', pod, { CNI_NETNS: '' }), JSON.stringify(h.pluginConf('1.0.0', undefined)));
        expect(del).toMatchObject({ exitCode: 0, stdout: '' });
      }
    });

    it('STATUS and GC succeed for 1.1.0 and are refused (code 1) for older configs', async () => {
      const conf = JSON.stringify(h.pluginConf('1.1.0', undefined));
      expect(await invoke({ CNI_COMMAND: 'STATUS' }, conf)).toMatchObject({ exitCode: 0, stdout: '' });
      expect(await invoke({ CNI_COMMAND: 'GC', CNI_PATH: '/usr/lib/cni' }, JSON.stringify({ ...JSON.parse(conf), 'cni.dev/valid-attachments': [] }))).toMatchObject({
        exitCode: 0,
        stdout: '',
      });
      const old = await invoke({ CNI_COMMAND: 'STATUS' }, JSON.stringify(h.pluginConf('1.0.0', undefined)));
      expect(cniError(old.stdout).code).toBe(1);
    });

    describe('bad input', () => {
      let pod: Pod;
      beforeAll(async () => {
        pod = await h.addPod('bad-input', 'plain');
      });
      const conf = (): Record<string, unknown> => h.pluginConf('1.0.0', undefined);
      const cases: [string, () => string, Record<string, string>, number, string][] = [
        ['empty stdin', () => '', {}, 6, 'stdin'],
        ['invalid JSON', () => '{"cniVersion": "1.0.0", ', {}, 6, 'JSON'],
        ['wrong types', () => JSON.stringify({ ...conf(), exclude_namespaces: 'kube-system', ambient_enabled: 'yes' }), {}, 7, 'exclude_namespaces'],
        ['a wrong type of cniVersion', () => JSON.stringify({ ...conf(), cniVersion: 1 }), {}, 7, 'cniVersion'],
        ['a missing name', () => JSON.stringify({ ...conf(), name: undefined }), {}, 7, 'name'],
        ['missing CNI_NETNS on ADD', () => JSON.stringify(conf()), { CNI_NETNS: '' }, 4, 'CNI_NETNS'],
        ['an unsupported cniVersion', () => JSON.stringify({ ...conf(), cniVersion: '0.2.0' }), {}, 1, 'cniVersion'],
        ['an unknown command', () => JSON.stringify(conf()), { CNI_COMMAND: 'FROB' }, 4, 'CNI_COMMAND'],
        ['a malformed prevResult', () => JSON.stringify({ ...conf(), prevResult: { ips: [{ address: 'nope' }] } }), {}, 7, 'prevResult.ips.0.address'],
      ];
      it.each(cases)('%s', async (_name, stdin, envOverride, code, field) => {
        const r = await invoke(h.env('ADD', pod, envOverride), stdin());
        expect(r.exitCode).not.toBe(0);
        const err = cniError(r.stdout);
        expect(err.code).toBe(code);
        expect(err.msg).toContain(field);
        expect(typeof err.cniVersion).toBe('string');
      });
    });
  });
}
