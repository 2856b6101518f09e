import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import {
  ApiException,
  CoreV1Api,
  EventsV1Api,
  KubeConfig,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type V1Namespace,
  type V1Pod,
} from '@kubernetes/client-node';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeApiServer } from './server.js';
import type { WatchEvent } from './types.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-fake-api-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let server: FakeApiServer;
let kc: KubeConfig;
let api: CoreV1Api;
beforeEach(async () => {
  server = await FakeApiServer.start();
  kc = new KubeConfig();
  kc.loadFromFile(await server.kubeconfig(join(dir, `kc-${Math.random()}`)));
  api = kc.makeApiClient(CoreV1Api);
});
afterEach(async () => {
  await server.close();
});

function pod(name: string, namespace = 'default', extra: Partial<V1Pod> = {}): V1Pod & { metadata: { name: string } } {
  return {
    metadata: { name, namespace, labels: { app: name }, ...extra.metadata },
    spec: { nodeName: 'node-1', containers: [{ name: 'c', image: 'busybox' }], ...extra.spec },
    ...(extra.status ? { status: extra.status } : {}),
  };
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Opens a raw watch and collects its events, to assert the wire format itself. */
function rawWatch(path: string): { events: WatchEvent[]; ended: Promise<void>; close: () => void } {
  const events: WatchEvent[] = [];
  const u = new URL(server.url + path);
  let close = () => {};
  const ended = new Promise<void>((resolve, reject) => {
    const req = httpRequest(u, (res) => {
      expect(res.statusCode).toBe(200);
      const lines = createInterface(res);
      lines.on('line', (l) => events.push(JSON.parse(l) as WatchEvent));
      lines.on('error', () => resolve());
      res.on('error', () => resolve());
      res.on('end', resolve);
      res.on('close', resolve);
    });
    req.on('error', reject);
    req.end();
    close = () => req.destroy();
  });
  return { events, ended, close };
}

describe('list and get', () => {
  it('lists pods with the list resourceVersion, field and label selectors', async () => {
    server.createPod(pod('a'));
    server.createPod(pod('b', 'other', { spec: { nodeName: 'node-2', containers: [] } }));
    server.createPod(pod('c', 'other', { metadata: { name: 'c', labels: { tier: 'web' } } }));
    const all = await api.listPodForAllNamespaces();
    expect(all.items.map((p) => p.metadata?.name)).toEqual(['a', 'b', 'c']);
    expect(all.metadata?.resourceVersion).toBe(server.resourceVersion);
    const onNode = await api.listPodForAllNamespaces({ fieldSelector: 'spec.nodeName=node-1' });
    expect(onNode.items.map((p) => p.metadata?.name)).toEqual(['a', 'c']);
    const ns = await api.listNamespacedPod({ namespace: 'other', labelSelector: 'tier in (web,db)' });
    expect(ns.items.map((p) => p.metadata?.name)).toEqual(['c']);
    const notWeb = await api.listNamespacedPod({ namespace: 'other', labelSelector: 'tier!=web' });
    expect(notWeb.items.map((p) => p.metadata?.name)).toEqual(['b']);
    const got = await api.readNamespacedPod({ namespace: 'other', name: 'b' });
    expect(got.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(got.spec?.nodeName).toBe('node-2');
  });

  it('pages with limit and continue', async () => {
    for (const n of ['p1', 'p2', 'p3']) server.createPod(pod(n));
    const first = await api.listNamespacedPod({ namespace: 'default', limit: 2 });
    expect(first.items).toHaveLength(2);
    expect(first.metadata?._continue).toBeTruthy();
    const second = await api.listNamespacedPod({ namespace: 'default', limit: 2, _continue: first.metadata?._continue ?? '' });
    expect(second.items.map((p) => p.metadata?.name)).toEqual(['p3']);
    expect(second.metadata?._continue).toBeUndefined();
  });

  it('answers 404 with a NotFound Status, and 400 for a bad selector', async () => {
    const err = await api.readNamespacedPod({ namespace: 'default', name: 'nope' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiException);
    expect((err as ApiException<unknown>).code).toBe(404);
    const body = JSON.parse((err as ApiException<string>).body) as Record<string, unknown>;
    expect(body).toMatchObject({ kind: 'Status', status: 'Failure', reason: 'NotFound', code: 404, message: 'pods "nope" not found' });
    const bad = await api.listPodForAllNamespaces({ fieldSelector: 'spec.bogus=1' }).catch((e: unknown) => e);
    expect((bad as ApiException<unknown>).code).toBe(400);
  });

  it('gets, lists and labels namespaces', async () => {
    server.setNamespaceLabels('mesh', { 'istio.io/dataplane-mode': 'ambient' });
    const ns = await api.readNamespace({ name: 'mesh' });
    expect(ns.metadata?.labels).toEqual({ 'kubernetes.io/metadata.name': 'mesh', 'istio.io/dataplane-mode': 'ambient' });
    expect(ns.status?.phase).toBe('Active');
    const list = await api.listNamespace({ labelSelector: 'istio.io/dataplane-mode=ambient' });
    expect(list.items.map((n) => n.metadata?.name)).toEqual(['mesh']);
  });
});

describe('informers', () => {
  it('lists, then watches adds, updates and deletes', async () => {
    server.createPod(pod('before'));
    const informer = makeInformer(
      kc,
      '/api/v1/pods',
      () => api.listPodForAllNamespaces({ fieldSelector: 'spec.nodeName=node-1' }),
      undefined,
    );
    const seen: string[] = [];
    informer.on('add', (p) => seen.push(`add ${p.metadata?.name}`));
    informer.on('update', (p) => seen.push(`update ${p.metadata?.name} ${p.metadata?.labels?.['v'] ?? ''}`));
    informer.on('delete', (p) => seen.push(`delete ${p.metadata?.name}`));
    await informer.start();
    try {
      await until(() => server.watchCount === 1, 'the informer watch');
      expect(seen).toEqual(['add before']);
      server.createPod(pod('after'));
      server.updatePod('default', 'after', (p) => {
        p.metadata.labels = { ...p.metadata.labels, v: '2' };
      });
      server.deletePod('default', 'before');
      await until(() => seen.length === 4, 'four informer events');
      expect(seen).toEqual(['add before', 'add after', 'update after 2', 'delete before']);
      expect(informer.list().map((p) => p.metadata?.name)).toEqual(['after']);
      // A clean close of the watch: the informer resumes from its version, no relist, no replay.
      server.clearRequests();
      server.closeWatches();
      await until(() => server.watchCount === 1, 'the informer to re-watch');
      expect(server.requests.filter((r) => !r.watch)).toHaveLength(0);
      expect(server.requests[0]?.query['resourceVersion']).toBe((informer as unknown as { latestResourceVersion(): string }).latestResourceVersion());
      expect(seen).toHaveLength(4);
    } finally {
      await informer.stop();
    }
  });

  it('relists after 410 Gone when history is compacted', async () => {
    server.createPod(pod('one'));
    const informer = makeInformer(kc, '/api/v1/namespaces/default/pods', () => api.listNamespacedPod({ namespace: 'default' }));
    const seen: string[] = [];
    informer.on('add', (p) => seen.push(`add ${p.metadata?.name}`));
    informer.on('delete', (p) => seen.push(`delete ${p.metadata?.name}`));
    await informer.start();
    try {
      await until(() => server.watchCount === 1, 'the informer watch');
      server.clearRequests();
      server.compact();
      // Changes made while the informer is relisting are picked up by the relist itself.
      server.deletePod('default', 'one');
      server.createPod(pod('two'));
      await until(() => seen.includes('add two') && seen.includes('delete one'), 'relist after 410');
      const lists = server.requests.filter((r) => !r.watch && r.method === 'GET');
      expect(lists.length).toBeGreaterThanOrEqual(1);
      expect(informer.list().map((p) => p.metadata?.name)).toEqual(['two']);
    } finally {
      await informer.stop();
    }
  });

  it('watches namespaces', async () => {
    const informer = makeInformer(kc, '/api/v1/namespaces', () => api.listNamespace());
    const labels = new Map<string, string | undefined>();
    const record = (n: V1Namespace) => labels.set(n.metadata?.name ?? '', n.metadata?.labels?.['istio.io/dataplane-mode']);
    informer.on('add', record);
    informer.on('update', record);
    await informer.start();
    try {
      await until(() => server.watchCount === 1, 'the informer watch');
      server.setNamespaceLabels('apps', { 'istio.io/dataplane-mode': 'ambient' });
      await until(() => labels.get('apps') === 'ambient', 'namespace label');
      server.setNamespaceLabels('apps', {});
      await until(() => labels.has('apps') && labels.get('apps') === undefined, 'label removed');
    } finally {
      await informer.stop();
    }
  });
});

describe('watch wire format', () => {
  it('replays from a resourceVersion, converts selector transitions, sends bookmarks', async () => {
    server.createPod(pod('x'));
    const from = server.resourceVersion;
    server.createPod(pod('y'));
    const w = rawWatch(`/api/v1/pods?watch=true&resourceVersion=${from}&labelSelector=app%3Dy&allowWatchBookmarks=true`);
    await until(() => w.events.length === 1, 'the replayed event');
    expect(w.events[0]).toMatchObject({ type: 'ADDED', object: { kind: 'Pod', apiVersion: 'v1', metadata: { name: 'y' } } });
    server.updatePod('default', 'y', (p) => {
      p.metadata.labels = { app: 'moved' };
    });
    server.updatePod('default', 'y', (p) => {
      p.metadata.labels = { app: 'y' };
    });
    server.sendBookmarks();
    await until(() => w.events.length === 4, 'transition events and a bookmark');
    expect(w.events.slice(1).map((e) => e.type)).toEqual(['DELETED', 'ADDED', 'BOOKMARK']);
    expect(w.events[3]?.object).toEqual({ kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: server.resourceVersion } });
    w.close();
  });

  it('answers a watch from a compacted version with an ERROR 410 Expired Status and closes', async () => {
    server.createPod(pod('x'));
    const old = server.resourceVersion;
    server.compact();
    const w = rawWatch(`/api/v1/pods?watch=true&resourceVersion=${old}`);
    await w.ended;
    expect(w.events).toEqual([
      {
        type: 'ERROR',
        object: expect.objectContaining({ kind: 'Status', code: 410, reason: 'Expired', status: 'Failure' }) as unknown,
      },
    ]);
  });

  it('sends synthetic ADDED events for a watch without a version, then an initial-events-end bookmark', async () => {
    server.createPod(pod('x'));
    const w = rawWatch('/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan');
    await until(() => w.events.length === 2, 'initial events');
    expect(w.events.map((e) => e.type)).toEqual(['ADDED', 'BOOKMARK']);
    expect((w.events[1]?.object as { metadata: { annotations: Record<string, string> } }).metadata.annotations).toEqual({
      'k8s.io/initial-events-end': 'true',
    });
    w.close();
  });
});

describe('writes', () => {
  it('merge-patches pod status and annotations via the status subresource, leaving spec alone', async () => {
    server.createPod(pod('web'));
    const before = server.getPod('default', 'web');
    const patched = await api.patchNamespacedPodStatus(
      {
        namespace: 'default',
        name: 'web',
        body: { metadata: { annotations: { 'ambient.istio.io/redirection': 'enabled' } }, spec: { nodeName: 'evil' }, status: { podIP: '10.0.0.5' } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    expect(patched.metadata?.annotations).toEqual({ 'ambient.istio.io/redirection': 'enabled' });
    expect(patched.status?.podIP).toBe('10.0.0.5');
    expect(patched.spec?.nodeName).toBe('node-1');
    expect(Number(patched.metadata?.resourceVersion)).toBeGreaterThan(Number(before?.metadata.resourceVersion));
    const req = server.requests.at(-1);
    expect(req).toMatchObject({ method: 'PATCH', path: '/api/v1/namespaces/default/pods/web/status', contentType: 'application/merge-patch+json' });
    // null removes a key (RFC 7386); strategic merge is applied as a merge for metadata.
    const removed = await api.patchNamespacedPodStatus(
      { namespace: 'default', name: 'web', body: { metadata: { annotations: { 'ambient.istio.io/redirection': null } } } },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
    expect(removed.metadata?.annotations).toEqual({});
  });

  it('applies JSON patches (the client default) and rejects a failed test with 422', async () => {
    server.createPod(pod('web'));
    const out = await api.patchNamespacedPod({
      namespace: 'default',
      name: 'web',
      body: [{ op: 'add', path: '/metadata/labels/extra', value: 'yes' }],
    });
    expect(out.metadata?.labels).toEqual({ app: 'web', extra: 'yes' });
    const err = await api
      .patchNamespacedPod({ namespace: 'default', name: 'web', body: [{ op: 'test', path: '/metadata/name', value: 'other' }] })
      .catch((e: unknown) => e);
    expect((err as ApiException<unknown>).code).toBe(422);
  });

  it('answers 409 for a stale resourceVersion and for creating an existing pod', async () => {
    const created = await api.createNamespacedPod({ namespace: 'default', body: pod('web') }).catch(async (e: unknown) => {
      throw e;
    });
    expect(created.metadata?.resourceVersion).toBeTruthy();
    const dup = await api.createNamespacedPod({ namespace: 'default', body: pod('web') }).catch((e: unknown) => e);
    expect((dup as ApiException<unknown>).code).toBe(409);
    expect(JSON.parse((dup as ApiException<string>).body)).toMatchObject({ reason: 'AlreadyExists' });
    server.updatePod('default', 'web', (p) => {
      p.metadata.labels = { changed: 'yes' };
    });
    const stale = await api
      .replaceNamespacedPodStatus({ namespace: 'default', name: 'web', body: created })
      .catch((e: unknown) => e);
    expect((stale as ApiException<unknown>).code).toBe(409);
    expect(JSON.parse((stale as ApiException<string>).body)).toMatchObject({ reason: 'Conflict', code: 409 });
  });

  it('records core and events.k8s.io events', async () => {
    server.createNamespace('apps');
    await api.createNamespacedEvent({
      namespace: 'apps',
      body: {
        metadata: { generateName: 'web.' },
        involvedObject: { kind: 'Pod', name: 'web', namespace: 'apps' },
        reason: 'Enrolled',
        message: 'pod captured',
        type: 'Normal',
      },
    });
    const ev = kc.makeApiClient(EventsV1Api);
    await ev.createNamespacedEvent({
      namespace: 'apps',
      body: { metadata: { name: 'web.2' }, eventTime: new Date(), reason: 'Enrolled', action: 'Capture', reportingController: 'weir', reportingInstance: 'n1' },
    });
    expect(server.events.map((e) => [e.apiVersion, e['reason']])).toEqual([
      ['v1', 'Enrolled'],
      ['events.k8s.io/v1', 'Enrolled'],
    ]);
    expect(server.events[0]?.metadata.name).toMatch(/^web\./);
  });
});

describe('test controls', () => {
  it('failNext injects Status errors for matching requests only', async () => {
    server.createPod(pod('web'));
    server.failNext(2, 500, { method: 'GET', path: /\/pods\/web$/ });
    await api.listPodForAllNamespaces(); // does not match
    for (let i = 0; i < 2; i++) {
      const err = await api.readNamespacedPod({ namespace: 'default', name: 'web' }).catch((e: unknown) => e);
      expect((err as ApiException<unknown>).code).toBe(500);
      expect(JSON.parse((err as ApiException<string>).body)).toMatchObject({ kind: 'Status', reason: 'InternalError', code: 500 });
    }
    await expect(api.readNamespacedPod({ namespace: 'default', name: 'web' })).resolves.toBeTruthy();
    expect(server.requests.map((r) => r.status)).toEqual([200, 500, 500, 200]);
  });

  it('writes a kubeconfig a client can load', async () => {
    const path = await server.kubeconfig(join(dir, 'kc.yaml'), { token: 't0k' });
    const text = await readFile(path, 'utf8');
    expect(text).toContain(`server: ${server.url}`);
    expect(text).toContain('token: t0k');
  });
});
