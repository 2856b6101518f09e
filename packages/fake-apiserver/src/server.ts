import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { stringify as toYaml } from 'yaml';
import { FakeApiServerError } from './errors.js';
import { applyJsonPatch, applyMergePatch, PatchError } from './patch.js';
import { parseFieldSelector, parseLabelSelector, SelectorError, type Matcher } from './selectors.js';
import { alreadyExists, conflict, kubeStatus, notFound, tooOld, type KubeStatus } from './status.js';
import type { KubeObject, KubeObjectInput, RecordedRequest, WatchEvent, WatchEventType } from './types.js';

/** pino-shaped logger; the fake is silent without one. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface FakeApiServerTlsOptions {
  /** PEM server certificate (its SAN must cover 127.0.0.1) and key. */
  cert: string;
  key: string;
  /** PEM CA that signed `cert`; written into kubeconfigs as `certificate-authority-data`. */
  ca: string;
  /** PEM CA for client certificates; when set, a verified client certificate authenticates a request. */
  clientCa?: string;
}

export interface FakeApiServerOptions {
  /** Listen address; default 127.0.0.1, port 0 (an ephemeral port). */
  host?: string;
  port?: number;
  /** Serve HTTPS instead of HTTP. */
  tls?: FakeApiServerTlsOptions;
  /**
   * Require `Authorization: Bearer <token>` (or a verified client certificate when `tls.clientCa` is
   * set). Without `token` and `tls.clientCa` every request is accepted.
   */
  token?: string;
  /** Period of BOOKMARK events on watches that ask for them; default 60 s like the apiserver. */
  bookmarkIntervalMs?: number;
  logger?: Logger;
}

export interface FailureInjection {
  /** Only requests with this method (e.g. 'PATCH'). */
  method?: string;
  /** Only requests whose path equals this string or matches this RegExp. */
  path?: string | RegExp;
}

export interface KubeconfigOptions {
  /** Bearer token for the user; defaults to the server's `token` option. */
  token?: string;
  /** PEM client certificate and key (inlined as `client-certificate-data` / `client-key-data`). */
  clientCert?: string;
  clientKey?: string;
  /** Names for cluster/context/user; default `fake`. */
  name?: string;
}

interface ResourceInfo {
  kind: string;
  listKind: string;
  apiVersion: string;
  namespaced: boolean;
  /** The name the apiserver uses in error messages (`pods "x" not found`). */
  plural: string;
}

const RESOURCES = {
  pods: { kind: 'Pod', listKind: 'PodList', apiVersion: 'v1', namespaced: true, plural: 'pods' },
  namespaces: { kind: 'Namespace', listKind: 'NamespaceList', apiVersion: 'v1', namespaced: false, plural: 'namespaces' },
  events: { kind: 'Event', listKind: 'EventList', apiVersion: 'v1', namespaced: true, plural: 'events' },
  'events.k8s.io': {
    kind: 'Event',
    listKind: 'EventList',
    apiVersion: 'events.k8s.io/v1',
    namespaced: true,
    plural: 'events.events.k8s.io',
  },
} satisfies Record<string, ResourceInfo>;

type Resource = keyof typeof RESOURCES;
/** Resources with a watchable change history. */
type WatchedResource = 'pods' | 'namespaces';

interface HistoryEntry {
  rv: number;
  resource: WatchedResource;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: KubeObject;
  previous: KubeObject | undefined;
}

interface Watcher {
  resource: WatchedResource;
  namespace: string | undefined;
  matches: Matcher;
  res: ServerResponse;
  bookmarks: boolean;
  timers: NodeJS.Timeout[];
}

class HttpError extends Error {
  constructor(readonly status: KubeStatus) {
    super(status.message);
  }
}

const PATCH_TYPES = new Set([
  'application/merge-patch+json',
  'application/strategic-merge-patch+json',
  'application/json-patch+json',
]);

function clone<T>(v: T): T {
  return structuredClone(v);
}

function key(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A faithful in-process fake of the Kubernetes API for pods, namespaces and events: list with
 * `resourceVersion`, streaming watch with bookmarks and `410 Gone`, merge/JSON patches, `Status` errors.
 * Drive it with any Kubernetes client; steer it with the test controls (`createPod`, `compact`, …).
 */
export class FakeApiServer {
  /** Every request served, oldest first. */
  readonly requests: RecordedRequest[] = [];

  #server: Server;
  #opts: FakeApiServerOptions;
  #logger: Logger | undefined;
  #url = '';
  #rv = 1;
  /** Watches asking for a version older than this get 410 Gone. */
  #compactedRv = 1;
  #objects = new Map<Resource, Map<string, KubeObject>>(
    (Object.keys(RESOURCES) as Resource[]).map((r) => [r, new Map<string, KubeObject>()]),
  );
  #history: HistoryEntry[] = [];
  #watchers = new Set<Watcher>();
  #failures: { remaining: number; status: number; match: FailureInjection }[] = [];

  private constructor(opts: FakeApiServerOptions) {
    this.#opts = opts;
    this.#logger = opts.logger;
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.#handle(req, res);
    this.#server = opts.tls
      ? createHttpsServer(
          {
            cert: opts.tls.cert,
            key: opts.tls.key,
            ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: false } : {}),
          },
          handler,
        )
      : createHttpServer(handler);
  }

  /** Starts a server listening on 127.0.0.1 (ephemeral port unless `port` is given). */
  static async start(opts: FakeApiServerOptions = {}): Promise<FakeApiServer> {
    const s = new FakeApiServer(opts);
    // Like a real cluster, `default` and `kube-system` exist from the start.
    s.createNamespace('default');
    s.createNamespace('kube-system');
    const host = opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      s.#server.once('error', reject);
      s.#server.listen(opts.port ?? 0, host, () => {
        s.#server.off('error', reject);
        resolve();
      });
    });
    const { port } = s.#server.address() as AddressInfo;
    const h = host.includes(':') ? `[${host}]` : host;
    s.#url = `${opts.tls ? 'https' : 'http'}://${h}:${port}`;
    s.#logger?.info({ url: s.#url }, 'fake apiserver listening');
    return s;
  }

  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  get url(): string {
    if (!this.#url) throw new FakeApiServerError('ERR_FAKE_API_NOT_LISTENING', 'fake apiserver is not listening');
    return this.#url;
  }

  /** The current (latest) resourceVersion, as lists report it. */
  get resourceVersion(): string {
    return String(this.#rv);
  }

  /** Number of watch streams currently open. */
  get watchCount(): number {
    return this.#watchers.size;
  }

  /** Events POSTed by clients (core/v1 and events.k8s.io/v1), oldest first. */
  get events(): KubeObject[] {
    return [...this.#objects.get('events')!.values(), ...this.#objects.get('events.k8s.io')!.values()]
      .map(clone)
      .sort((a, b) => Number(a.metadata.resourceVersion) - Number(b.metadata.resourceVersion));
  }

  // ---- test controls ------------------------------------------------------------------------

  /** Creates (or replaces the labels of) a namespace. */
  setNamespaceLabels(name: string, labels: Record<string, string>): KubeObject {
    const existing = this.#objects.get('namespaces')!.get(key(undefined, name));
    if (!existing) return this.createNamespace(name, labels);
    const next = clone(existing);
    next.metadata.labels = { 'kubernetes.io/metadata.name': name, ...labels };
    return this.#update('namespaces', next);
  }

  createNamespace(name: string, labels: Record<string, string> = {}): KubeObject {
    return this.#create('namespaces', {
      metadata: { name, labels: { 'kubernetes.io/metadata.name': name, ...labels } },
      spec: { finalizers: ['kubernetes'] },
      status: { phase: 'Active' },
    });
  }

  deleteNamespace(name: string): KubeObject {
    return this.#delete('namespaces', undefined, name);
  }

  getNamespace(name: string): KubeObject | undefined {
    const o = this.#objects.get('namespaces')!.get(key(undefined, name));
    return o && clone(o);
  }

  /** Creates a pod; its namespace (default `default`) is created when missing. */
  createPod(pod: KubeObjectInput): KubeObject {
    const ns = pod.metadata?.namespace ?? 'default';
    if (!this.#objects.get('namespaces')!.has(key(undefined, ns))) this.createNamespace(ns);
    return this.#create('pods', { ...pod, metadata: { ...pod.metadata, namespace: ns } });
  }

  /**
   * Replaces a pod (`updatePod(pod)`), or edits it in place (`updatePod(ns, name, p => { … })`).
   * Server-managed metadata (uid, resourceVersion, creationTimestamp) is kept; a change bumps the version.
   */
  updatePod(pod: KubeObjectInput): KubeObject;
  updatePod(namespace: string, name: string, edit: (pod: KubeObject) => KubeObject | void): KubeObject;
  updatePod(a: KubeObjectInput | string, name?: string, edit?: (pod: KubeObject) => KubeObject | void): KubeObject {
    if (typeof a === 'string') {
      const current = this.#get('pods', a, name ?? '');
      const draft = clone(current);
      const next = edit?.(draft) ?? draft;
      return this.#update('pods', next);
    }
    const input = JSON.parse(JSON.stringify(a)) as KubeObjectInput;
    const current = this.#get('pods', input.metadata?.namespace ?? 'default', input.metadata?.name ?? '');
    return this.#update('pods', { ...input, metadata: { ...current.metadata, ...input.metadata } } as KubeObject);
  }

  deletePod(namespace: string, name: string): KubeObject {
    return this.#delete('pods', namespace, name);
  }

  getPod(namespace: string, name: string): KubeObject | undefined {
    const o = this.#objects.get('pods')!.get(key(namespace, name));
    return o && clone(o);
  }

  listPods(): KubeObject[] {
    return [...this.#objects.get('pods')!.values()].map(clone);
  }

  /**
   * Compacts history: the version advances (as a write elsewhere in the cluster would), every open
   * watch gets an `ERROR` event with a 410 `Expired` Status and is closed, and any later watch from
   * a version seen before this call gets the same 410 — clients must relist.
   */
  compact(): void {
    this.#rv++;
    this.#compactedRv = this.#rv;
    this.#history = [];
    for (const w of [...this.#watchers]) {
      this.#send(w, { type: 'ERROR', object: tooOld(this.#compactedRv - 1, this.#compactedRv) });
      this.#endWatch(w);
    }
    this.#logger?.info({ resourceVersion: this.#rv }, 'history compacted');
  }

  /** The next `n` requests (matching `match`, if given) fail with `status` and a proper Status body. */
  failNext(n: number, status = 500, match: FailureInjection = {}): void {
    this.#failures.push({ remaining: n, status, match });
  }

  /** Ends every open watch stream cleanly (as an apiserver restart or watch timeout does). */
  closeWatches(): void {
    for (const w of [...this.#watchers]) this.#endWatch(w);
  }

  /** Sends a BOOKMARK with the current version now to every watch that allows bookmarks. */
  sendBookmarks(): void {
    for (const w of this.#watchers) if (w.bookmarks) this.#bookmark(w);
  }

  clearRequests(): void {
    this.requests.length = 0;
  }

  /**
   * Writes a kubeconfig pointing at this server (CA inlined for HTTPS, bearer token and/or client
   * certificate as given) and returns `path`.
   */
  async kubeconfig(path: string, opts: KubeconfigOptions = {}): Promise<string> {
    const name = opts.name ?? 'fake';
    const cluster: Record<string, string | boolean> = { server: this.url };
    if (this.#opts.tls) cluster['certificate-authority-data'] = Buffer.from(this.#opts.tls.ca).toString('base64');
    // @kubernetes/client-node refuses plain http unless TLS verification is explicitly off.
    else cluster['insecure-skip-tls-verify'] = true;
    const user: Record<string, string> = {};
    const token = opts.token ?? this.#opts.token;
    if (token) user['token'] = token;
    if (opts.clientCert !== undefined) user['client-certificate-data'] = Buffer.from(opts.clientCert).toString('base64');
    if (opts.clientKey !== undefined) user['client-key-data'] = Buffer.from(opts.clientKey).toString('base64');
    const doc = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name, cluster }],
      contexts: [{ name, context: { cluster: name, user: name } }],
      'current-context': name,
      preferences: {},
      users: [{ name, user }],
    };
    await writeFile(path, toYaml(doc), { mode: 0o600 });
    return path;
  }

  /** Closes every watch and connection and stops listening. */
  async close(): Promise<void> {
    this.closeWatches();
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  // ---- store --------------------------------------------------------------------------------

  #get(resource: Resource, namespace: string | undefined, name: string): KubeObject {
    const o = this.#objects.get(resource)!.get(key(RESOURCES[resource].namespaced ? namespace : undefined, name));
    if (!o) throw new HttpError(notFound(RESOURCES[resource].plural, name));
    return o;
  }

  #create(resource: Resource, input: KubeObjectInput): KubeObject {
    const info = RESOURCES[resource];
    // A JSON round trip, as over the wire: Dates become RFC 3339 strings, undefined fields vanish.
    input = JSON.parse(JSON.stringify(input)) as KubeObjectInput;
    const meta = input.metadata ?? {};
    let name = meta.name;
    if (!name && meta.generateName) name = `${meta.generateName}${randomUUID().slice(0, 5)}`;
    if (!name) throw new HttpError(kubeStatus(422, `${info.kind} "" is invalid: metadata.name: Required value: name or generateName is required`));
    const namespace = info.namespaced ? (meta.namespace ?? 'default') : undefined;
    const k = key(namespace, name);
    if (this.#objects.get(resource)!.has(k)) throw new HttpError(alreadyExists(info.plural, name));
    const rv = ++this.#rv;
    const obj: KubeObject = {
      ...input,
      apiVersion: info.apiVersion,
      kind: info.kind,
      metadata: {
        ...meta,
        name,
        ...(namespace !== undefined ? { namespace } : {}),
        uid: meta.uid ?? randomUUID(),
        resourceVersion: String(rv),
        creationTimestamp: (meta.creationTimestamp as string | undefined) ?? new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      },
    } as KubeObject;
    if (resource === 'pods') {
      obj.metadata.generation = 1;
      obj['status'] ??= { phase: 'Pending' };
    }
    if (!info.namespaced) delete obj.metadata.namespace;
    this.#objects.get(resource)!.set(k, obj);
    if (resource === 'pods' || resource === 'namespaces') this.#record(resource, 'ADDED', obj, undefined);
    this.#logger?.debug({ resource, namespace, name, resourceVersion: rv }, 'object created');
    return clone(obj);
  }

  /** Stores `next` over the current object; a no-op update keeps the version and sends no event. */
  #update(resource: WatchedResource, next: KubeObject): KubeObject {
    const info = RESOURCES[resource];
    const current = this.#get(resource, next.metadata.namespace, next.metadata.name);
    const obj: KubeObject = {
      ...clone(next),
      apiVersion: info.apiVersion,
      kind: info.kind,
      metadata: {
        ...clone(next.metadata),
        name: current.metadata.name,
        uid: current.metadata.uid,
        creationTimestamp: current.metadata.creationTimestamp,
        resourceVersion: current.metadata.resourceVersion,
      },
    };
    if (info.namespaced) obj.metadata.namespace = current.metadata.namespace;
    if (sameJson(obj, current)) return clone(current);
    if (resource === 'pods' && !sameJson(obj['spec'], current['spec'])) {
      obj.metadata.generation = (current.metadata.generation ?? 1) + 1;
    }
    obj.metadata.resourceVersion = String(++this.#rv);
    this.#objects.get(resource)!.set(key(obj.metadata.namespace, obj.metadata.name), obj);
    this.#record(resource, 'MODIFIED', obj, current);
    return clone(obj);
  }

  #delete(resource: Resource, namespace: string | undefined, name: string): KubeObject {
    const info = RESOURCES[resource];
    const current = this.#get(resource, namespace, name);
    this.#objects.get(resource)!.delete(key(info.namespaced ? namespace : undefined, name));
    const gone: KubeObject = clone(current);
    gone.metadata.resourceVersion = String(++this.#rv);
    if (resource === 'pods' || resource === 'namespaces') this.#record(resource, 'DELETED', gone, current);
    if (resource === 'namespaces') {
      for (const r of ['pods', 'events', 'events.k8s.io'] as const) {
        for (const o of [...this.#objects.get(r)!.values()]) {
          if (o.metadata.namespace === name) this.#delete(r, name, o.metadata.name);
        }
      }
    }
    return gone;
  }

  #record(resource: WatchedResource, type: HistoryEntry['type'], object: KubeObject, previous: KubeObject | undefined): void {
    const entry: HistoryEntry = { rv: Number(object.metadata.resourceVersion), resource, type, object: clone(object), previous };
    this.#history.push(entry);
    for (const w of this.#watchers) this.#deliver(w, entry);
  }

  // ---- watch --------------------------------------------------------------------------------

  /** Translates a change into what this watcher sees: objects entering or leaving its selector become ADDED/DELETED. */
  #deliver(w: Watcher, e: HistoryEntry): void {
    if (e.resource !== w.resource) return;
    if (w.namespace !== undefined && e.object.metadata.namespace !== w.namespace) return;
    const now = w.matches(e.object);
    const before = e.previous !== undefined && w.matches(e.previous);
    let type: WatchEventType | undefined;
    if (e.type === 'ADDED') type = now ? 'ADDED' : undefined;
    else if (e.type === 'DELETED') type = before ? 'DELETED' : undefined;
    else if (now && before) type = 'MODIFIED';
    else if (now) type = 'ADDED';
    else if (before) type = 'DELETED';
    if (type) this.#send(w, { type, object: e.object });
  }

  #send(w: Watcher, event: WatchEvent): void {
    if (!w.res.writableEnded) w.res.write(`${JSON.stringify(event)}\n`);
  }

  #bookmark(w: Watcher, annotations?: Record<string, string>): void {
    const info = RESOURCES[w.resource];
    this.#send(w, {
      type: 'BOOKMARK',
      object: {
        kind: info.kind,
        apiVersion: info.apiVersion,
        metadata: { resourceVersion: String(this.#rv), ...(annotations ? { annotations } : {}) },
      },
    });
  }

  #endWatch(w: Watcher): void {
    this.#watchers.delete(w);
    for (const t of w.timers) clearTimeout(t);
    if (!w.res.writableEnded) w.res.end();
  }

  #startWatch(
    res: ServerResponse,
    record: RecordedRequest,
    resource: WatchedResource,
    namespace: string | undefined,
    matches: Matcher,
    q: URLSearchParams,
  ): void {
    const rvParam = q.get('resourceVersion') ?? '';
    let from: number | undefined;
    if (rvParam !== '' && rvParam !== '0') {
      from = Number(rvParam);
      if (!Number.isInteger(from) || from < 0) {
        throw new HttpError(kubeStatus(400, `invalid resource version "${rvParam}"`, { reason: 'BadRequest' }));
      }
    }
    record.status = 200;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const w: Watcher = {
      resource,
      namespace,
      matches,
      res,
      bookmarks: q.get('allowWatchBookmarks') === 'true',
      timers: [],
    };
    // The apiserver answers 200 and then sends the 410 as an ERROR event before closing the stream.
    if (from !== undefined && from < this.#compactedRv) {
      this.#send(w, { type: 'ERROR', object: tooOld(from, this.#compactedRv) });
      res.end();
      return;
    }
    this.#watchers.add(w);
    const cleanup = () => this.#endWatch(w);
    // The response's 'close' is the connection going away (the request's fires once its body is read).
    res.on('close', cleanup);
    if (from === undefined) {
      // No version (or "0"): synthetic ADDED events for the current state, then live changes.
      for (const o of this.#objects.get(resource)!.values()) {
        if ((namespace === undefined || o.metadata.namespace === namespace) && matches(o)) {
          this.#send(w, { type: 'ADDED', object: o });
        }
      }
      if (q.get('sendInitialEvents') === 'true' && w.bookmarks) {
        this.#bookmark(w, { 'k8s.io/initial-events-end': 'true' });
      }
    } else {
      for (const e of this.#history) if (e.rv > from) this.#deliver(w, e);
    }
    const interval = this.#opts.bookmarkIntervalMs ?? 60_000;
    if (w.bookmarks) {
      const tick = () => {
        this.#bookmark(w);
        w.timers[0] = setTimeout(tick, interval).unref();
      };
      w.timers[0] = setTimeout(tick, interval).unref();
    }
    const timeout = Number(q.get('timeoutSeconds') ?? '');
    if (Number.isFinite(timeout) && timeout > 0) w.timers.push(setTimeout(cleanup, timeout * 1000).unref());
  }

  // ---- HTTP ---------------------------------------------------------------------------------

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const q = url.searchParams;
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path: url.pathname,
      query: Object.fromEntries(q),
      contentType: req.headers['content-type']?.split(';')[0]?.trim(),
      authorization: req.headers.authorization,
      body: undefined,
      status: 0,
      watch: q.get('watch') === 'true' || q.get('watch') === '1',
    };
    this.requests.push(record);
    try {
      const raw = await readBody(req);
      if (raw.length > 0) {
        try {
          record.body = JSON.parse(raw);
        } catch (err) {
          throw new HttpError(kubeStatus(400, `couldn't get version/kind; json parse error: ${(err as Error).message}`));
        }
      }
      this.#authenticate(req);
      this.#injectFailure(record);
      this.#route(res, record, url);
    } catch (err) {
      const status =
        err instanceof HttpError
          ? err.status
          : kubeStatus(500, `Internal error occurred: ${(err as Error).message}`);
      this.#reply(res, record, status.code, status);
    }
  }

  #authenticate(req: IncomingMessage): void {
    const token = this.#opts.token;
    const certAuth = this.#opts.tls?.clientCa !== undefined;
    if (token === undefined && !certAuth) return;
    if (token !== undefined && req.headers.authorization === `Bearer ${token}`) return;
    if (certAuth && (req.socket as TLSSocket).authorized) return;
    throw new HttpError(kubeStatus(401, 'Unauthorized'));
  }

  #injectFailure(record: RecordedRequest): void {
    for (const f of this.#failures) {
      if (f.remaining <= 0) continue;
      if (f.match.method !== undefined && f.match.method.toUpperCase() !== record.method) continue;
      const p = f.match.path;
      if (p !== undefined && (typeof p === 'string' ? p !== record.path : !p.test(record.path))) continue;
      f.remaining--;
      this.#failures = this.#failures.filter((x) => x.remaining > 0);
      const message =
        f.status === 500 ? 'Internal error occurred: injected failure (fake apiserver failNext)' : 'injected failure (fake apiserver failNext)';
      throw new HttpError(kubeStatus(f.status, message));
    }
  }

  #reply(res: ServerResponse, record: RecordedRequest, code: number, body: unknown): void {
    record.status = code;
    if (res.headersSent) {
      res.end();
      return;
    }
    res.writeHead(code, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  #route(res: ServerResponse, record: RecordedRequest, url: URL): void {
    const path = url.pathname.replace(/\/+$/, '');
    const method = record.method;
    if (path === '/version') {
      return this.#reply(res, record, 200, { major: '1', minor: '31', gitVersion: 'v1.31.0-weir-fake', platform: 'linux/amd64' });
    }
    if (path === '/healthz' || path === '/readyz' || path === '/livez') {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      record.status = 200;
      res.end('ok');
      return;
    }
    if (path === '/api') return this.#reply(res, record, 200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] });
    const seg = path.split('/').slice(1).map(decodeURIComponent);
    let resource: Resource | undefined;
    let namespace: string | undefined;
    let name: string | undefined;
    let sub: string | undefined;
    if (seg[0] === 'api' && seg[1] === 'v1') {
      const rest = seg.slice(2);
      if (rest[0] === 'namespaces' && rest.length >= 3 && rest[2] !== 'status' && rest[2] !== 'finalize') {
        namespace = rest[1];
        resource = asResource(rest[2]);
        name = rest[3];
        sub = rest[4];
        if (rest.length > 5) resource = undefined;
      } else if (rest[0] === 'namespaces') {
        resource = 'namespaces';
        name = rest[1];
        sub = rest[2];
        if (rest.length > 3) resource = undefined;
      } else if (rest.length === 1) {
        resource = asResource(rest[0]);
        if (resource === 'namespaces') resource = undefined;
      }
    } else if (seg[0] === 'apis' && seg[1] === 'events.k8s.io' && seg[2] === 'v1') {
      const rest = seg.slice(3);
      if (rest[0] === 'namespaces' && rest[2] === 'events' && rest.length <= 4) {
        resource = 'events.k8s.io';
        namespace = rest[1];
        name = rest[3];
      } else if (rest.length === 1 && rest[0] === 'events') {
        resource = 'events.k8s.io';
      }
    }
    if (resource === undefined || (sub !== undefined && sub !== 'status')) {
      throw new HttpError(kubeStatus(404, 'the server could not find the requested resource', { reason: 'NotFound' }));
    }
    const info = RESOURCES[resource];
    if (name === undefined) {
      if (method === 'GET') return this.#list(res, record, resource, namespace, url.searchParams);
      if (method === 'POST' && (namespace !== undefined || !info.namespaced)) {
        return this.#createFromApi(res, record, resource, namespace);
      }
      throw methodNotAllowed(method);
    }
    if (method === 'GET') return this.#reply(res, record, 200, this.#get(resource, namespace, name));
    if (resource !== 'pods' && resource !== 'namespaces') {
      if (method === 'DELETE') return this.#reply(res, record, 200, this.#delete(resource, namespace, name));
      throw methodNotAllowed(method);
    }
    if (method === 'DELETE' && sub === undefined) return this.#reply(res, record, 200, this.#delete(resource, namespace, name));
    if (method === 'PUT' || method === 'PATCH') {
      return this.#reply(res, record, 200, this.#write(record, resource, namespace, name, sub === 'status'));
    }
    throw methodNotAllowed(method);
  }

  #createFromApi(res: ServerResponse, record: RecordedRequest, resource: Resource, namespace: string | undefined): void {
    const body = record.body as KubeObjectInput | undefined;
    if (!body || typeof body !== 'object' || typeof body.metadata !== 'object' || body.metadata === null) {
      throw new HttpError(kubeStatus(400, 'the body of the request was in an unknown format: missing metadata'));
    }
    if (namespace !== undefined) {
      if (body.metadata.namespace !== undefined && body.metadata.namespace !== namespace) {
        throw new HttpError(
          kubeStatus(400, `the namespace of the provided object does not match the namespace sent on the request`),
        );
      }
      if (!this.#objects.get('namespaces')!.has(key(undefined, namespace))) {
        throw new HttpError(notFound('namespaces', namespace));
      }
    }
    const created = this.#create(resource, { ...body, metadata: { ...body.metadata, ...(namespace ? { namespace } : {}) } });
    this.#reply(res, record, 201, created);
  }

  /** PUT or PATCH of an object or its status subresource, with the apiserver's preconditions. */
  #write(record: RecordedRequest, resource: WatchedResource, namespace: string | undefined, name: string, status: boolean): KubeObject {
    const info = RESOURCES[resource];
    const current = this.#get(resource, namespace, name);
    let next: KubeObject;
    if (record.method === 'PUT') {
      const body = record.body as KubeObject | undefined;
      if (!body || typeof body.metadata !== 'object') throw new HttpError(kubeStatus(400, 'the body of the request was in an unknown format'));
      if (body.metadata.name !== name) {
        throw new HttpError(kubeStatus(400, `the name of the object (${body.metadata.name}) does not match the name on the URL (${name})`));
      }
      const rv = body.metadata.resourceVersion;
      if (rv === undefined || rv === '') {
        throw new HttpError(
          kubeStatus(422, `${info.kind} "${name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update`),
        );
      }
      if (rv !== current.metadata.resourceVersion) throw new HttpError(conflict(info.plural, name));
      next = clone(body);
    } else {
      const type = record.contentType ?? '';
      if (!PATCH_TYPES.has(type)) {
        throw new HttpError(
          kubeStatus(415, `the body of the request was in an unknown format - accepted media types include: ${[...PATCH_TYPES].join(', ')}`),
        );
      }
      try {
        next = (type === 'application/json-patch+json'
          ? applyJsonPatch(current, record.body)
          : applyMergePatch(current, record.body)) as KubeObject;
      } catch (err) {
        if (err instanceof PatchError) throw new HttpError(kubeStatus(err.httpStatus, err.message));
        throw err;
      }
      if (typeof next?.metadata !== 'object' || next.metadata === null) {
        throw new HttpError(kubeStatus(422, `${info.kind} "${name}" is invalid: metadata: Required value`));
      }
      // A resourceVersion in the patch is a precondition, as on the apiserver.
      if (next.metadata.resourceVersion !== current.metadata.resourceVersion) throw new HttpError(conflict(info.plural, name));
    }
    if (status) {
      // The status subresource changes status (and, for pods, labels/annotations) and nothing else.
      next = {
        ...clone(current),
        status: next['status'],
        metadata: { ...clone(current.metadata), labels: next.metadata.labels, annotations: next.metadata.annotations },
      };
      if (next.metadata.labels === undefined) delete next.metadata.labels;
      if (next.metadata.annotations === undefined) delete next.metadata.annotations;
    } else if (current['status'] !== undefined) {
      next['status'] = clone(current['status']);
    }
    next.metadata.namespace = current.metadata.namespace;
    return this.#update(resource, next);
  }

  #list(
    res: ServerResponse,
    record: RecordedRequest,
    resource: Resource,
    namespace: string | undefined,
    q: URLSearchParams,
  ): void {
    const info = RESOURCES[resource];
    let matches: Matcher = () => true;
    try {
      const ls = q.get('labelSelector');
      const fs = q.get('fieldSelector');
      const lm = ls ? parseLabelSelector(ls) : undefined;
      const fm = fs ? parseFieldSelector(resource, fs) : undefined;
      matches = (o) => (lm ? lm(o) : true) && (fm ? fm(o) : true);
    } catch (err) {
      if (err instanceof SelectorError) throw new HttpError(kubeStatus(400, err.message));
      throw err;
    }
    if (record.watch) {
      if (resource !== 'pods' && resource !== 'namespaces') throw methodNotAllowed('WATCH');
      return this.#startWatch(res, record, resource, namespace, matches, q);
    }
    const rvMatch = q.get('resourceVersionMatch');
    const rvParam = q.get('resourceVersion');
    if (rvMatch === 'Exact' && rvParam && Number(rvParam) < this.#compactedRv) {
      throw new HttpError(tooOld(Number(rvParam), this.#compactedRv));
    }
    let items = [...this.#objects.get(resource)!.values()]
      .filter((o) => (namespace === undefined || o.metadata.namespace === namespace) && matches(o))
      .sort((a, b) => key(a.metadata.namespace, a.metadata.name).localeCompare(key(b.metadata.namespace, b.metadata.name)));
    // Paging: the continue token names the last key served and the list's version.
    const cont = q.get('continue');
    let listRv = this.#rv;
    if (cont) {
      let token: { rv: number; after: string };
      try {
        token = JSON.parse(Buffer.from(cont, 'base64url').toString()) as { rv: number; after: string };
      } catch {
        throw new HttpError(kubeStatus(400, `continue key is not valid: ${cont}`));
      }
      if (token.rv < this.#compactedRv) {
        throw new HttpError(
          kubeStatus(410, 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.', { reason: 'Expired' }),
        );
      }
      listRv = token.rv;
      items = items.filter((o) => key(o.metadata.namespace, o.metadata.name) > token.after);
    }
    const metadata: Record<string, unknown> = { resourceVersion: String(listRv) };
    const limit = Number(q.get('limit') ?? '');
    if (Number.isInteger(limit) && limit > 0 && items.length > limit) {
      items = items.slice(0, limit);
      const last = items[items.length - 1]!;
      metadata['continue'] = Buffer.from(JSON.stringify({ rv: listRv, after: key(last.metadata.namespace, last.metadata.name) })).toString('base64url');
    }
    // Items in a list carry no kind/apiVersion, exactly as the apiserver sends them.
    const bare = items.map((o) => {
      const { kind: _k, apiVersion: _a, ...rest } = o;
      return rest;
    });
    this.#reply(res, record, 200, { kind: info.listKind, apiVersion: info.apiVersion, metadata, items: bare });
  }
}

function asResource(s: string | undefined): Resource | undefined {
  return s === 'pods' || s === 'namespaces' || s === 'events' ? s : undefined;
}

function methodNotAllowed(method: string): HttpError {
  return new HttpError(kubeStatus(405, `the server does not allow this method on the requested resource (${method})`));
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
