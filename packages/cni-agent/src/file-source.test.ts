import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FilePodSource } from './file-source.js';
import type { NamespaceInfo, PodInfo } from './pod.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'weir-agent-file-'));
  dirs.push(d);
  return d;
}

function recorder() {
  const seen: string[] = [];
  return {
    seen,
    handlers: {
      podChanged: (p: PodInfo) => seen.push(`pod ${p.namespace}/${p.name} ${JSON.stringify(p.labels)}`),
      podDeleted: (p: PodInfo) => seen.push(`deleted ${p.namespace}/${p.name}`),
      namespaceChanged: (n: NamespaceInfo) => seen.push(`ns ${n.name} ${JSON.stringify(n.labels)}`),
      invalid: (e: Error) => seen.push(`invalid ${e.message}`),
    },
  };
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('FilePodSource', () => {
  it('loads pods and namespaces, then reports label changes, deletions and bad files', async () => {
    const dir = await tmp();
    const file = join(dir, 'pods.yaml');
    await writeFile(
      file,
      `namespaces:
  - name: apps
    labels: { istio.io/dataplane-mode: ambient }
pods:
  - { name: web-0, namespace: apps, uid: u-1, ips: [10.1.0.5], netns: /var/run/netns/p1 }
  - { name: db-0, namespace: data, uid: u-2, node: other-node }
`,
    );
    const src = new FilePodSource({ path: file, nodeName: 'node-1', debounceMs: 10 });
    const r = recorder();
    await src.start(r.handlers);
    expect(src.pods().map((p) => p.name)).toEqual(['web-0']);
    expect(src.pod('apps', 'web-0')).toMatchObject({ uid: 'u-1', ips: ['10.1.0.5'], netnsPath: '/var/run/netns/p1', serviceAccount: 'default' });
    expect(src.namespace('apps')?.labels).toEqual({ 'istio.io/dataplane-mode': 'ambient' });
    expect(r.seen).toContain('pod apps/web-0 {}');

    await src.setRedirection(src.pod('apps', 'web-0')!, 'enabled');
    expect(src.pod('apps', 'web-0')?.annotations['ambient.istio.io/redirection']).toBe('enabled');

    // Atomic replace (rename over the file), as editors and the sandbox do.
    r.seen.length = 0;
    await writeFile(join(dir, 'next'), `namespaces: [{ name: apps }]\npods:\n  - { name: web-0, namespace: apps, uid: u-1, labels: { istio.io/dataplane-mode: none } }\n`);
    await rename(join(dir, 'next'), file);
    await until(() => r.seen.length >= 2);
    expect(r.seen).toEqual(['ns apps {}', 'pod apps/web-0 {"istio.io/dataplane-mode":"none"}']);

    r.seen.length = 0;
    await writeFile(file, 'pods: [ { name: broken } ]\n');
    await until(() => r.seen.length >= 1);
    expect(r.seen[0]).toMatch(/^invalid pods file .* is invalid: pods\.0\.namespace/);
    expect(src.pods().map((p) => p.name)).toEqual(['web-0']);

    r.seen.length = 0;
    await writeFile(file, 'pods: []\n');
    await until(() => r.seen.length >= 1);
    expect(r.seen).toEqual(['deleted apps/web-0']);
    await src.stop();
  });

  it('fetchPod and fetchNamespace re-read the file for a pod written a moment ago (ahead of the watch)', async () => {
    const dir = await tmp();
    const file = join(dir, 'pods.yaml');
    await writeFile(file, 'pods: []\n');
    // A debounce far past the test: only the lookup itself can have read the new pod.
    const src = new FilePodSource({ path: file, debounceMs: 60_000 });
    const r = recorder();
    await src.start(r.handlers);
    await writeFile(file, `pods:\n  - { name: new-0, namespace: fresh, uid: u-9 }\n`);
    expect(src.pod('fresh', 'new-0')).toBeUndefined();
    const [pod, ns] = await Promise.all([src.fetchPod('fresh', 'new-0'), src.fetchNamespace('fresh')]);
    expect(pod).toMatchObject({ uid: 'u-9', name: 'new-0' });
    expect(ns).toEqual({ name: 'fresh', labels: {} });
    expect(r.seen).toContain('pod fresh/new-0 {}');
    expect(await src.fetchPod('fresh', 'ghost')).toBeUndefined();
    await src.stop();
  });

  it('reads containers’ privileged and capabilities; a misspelt or mistyped securityContext rejects the file, naming the field', async () => {
    const dir = await tmp();
    const file = join(dir, 'pods.yaml');
    await writeFile(
      file,
      `pods:
  - name: web-0
    namespace: apps
    uid: u-1
    initContainers: [{ name: setup, securityContext: { capabilities: { add: [NET_ADMIN] } } }]
    containers:
      - { name: app, securityContext: { capabilities: { drop: [ALL], add: [cap_net_raw] } } }
      - { name: plain }
    ephemeralContainers: [{ name: dbg, securityContext: { privileged: true } }]
`,
    );
    const src = new FilePodSource({ path: file, debounceMs: 10 });
    const r = recorder();
    await src.start(r.handlers);
    expect(src.pod('apps', 'web-0')?.containers).toEqual([
      { name: 'setup', kind: 'initContainer', privileged: false, add: ['NET_ADMIN'], drop: [] },
      { name: 'app', kind: 'container', privileged: false, add: ['cap_net_raw'], drop: ['ALL'] },
      { name: 'plain', kind: 'container', privileged: false, add: [], drop: [] },
      { name: 'dbg', kind: 'ephemeralContainer', privileged: true, add: [], drop: [] },
    ]);
    r.seen.length = 0;
    await writeFile(file, 'pods: [ { name: web-0, namespace: apps, uid: u-1, containers: [ { name: app, securityContext: { capabilites: { drop: [ALL] } } } ] } ]\n');
    await until(() => r.seen.length >= 1);
    expect(r.seen[0]).toMatch(/is invalid: pods\.0\.containers\.0\.securityContext: Unrecognized key: "capabilites"/);
    r.seen.length = 0;
    await writeFile(file, 'pods: [ { name: web-0, namespace: apps, uid: u-1, containers: [ { name: app, securityContext: { capabilities: { add: NET_RAW } } } ] } ]\n');
    await until(() => r.seen.length >= 1);
    expect(r.seen[0]).toMatch(/is invalid: pods\.0\.containers\.0\.securityContext\.capabilities\.add: /);
    // The previous contents stay: the pod is neither dropped nor changed.
    expect(src.pod('apps', 'web-0')?.containers).toHaveLength(4);
    await src.stop();
  });

  it('fails to start on a missing file, naming it', async () => {
    const dir = await tmp();
    const src = new FilePodSource({ path: join(dir, 'nope.yaml') });
    await expect(src.start(recorder().handlers)).rejects.toThrow(/cannot read pods file .*nope\.yaml/);
  });
});
