import { statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { FakeApiServer, createTestPki } from '@weir/fake-apiserver';
import { afterEach, describe, expect, it } from 'vitest';
import { PodController } from './controller.js';
import { CniAgentError } from './errors.js';
import { KubePodSource } from './kube-source.js';
import { AgentMetrics } from './metrics.js';
import type { NamespaceInfo, PodInfo } from './pod.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function pod(name: string, node: string, labels: Record<string, string> = {}) {
  return {
    metadata: { name, namespace: 'apps', labels },
    spec: { nodeName: node, containers: [{ name: 'c', image: 'x' }], serviceAccountName: 'web' },
    status: { phase: 'Running', podIP: '10.1.0.5', podIPs: [{ ip: '10.1.0.5' }] },
  };
}

async function setup() {
  const server = await FakeApiServer.start();
  const dir = await mkdtemp(join(tmpdir(), 'weir-agent-kube-'));
  const kc = new KubeConfig();
  kc.loadFromFile(await server.kubeconfig(join(dir, 'kubeconfig')));
  const seen: string[] = [];
  const src = new KubePodSource({ kubeConfig: kc, nodeName: 'node-1', backoffInitialMs: 50, backoffMaxMs: 200 });
  cleanups.push(async () => {
    await src.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const handlers = {
    podChanged: (p: PodInfo) => seen.push(`pod ${p.name} ${JSON.stringify(p.labels)}`),
    podDeleted: (p: PodInfo) => seen.push(`deleted ${p.name}`),
    namespaceChanged: (n: NamespaceInfo) => seen.push(`ns ${n.name} ${JSON.stringify(n.labels)}`),
    invalid: (e: Error) => seen.push(`invalid ${e.message}`),
  };
  return { server, src, seen, handlers };
}

describe('KubePodSource', () => {
  it('watches only pods on its node, relists after 410 Gone, and patches the annotation on pods/status', async () => {
    const { server, src, seen, handlers } = await setup();
    server.createNamespace('apps', { 'istio.io/dataplane-mode': 'ambient' });
    server.createPod(pod('web-0', 'node-1'));
    server.createPod(pod('other', 'node-2'));
    await src.start(handlers);
    expect(src.pods().map((p) => p.name)).toEqual(['web-0']);
    expect(src.pod('apps', 'web-0')).toMatchObject({ serviceAccount: 'web', ips: ['10.1.0.5'], nodeName: 'node-1' });
    expect(src.namespace('apps')?.labels).toMatchObject({ 'istio.io/dataplane-mode': 'ambient' });
    const podLists = server.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch);
    expect(podLists[0]?.query.fieldSelector).toBe('spec.nodeName=node-1');

    server.compact();
    server.createPod(pod('web-1', 'node-1', { app: 'w' }));
    await until(() => seen.some((s) => s.startsWith('pod web-1')), 'web-1 after 410');
    expect(server.requests.filter((r) => r.path === '/api/v1/pods' && !r.watch).length).toBeGreaterThan(1);

    const web0 = src.pod('apps', 'web-0')!;
    await src.setRedirection(web0, 'enabled');
    const patch = server.requests.find((r) => r.method === 'PATCH');
    expect(patch?.path).toBe('/api/v1/namespaces/apps/pods/web-0/status');
    expect(patch?.contentType).toBe('application/merge-patch+json');
    expect(server.getPod('apps', 'web-0')?.metadata.annotations?.['ambient.istio.io/redirection']).toBe('enabled');
    await src.setRedirection(web0, null);
    expect(server.getPod('apps', 'web-0')?.metadata.annotations?.['ambient.istio.io/redirection']).toBeUndefined();
    await expect(src.setRedirection({ ...web0, name: 'gone' }, 'enabled')).rejects.toMatchObject({
      code: 'ERR_AGENT_KUBE_API',
      message: 'Kubernetes API PATCH pods/apps/gone/status failed: HTTP 404: pods "gone" not found',
    });

    await src.recordEvent(web0, { type: 'Warning', reason: 'AmbientCaptureFailed', message: 'netns gone' });
    expect(server.events[0]).toMatchObject({ reason: 'AmbientCaptureFailed', involvedObject: { name: 'web-0', kind: 'Pod' } });

    server.deletePod('apps', 'web-1');
    await until(() => seen.includes('deleted web-1'), 'delete');
  });

  it('restarts the informer with backoff after API errors and closed watches', async () => {
    const { server, src, seen, handlers } = await setup();
    server.failNext(3, 500, { method: 'GET', path: '/api/v1/pods' });
    server.createPod(pod('web-0', 'node-1'));
    await src.start(handlers);
    expect(src.pods().map((p) => p.name)).toEqual(['web-0']);

    server.closeWatches();
    server.failNext(2, 500, { method: 'GET', path: '/api/v1/pods' });
    server.createPod(pod('web-2', 'node-1'));
    await until(() => seen.some((s) => s.startsWith('pod web-2')), 'web-2 after watch errors');
    expect(server.requests.filter((r) => r.path === '/api/v1/pods' && r.status === 500)).toHaveLength(5);

    // A malformed object is reported and skipped; the watch goes on.
    server.createPod({ metadata: { name: 'bad', namespace: 'apps' }, spec: { nodeName: 'node-1', hostNetwork: 'yes' } } as never);
    server.createPod(pod('web-3', 'node-1'));
    await until(() => seen.some((s) => s.startsWith('pod web-3')), 'web-3 after a malformed pod');
    expect(seen.some((s) => s.startsWith('invalid malformed pod apps/bad'))).toBe(true);
    expect(await src.fetchPod('apps', 'nope')).toBeUndefined();
  });
});

describe('KubePodSource lookups for /cmdadd', () => {
  it("with the ADD's pod uid, a cached pod of the same name but another uid (recreated, the watch behind) is fetched from the API", async () => {
    const { server, src, handlers } = await setup();
    server.createPod(pod('web-0', 'node-1', { generation: 'old' }));
    await src.start(handlers);
    const oldUid = src.pod('apps', 'web-0')?.uid ?? '';
    expect(oldUid).not.toBe('');
    server.clearRequests();
    expect(await src.fetchPod('apps', 'web-0', oldUid)).toMatchObject({ uid: oldUid });
    expect(server.requests.filter((r) => !r.watch)).toEqual([]);
    // The StatefulSet recreates web-0; looked up in the same tick, the cache still has its predecessor.
    server.deletePod('apps', 'web-0');
    const newUid = server.createPod(pod('web-0', 'node-1', { generation: 'new' })).metadata.uid;
    expect(src.pod('apps', 'web-0')?.uid).toBe(oldUid);
    expect(await src.fetchPod('apps', 'web-0', newUid)).toMatchObject({ uid: newUid, labels: { generation: 'new' } });
    expect(server.requests.filter((r) => !r.watch).map((r) => `${r.method} ${r.path}`)).toEqual(['GET /api/v1/namespaces/apps/pods/web-0']);
  });

  it('fetches a pod or namespace missing from the cache from the API; not found is undefined, an API failure rejects (fail closed)', async () => {
    const { server, src, handlers } = await setup();
    server.createNamespace('apps', { 'istio.io/dataplane-mode': 'ambient' });
    await src.start(handlers);
    server.clearRequests();
    // Created and looked up in the same tick: the watch event cannot have reached the cache yet.
    server.createPod(pod('new-0', 'node-1', { app: 'new' }));
    expect(src.pod('apps', 'new-0')).toBeUndefined();
    expect(await src.fetchPod('apps', 'new-0')).toMatchObject({ name: 'new-0', labels: { app: 'new' }, nodeName: 'node-1' });
    expect(server.requests.filter((r) => !r.watch).map((r) => `${r.method} ${r.path}`)).toEqual(['GET /api/v1/namespaces/apps/pods/new-0']);
    server.createNamespace('fresh', { team: 'a' });
    expect(await src.fetchNamespace('fresh')).toMatchObject({ name: 'fresh', labels: { team: 'a' } });

    expect(await src.fetchPod('apps', 'nope')).toBeUndefined();
    expect(await src.fetchNamespace('nope')).toBeUndefined();

    server.failNext(1, 503, { path: '/api/v1/namespaces/apps/pods/new-1' });
    server.createPod(pod('new-1', 'node-1'));
    const podErr = await src.fetchPod('apps', 'new-1').catch((e: unknown) => e);
    expect(podErr).toBeInstanceOf(CniAgentError);
    expect(podErr).toMatchObject({ code: 'ERR_AGENT_KUBE_API', message: expect.stringMatching(/^Kubernetes API GET pod apps\/new-1 failed: HTTP 503/) });
    server.failNext(1, 500, { path: '/api/v1/namespaces/other' });
    server.createNamespace('other');
    await expect(src.fetchNamespace('other')).rejects.toMatchObject({ code: 'ERR_AGENT_KUBE_API', message: expect.stringContaining('GET namespace other failed: HTTP 500') });
  });

  it('records a core/v1 Warning Event on the pod (a plain JSON POST: every field istio-cni sets); a refused write is logged, never thrown', async () => {
    const server = await FakeApiServer.start();
    const dir = await mkdtemp(join(tmpdir(), 'weir-agent-kube-'));
    const kc = new KubeConfig();
    kc.loadFromFile(await server.kubeconfig(join(dir, 'kubeconfig')));
    const warned: { obj: object; msg: string | undefined }[] = [];
    const logger = { info: () => undefined, debug: () => undefined, error: () => undefined, warn: (obj: object, msg?: string) => void warned.push({ obj, msg }), child: () => logger };
    const src = new KubePodSource({ kubeConfig: kc, nodeName: 'node-1', logger, component: 'weir-test' });
    cleanups.push(async () => {
      await src.stop();
      await server.close();
      await rm(dir, { recursive: true, force: true });
    });
    const web0 = server.createPod(pod('web-0', 'node-1'));
    const info = { uid: web0.metadata.uid, name: 'web-0', namespace: 'apps' } as PodInfo;
    const before = Date.now();
    await src.recordEvent(info, { type: 'Warning', reason: 'AmbientCaptureBypassable', message: 'captured, but container "app" keeps NET_RAW' });
    const post = server.requests.find((r) => r.method === 'POST');
    expect(post).toMatchObject({ path: '/api/v1/namespaces/apps/events', contentType: 'application/json', status: 201 });
    const ev = server.events[0] as Record<string, unknown> & { metadata: { name: string }; firstTimestamp: string; lastTimestamp: string };
    expect(ev).toMatchObject({
      kind: 'Event',
      metadata: { namespace: 'apps', name: expect.stringMatching(/^web-0\./) },
      involvedObject: { apiVersion: 'v1', kind: 'Pod', name: 'web-0', namespace: 'apps', uid: web0.metadata.uid },
      type: 'Warning',
      reason: 'AmbientCaptureBypassable',
      message: 'captured, but container "app" keeps NET_RAW',
      source: { component: 'weir-test', host: 'node-1' },
      reportingComponent: 'weir-test',
      reportingInstance: 'node-1',
      count: 1,
    });
    expect(ev.firstTimestamp).toBe(ev.lastTimestamp);
    expect(Date.parse(ev.firstTimestamp)).toBeGreaterThanOrEqual(before - 1000);

    server.failNext(1, 403, { method: 'POST', path: '/api/v1/namespaces/apps/events' });
    await expect(src.recordEvent(info, { type: 'Warning', reason: 'AmbientCaptureFailed', message: 'netns gone' })).resolves.toBeUndefined();
    expect(server.events).toHaveLength(1);
    expect(warned).toEqual([{ obj: { err: expect.stringMatching(/^Kubernetes API POST events\/apps \(AmbientCaptureFailed on pod web-0\) failed: HTTP 403/), pod: 'apps/web-0' }, msg: 'cannot record pod event' }]);
  });

  it('converts each watched pod and namespace once: lookups return the same object until the watch delivers a new version', async () => {
    const { server, src, seen, handlers } = await setup();
    server.createNamespace('apps', { 'istio.io/dataplane-mode': 'ambient' });
    server.createPod(pod('web-0', 'node-1', { v: '1' }));
    await src.start(handlers);
    const first = src.pod('apps', 'web-0');
    expect(first).toMatchObject({ name: 'web-0', labels: { v: '1' } });
    expect(src.pod('apps', 'web-0')).toBe(first);
    expect(await src.fetchPod('apps', 'web-0', first?.uid)).toBe(first);
    expect(src.pods()[0]).toBe(first);
    const ns = src.namespace('apps');
    expect(await src.fetchNamespace('apps')).toBe(ns);
    server.updatePod('apps', 'web-0', (p) => {
      p.metadata.labels = { v: '2' };
    });
    await until(() => seen.some((s) => s.includes('"v":"2"')), 'the update');
    const second = src.pod('apps', 'web-0');
    expect(second).not.toBe(first);
    expect(second).toMatchObject({ labels: { v: '2' } });
    expect(src.pod('apps', 'web-0')).toBe(second);
  });

  it('refuses a kubeconfig without a current cluster with ERR_AGENT_KUBECONFIG', () => {
    const kc = new KubeConfig();
    kc.loadFromOptions({ clusters: [], users: [], contexts: [{ name: 'x', cluster: 'missing', user: 'u' }], currentContext: 'x' });
    let err: unknown;
    try {
      new KubePodSource({ kubeConfig: kc, nodeName: 'node-1' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniAgentError);
    expect(err).toMatchObject({ code: 'ERR_AGENT_KUBECONFIG', message: 'kubeconfig has no current cluster (current context "x")' });
  });
});

/**
 * A proxy in front of the fake API server that holds the response bodies of matching requests
 * (e.g. the namespace watch) until released: the watch running late, as it does for a namespace
 * made a moment ago or in a burst right after start.
 */
async function holdingProxy(target: string) {
  const holds: { match: (method: string, url: string) => boolean; held: (() => void)[] }[] = [];
  const proxy = createServer((req, res) => {
    const up = request(new URL(req.url ?? '/', target), { method: req.method, headers: req.headers }, (upRes: IncomingMessage) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      res.flushHeaders(); // a watch answers its headers before any event
      // Decided per chunk: a hold also catches a watch opened before it.
      const pass = (send: () => void): void => {
        const hold = holds.find((h) => h.match(req.method ?? 'GET', req.url ?? ''));
        if (hold) hold.held.push(send);
        else send();
      };
      upRes.on('data', (chunk: Buffer) => pass(() => res.write(chunk)));
      upRes.on('end', () => pass(() => res.end()));
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    /** Holds matching responses; the returned function lets them (and later ones) through. */
    hold(match: (method: string, url: string) => boolean): () => void {
      const h = { match, held: [] as (() => void)[] };
      holds.push(h);
      return () => {
        holds.splice(holds.indexOf(h), 1);
        for (const f of h.held.splice(0)) f();
      };
    },
    close: () => new Promise<void>((r) => {
      proxy.closeAllConnections();
      proxy.close(() => r());
    }),
  };
}

async function setupBehindProxy() {
  const server = await FakeApiServer.start();
  const proxy = await holdingProxy(server.url);
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: proxy.url, skipTLSVerify: true }],
    users: [{ name: 'u' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  const src = new KubePodSource({ kubeConfig: kc, nodeName: 'node-1', backoffInitialMs: 50, backoffMaxMs: 200 });
  cleanups.push(async () => {
    await src.stop();
    await proxy.close();
    await server.close();
  });
  return { server, proxy, src };
}

const nsWatch = (method: string, url: string): boolean => method === 'GET' && url.startsWith('/api/v1/namespaces?') && url.includes('watch=true');
const ambient = { 'istio.io/dataplane-mode': 'ambient' };

describe('KubePodSource namespaces fetched ahead of the watch', () => {
  it('caches a fetched namespace until the watch delivers it, then follows the watch (labels removed later)', async () => {
    const { server, proxy, src } = await setupBehindProxy();
    const seen: string[] = [];
    await src.start({ podChanged: () => undefined, podDeleted: () => undefined, namespaceChanged: (n) => seen.push(`ns ${n.name} ${JSON.stringify(n.labels)}`) });
    const release = proxy.hold(nsWatch);
    server.createNamespace('fresh', ambient);
    await new Promise((r) => setTimeout(r, 100));
    expect(src.namespace('fresh')).toBeUndefined();
    expect(await src.fetchNamespace('fresh')).toMatchObject({ name: 'fresh', labels: ambient });
    // The controller's own check (source.namespace) now sees what the lookup saw.
    expect(src.namespace('fresh')).toMatchObject({ name: 'fresh', labels: ambient });
    expect(seen.filter((s) => s.startsWith('ns fresh '))).toEqual([`ns fresh ${JSON.stringify({ 'kubernetes.io/metadata.name': 'fresh', ...ambient })}`]);

    server.setNamespaceLabels('fresh', {});
    release();
    await until(() => src.namespace('fresh')?.labels['istio.io/dataplane-mode'] === undefined, 'the watched label removal');
    const bare = { 'kubernetes.io/metadata.name': 'fresh' };
    expect(seen.at(-1)).toBe(`ns fresh ${JSON.stringify(bare)}`);
    expect(await src.fetchNamespace('fresh')).toEqual({ name: 'fresh', labels: bare });
  });

  it('does not let a GET answered late overwrite the newer namespace the watch delivered meanwhile', async () => {
    const { server, proxy, src } = await setupBehindProxy();
    await src.start({ podChanged: () => undefined, podDeleted: () => undefined, namespaceChanged: () => undefined });
    const releaseWatch = proxy.hold(nsWatch);
    server.createNamespace('fresh', ambient);
    const releaseGet = proxy.hold((method, url) => method === 'GET' && url.startsWith('/api/v1/namespaces/fresh'));
    const fetched = src.fetchNamespace('fresh');
    await until(() => server.requests.some((r) => r.path === '/api/v1/namespaces/fresh'), 'the GET to reach the server');
    server.setNamespaceLabels('fresh', {});
    releaseWatch();
    await until(() => src.namespace('fresh') !== undefined, 'the watched namespace');
    await until(() => src.namespace('fresh')?.labels['istio.io/dataplane-mode'] === undefined, 'the watched label removal');
    releaseGet();
    // The GET read the version with the label; the watch has a later one, which wins.
    const bare = { 'kubernetes.io/metadata.name': 'fresh' };
    expect(await fetched).toEqual({ name: 'fresh', labels: bare });
    expect(src.namespace('fresh')?.labels).toEqual(bare);
  });

  it('lets the controller capture a /cmdadd pod on its first ADD when its namespace is not watched yet, and release it when the watch shows the label removed', async () => {
    const { server, proxy, src } = await setupBehindProxy();
    const dir = await mkdtemp(join(tmpdir(), 'weir-agent-kube-ns-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const netnsPath = join(dir, 'netns');
    await writeFile(netnsPath, '');
    const calls: string[] = [];
    const controller = new PodController({
      source: src,
      rules: {
        setupHost: async () => undefined,
        apply: async (p) => (calls.push(`apply ${p.name}`), { changed: true, repaired: [] }),
        remove: async (p) => void calls.push(`remove ${p.name}`),
        addHostProbe: async () => undefined,
        removeHostProbe: async () => undefined,
        syncHostProbes: async () => [],
        teardownHost: async () => undefined,
      },
      ztunnel: { connected: true, addWorkload: async (uid) => void calls.push(`zds add ${uid}`), removeWorkload: async (uid) => void calls.push(`zds del ${uid}`) },
      openNetns: (path) => {
        let closed = false;
        const st = statSync(path);
        return { fd: 99, id: { dev: st.dev, ino: st.ino }, path, get closed() { return closed; }, close: () => void (closed = true) };
      },
      // Captured from its ADD's netns only: no other path is ever proven the pod's here.
      netnsHoldsIp: () => false,
      enrolled: (_p, ns) => ns?.labels['istio.io/dataplane-mode'] === 'ambient',
      metrics: new AgentMetrics({ processMetrics: false }),
      procRoot: '/nonexistent-proc',
    });
    cleanups.push(() => controller.stop());
    await src.start({ podChanged: (p) => controller.podChanged(p), podDeleted: (p) => controller.podDeleted(p), namespaceChanged: (n) => controller.namespaceChanged(n) });
    const release = proxy.hold(nsWatch);
    server.createNamespace('fresh', ambient);
    // A new pod: no IPs until its CNI ADD, so only the /cmdadd captures it.
    server.createPod({ ...pod('web-0', 'node-1'), metadata: { name: 'web-0', namespace: 'fresh' }, status: { phase: 'Pending' } });
    // What the agent's onCmdAdd does: look up, decide, hand to the controller.
    const [info, ns] = await Promise.all([src.fetchPod('fresh', 'web-0'), src.fetchNamespace('fresh')]);
    expect(ns?.labels).toMatchObject(ambient);
    await controller.cmdAdd(info!, netnsPath, ['10.1.0.5'], process.hrtime.bigint(), 3000);
    expect(controller.status()).toMatchObject([{ name: 'web-0', state: 'captured' }]);

    server.setNamespaceLabels('fresh', {});
    release();
    await until(() => controller.status()[0]?.state === 'idle', 'release after the watched label removal');
    expect(calls).toContain('remove web-0');
  });
});

/** A KubePodSource whose API is `server` (plain HTTP, listening on it now), with a bearer token. */
async function sourceFor(server: Server, token: string): Promise<KubePodSource> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'u', token }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  const src = new KubePodSource({ kubeConfig: kc, nodeName: 'node-1' });
  cleanups.push(() => src.stop());
  return src;
}

describe('KubePodSource API connections', () => {
  it('reuses one keep-alive connection for its API calls (client-node alone opens one per call), with the credentials on each', async () => {
    let connections = 0;
    const auth: (string | undefined)[] = [];
    const agents: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      auth.push(req.headers.authorization);
      agents.push(req.headers['user-agent']);
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web', namespace: 'apps', uid: 'u1' } }));
      });
    });
    server.on('connection', () => connections++);
    server.keepAliveTimeout = 10_000;
    const src = await sourceFor(server, 'tok-1');
    const web = { uid: 'u1', name: 'web', namespace: 'apps' } as PodInfo;
    for (let i = 0; i < 4; i++) await src.setRedirection(web, i % 2 ? null : 'enabled');
    expect(auth).toEqual(Array(4).fill('Bearer tok-1'));
    // Named in the API server's audit log.
    expect(agents).toEqual(Array(4).fill('weir-cni-agent'));
    expect(connections).toBe(1);
  });
  it('rejects a PATCH whose connection is cut after the answer began (200 or 500), instead of waiting forever', async () => {
    let status = 200;
    const server = createServer((req, res) => {
      req.resume();
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"kind":');
      setTimeout(() => req.socket.destroy(), 50);
    });
    const src = await sourceFor(server, 't');
    const web = { uid: 'u1', name: 'web', namespace: 'apps' } as PodInfo;
    for (status of [200, 500]) {
      const t0 = Date.now();
      await expect(src.setRedirection(web, 'enabled')).rejects.toMatchObject({
        code: 'ERR_AGENT_KUBE_API',
        message: expect.stringContaining(`connection closed before the answer ended (status ${status})`),
      });
      // Settled by the close, not by the 30 s timeout.
      expect(Date.now() - t0).toBeLessThan(10_000);
    }
  });

  it('annotates over HTTPS with a bearer token (the CA and token from the kubeconfig)', async () => {
    const pki = await createTestPki();
    const server = await FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 'tok-https' });
    const dir = await mkdtemp(join(tmpdir(), 'weir-agent-kube-'));
    const kc = new KubeConfig();
    kc.loadFromFile(await server.kubeconfig(join(dir, 'kubeconfig'), { token: 'tok-https' }));
    const src = new KubePodSource({ kubeConfig: kc, nodeName: 'node-1' });
    cleanups.push(async () => {
      await src.stop();
      await server.close();
      await rm(dir, { recursive: true, force: true });
    });
    server.createPod(pod('web-0', 'node-1'));
    const web0 = { uid: 'u1', name: 'web-0', namespace: 'apps' } as PodInfo;
    for (let i = 0; i < 3; i++) await src.setRedirection(web0, i % 2 ? null : 'enabled');
    expect(server.getPod('apps', 'web-0')?.metadata.annotations?.['ambient.istio.io/redirection']).toBe('enabled');
    const patches = server.requests.filter((r) => r.method === 'PATCH');
    expect(patches.map((r) => r.authorization)).toEqual(Array(3).fill('Bearer tok-https'));
  });
});
