// The Helm chart, without a cluster: the real helm binary lints and renders it, every rendered object
// is validated against the Kubernetes schemas (unknown fields rejected), the env it sets is accepted
// by the binaries' own config parsers, and values.schema.json rejects unknown keys.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { chartDir, helmBinary } from '../src/helm.js';
import { validateObject } from '../src/kube-validate.js';
import { buildWorkspaces, repoRoot, run, runOk } from '../src/workspace.js';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

let helm: string;
beforeAll(async () => {
  helm = await helmBinary();
  await buildWorkspaces(['@weir/app-ztunnel', '@weir/app-cni-agent']);
});

async function template(set: string[] = [], namespace = 'weir-system'): Promise<Obj[]> {
  const r = await runOk(helm, ['template', 'weir', chartDir, '--namespace', namespace, ...set.flatMap((s) => ['--set', s])]);
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null);
}

function find(objs: Obj[], kind: string, name: string): Obj {
  const o = objs.find((x) => x.kind === kind && x.metadata?.name === name);
  if (!o) throw new Error(`no ${kind}/${name} among ${objs.map((x) => `${x.kind}/${x.metadata?.name}`).join(', ')}`);
  return o;
}

/** A container's env as the kubelet would give it (fieldRefs resolved to plausible values). */
function envOf(container: Obj): Record<string, string> {
  const fieldValues: Record<string, string> = { 'spec.nodeName': 'node-a', 'metadata.namespace': 'weir-system', 'metadata.name': 'pod-a', 'status.podIP': '10.0.0.7' };
  return Object.fromEntries(
    (container.env as Obj[]).map((e) => [e.name, e.value ?? fieldValues[e.valueFrom?.fieldRef?.fieldPath] ?? `<unresolved ${JSON.stringify(e.valueFrom)}>`]),
  );
}

const variants: [string, string[]][] = [
  ['defaults', []],
  ['k3s', ['profile=k3s']],
  ['minikube', ['profile=minikube']],
  ['gke', ['profile=gke']],
  ['everything on', ['ipv6=true', 'dnsCapture=true', 'redirectMode=redirect', 'iptablesBackend=nft', 'logLevel=debug', 'logFormat=json', 'istiod.address=istiod.istio-system.svc:15012', 'ca.secretName=weir-ca', 'excludedNamespaces={kube-system,monitoring}', 'image.pullSecrets={regcred}', 'agent.captureConcurrency=4']],
];

it('helm lint --strict passes for the defaults and every profile', async () => {
  for (const [label, set] of variants) {
    const r = await run(helm, ['lint', '--strict', chartDir, ...set.flatMap((s) => ['--set', s])]);
    expect(r.code, `helm lint (${label}):\n${r.stdout}${r.stderr}`).toBe(0);
  }
});

describe.each(variants)('rendered with %s', (_label, set) => {
  let objs: Obj[];
  beforeAll(async () => {
    objs = await template(set);
  });

  it('every object is valid against the Kubernetes schemas, with no unknown fields', async () => {
    expect(objs.length).toBeGreaterThanOrEqual(9);
    const problems = (await Promise.all(objs.map((o) => validateObject(o)))).flat();
    expect(problems).toEqual([]);
  });

  it('the agent and ztunnel env is accepted by the binaries’ own config parsers', async () => {
    const agent = find(objs, 'DaemonSet', 'weir-cni-agent').spec.template.spec.containers[0];
    const ztunnel = find(objs, 'DaemonSet', 'weir-ztunnel').spec.template.spec.containers[0];
    const agentConfig = (await import(pathToFileURL(join(repoRoot, 'apps/cni-agent/dist/config.js')).href)) as {
      parseConfig(argv: string[], env: Record<string, string>): { ok: boolean; errors?: string[]; config?: Obj };
    };
    const parsed = agentConfig.parseConfig(agent.args, envOf(agent));
    expect(parsed.errors ?? []).toEqual([]);
    expect(parsed.ok).toBe(true);
    const ztunnelConfig = (await import(pathToFileURL(join(repoRoot, 'apps/ztunnel/dist/config.js')).href)) as {
      parseConfig(env: Record<string, string>): Obj;
    };
    const z = ztunnelConfig.parseConfig(envOf(ztunnel));
    expect(z.inpodUds).toBe(parsed.config!['zds-socket']);
    expect(z.ipv6Enabled).toBe(parsed.config!.ipv6);
    expect(JSON.stringify(z)).toContain('"instanceIp":"10.0.0.7"'); // the pod IP, not the 1.1.1.1 default
  });
});

it('sets every env name from the names the binaries read (apps/*/src/config.ts), nothing misspelt', async () => {
  const objs = await template(variants[4]![1]);
  const agentSrc = readFileSync(join(repoRoot, 'apps/cni-agent/src/config.ts'), 'utf8');
  const agentNames = new Set([...agentSrc.matchAll(/^\s+'?[a-z0-9-]+'?: '([A-Z][A-Z0-9_]+)',$/gm)].map((m) => m[1]!));
  const ztunnelSrc = readFileSync(join(repoRoot, 'apps/ztunnel/src/config.ts'), 'utf8');
  const schema = ztunnelSrc.slice(ztunnelSrc.indexOf('const envSchema'), ztunnelSrc.indexOf('});', ztunnelSrc.indexOf('const envSchema')));
  const ztunnelNames = new Set([...schema.matchAll(/^\s+([A-Z][A-Z0-9_]+):/gm)].map((m) => m[1]!));
  expect(agentNames.size).toBeGreaterThan(10);
  expect(ztunnelNames.size).toBeGreaterThan(10);
  // Istio ztunnel's names for istiod (CA_ADDRESS, XDS_ADDRESS) and its pod identity: set for
  // compatibility with Istio's ztunnel image; Weir's ztunnel does not read them yet.
  const istioOnly = new Set(['CA_ADDRESS', 'XDS_ADDRESS', 'POD_NAME', 'POD_NAMESPACE']);
  const agentEnv = Object.keys(envOf(find(objs, 'DaemonSet', 'weir-cni-agent').spec.template.spec.containers[0]));
  const ztunnelEnv = Object.keys(envOf(find(objs, 'DaemonSet', 'weir-ztunnel').spec.template.spec.containers[0]));
  expect(agentEnv.filter((n) => !agentNames.has(n))).toEqual([]);
  expect(ztunnelEnv.filter((n) => !ztunnelNames.has(n) && !istioOnly.has(n))).toEqual([]);
});

describe('DaemonSets', () => {
  let objs: Obj[];
  beforeAll(async () => {
    objs = await template();
  });

  it('the agent: host network and PID (the /proc scan), host CNI paths, only the capabilities it needs', () => {
    const ds = find(objs, 'DaemonSet', 'weir-cni-agent');
    const pod = ds.spec.template.spec;
    expect(pod.hostNetwork).toBe(true);
    expect(pod.hostPID).toBe(true);
    expect(pod.priorityClassName).toBe('system-node-critical');
    expect(pod.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(pod.terminationGracePeriodSeconds).toBe(30);
    expect(ds.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
    const c = pod.containers[0];
    expect(c.image).toBe('localhost/weir/cni-agent:0.0.0');
    expect(c.securityContext.privileged).toBe(false);
    expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN', 'SYS_PTRACE', 'DAC_OVERRIDE'] });
    expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 8000 });
    expect(c.livenessProbe.httpGet).toEqual({ path: '/metrics', port: 8000 });
    const hostPaths = Object.fromEntries((pod.volumes as Obj[]).filter((v) => v.hostPath).map((v) => [v.name, v.hostPath.path]));
    expect(hostPaths).toEqual({
      'cni-bin-dir': '/opt/cni/bin',
      'cni-conf-dir': '/etc/cni/net.d',
      'cni-run-dir': '/var/run/istio-cni',
      'ztunnel-socket-dir': '/var/run/ztunnel',
      'netns-dir': '/var/run/netns',
      'xtables-lock': '/run/xtables.lock',
    });
    expect(envOf(c).EXCLUDE_NAMESPACES).toBe('kube-system,weir-system');
  });

  it('ztunnel: its own netns, NET_ADMIN + SYS_ADMIN + NET_RAW only, surge upgrade, readiness on 15021', () => {
    const ds = find(objs, 'DaemonSet', 'weir-ztunnel');
    const pod = ds.spec.template.spec;
    expect(pod.hostNetwork).toBeUndefined();
    expect(pod.hostPID).toBeUndefined();
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(ds.spec.updateStrategy.rollingUpdate).toEqual({ maxSurge: 1, maxUnavailable: 0 });
    const c = pod.containers[0];
    expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'], add: ['NET_ADMIN', 'SYS_ADMIN', 'NET_RAW'] });
    expect(c.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(c.readinessProbe.httpGet).toEqual({ path: '/healthz/ready', port: 15021 });
    expect(envOf(c).TERMINATION_GRACE_PERIOD_SECONDS).toBe(String(pod.terminationGracePeriodSeconds));
  });

  it('RBAC: the agent may watch pods and namespaces, patch pods/status and create events; nothing more', () => {
    const role = find(objs, 'ClusterRole', 'weir-cni-agent');
    expect(role.rules).toEqual([
      { apiGroups: [''], resources: ['pods', 'namespaces'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: [''], resources: ['pods/status'], verbs: ['patch'] },
      { apiGroups: ['', 'events.k8s.io'], resources: ['events'], verbs: ['create'] },
    ]);
    const binding = find(objs, 'ClusterRoleBinding', 'weir-cni-agent');
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'weir-cni-agent', namespace: 'weir-system' }]);
    find(objs, 'ServiceAccount', 'weir-ztunnel');
    expect(find(objs, 'ConfigMap', 'weir-config').data['local-xds.yaml']).toContain('workloads: []');
  });

  it('profiles pick the CNI directories of their distribution', async () => {
    const paths = async (set: string[]): Promise<Obj> => {
      const ds = find(await template(set), 'DaemonSet', 'weir-cni-agent');
      return Object.fromEntries((ds.spec.template.spec.volumes as Obj[]).filter((v) => v.hostPath).map((v) => [v.name, v.hostPath.path]));
    };
    expect(await paths(['profile=k3s'])).toMatchObject({ 'cni-bin-dir': '/var/lib/rancher/k3s/data/current/bin', 'cni-conf-dir': '/var/lib/rancher/k3s/agent/etc/cni/net.d' });
    expect(await paths(['profile=minikube'])).toMatchObject({ 'cni-bin-dir': '/opt/cni/bin', 'netns-dir': '/var/run/docker/netns' });
    expect(await paths(['profile=gke'])).toMatchObject({ 'cni-bin-dir': '/home/kubernetes/bin' });
    expect(await paths(['profile=gke', 'cni.binDir=/custom/bin'])).toMatchObject({ 'cni-bin-dir': '/custom/bin' });
    const gke = await template(['profile=gke']);
    expect(find(gke, 'ResourceQuota', 'weir-node-critical').spec.scopeSelector.matchExpressions[0].values).toEqual(['system-node-critical']);
  });

  it('istiod: ztunnel gets a projected token with the istio-ca audience and the address', async () => {
    const objs2 = await template(['istiod.address=istiod.istio-system.svc:15012']);
    const pod = find(objs2, 'DaemonSet', 'weir-ztunnel').spec.template.spec;
    const token = (pod.volumes as Obj[]).find((v) => v.name === 'istio-token');
    expect(token?.projected.sources[0].serviceAccountToken).toMatchObject({ audience: 'istio-ca', path: 'istio-token' });
    const env = envOf(pod.containers[0]);
    expect(env.CA_ADDRESS).toBe('https://istiod.istio-system.svc:15012');
    expect(env.XDS_ADDRESS).toBe('https://istiod.istio-system.svc:15012');
    expect(env.AUTH_TOKEN).toBe('/var/run/secrets/tokens/istio-token');
    // One source of workload state and of certificates: istiod, not the local file or CA.
    expect(env.LOCAL_XDS_PATH).toBeUndefined();
    expect(env.WEIR_CA_CERT).toBeUndefined();
  });
});

describe('values.schema.json', () => {
  it.each([
    ['an unknown top-level key', 'colour=blue', "additional properties 'colour' not allowed"],
    ['a misspelt nested key', 'agent.readyport=9000', "additional properties 'readyport' not allowed"],
    ['a misspelt CNI key', 'cni.binDirs=/x', "additional properties 'binDirs' not allowed"],
    ['an unknown profile', 'profile=openshift', 'profile'],
    ['a bad redirect mode', 'redirectMode=nat', 'redirectMode'],
    ['a relative CNI directory', 'cni.confDir=etc/cni', 'confDir'],
  ])('rejects %s', async (_what, set, message) => {
    const r = await run(helm, ['template', 'weir', chartDir, '--set', set]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('values don\'t meet the specifications of the schema');
    expect(r.stderr).toContain(message);
  });
});

describe('the offline validator', () => {
  it('rejects a misspelt field, a wrong type and a missing required field', async () => {
    const [ds] = (await template()).filter((o) => o.kind === 'DaemonSet');
    const bad = structuredClone(ds!);
    bad.spec.template.spec.hostPid = true;
    bad.spec.template.spec.containers[0].ports[0].containerPort = 'eight thousand';
    delete bad.spec.selector;
    const problems = (await validateObject(bad)).join('\n');
    expect(problems).toContain('spec.template.spec.hostPid: unknown field');
    expect(problems).toMatch(/containerPort/);
    expect(problems).toMatch(/selector/);
  });
});
