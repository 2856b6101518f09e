import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import {
  CoreV1Api,
  HttpMethod,
  ListWatch,
  PatchStrategy,
  ServerConfiguration,
  RequestContext,
  Watch,
  createConfiguration,
  type SecurityAuthentication,
  type KubeConfig,
  type KubernetesObject,
  type V1Namespace,
  type V1Pod,
} from '@kubernetes/client-node';
import { CniAgentError } from './errors.js';
import { silentLogger, type Logger } from './logger.js';
import { namespaceFromV1, podFromV1, REDIRECTION_ANNOTATION, type NamespaceInfo, type PodInfo } from './pod.js';
import type { PodEvent, PodSource, PodSourceHandlers } from './pod-source.js';

export interface KubePodSourceOptions {
  kubeConfig: KubeConfig;
  /** Only pods with `spec.nodeName=<nodeName>` are watched. */
  nodeName: string;
  logger?: Logger;
  /** Informer restart backoff after an error: initial and maximum delay. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Component name on recorded Events. */
  component?: string;
}

interface Restartable {
  informer: ListWatch<KubernetesObject>;
  what: string;
  delay: number;
  timer: NodeJS.Timeout | undefined;
  failed: boolean;
}

function statusCode(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  if (typeof e?.code === 'number') return e.code;
  if (typeof e?.statusCode === 'number') return e.statusCode;
  return undefined;
}

/** An API error answer's Status object, or its text when it is not one. */
function statusBody(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** The longest one API write (send) takes, answer included. */
const WRITE_TIMEOUT_MS = 30_000;

function apiFailure(what: string, err: unknown): CniAgentError {
  const status = statusCode(err);
  // client-node's ApiException carries the API's Status object (or its text) as `body`.
  const body = (err as { body?: unknown } | null)?.body;
  const detail = typeof body === 'string' ? body : (body as { message?: unknown } | undefined)?.message;
  const why = status !== undefined ? `HTTP ${status}${typeof detail === 'string' && detail ? `: ${detail.slice(0, 300)}` : ''}` : ((err as Error)?.message ?? String(err));
  return new CniAgentError('ERR_AGENT_KUBE_API', `Kubernetes API ${what} failed: ${why}`, { cause: err });
}

/**
 * Whether `a` is a later version of the object than `b`. resourceVersions are etcd revisions
 * (decimal); anything else cannot be ordered, and then the watched copy is kept.
 */
function isNewer(a: KubernetesObject, b: KubernetesObject): boolean {
  const ra = a.metadata?.resourceVersion;
  const rb = b.metadata?.resourceVersion;
  if (!ra || !rb || !/^\d+$/.test(ra) || !/^\d+$/.test(rb)) return false;
  return BigInt(ra) > BigInt(rb);
}

/**
 * The kubeconfig's authentication, with one keep-alive connection agent instead of the new agent
 * client-node 1.4 makes for every request: that costs a TCP connection and a TLS handshake (and a
 * new TLS context) per API call — a pod PATCH per capture, an Event per failure — on the agent and
 * on the API server. A new agent is made only when the TLS options change (rotated certificates);
 * proxy agents are left as they come.
 */
function keepAliveAuth(kc: KubeConfig): SecurityAuthentication & { close(): void } {
  let current: { key: string; agent: HttpAgent | HttpsAgent } | undefined;
  return {
    close: () => current?.agent.destroy(),
    getName: () => kc.getName(),
    async applySecurityAuthentication(context: RequestContext): Promise<void> {
      await kc.applySecurityAuthentication(context);
      const made = context.getAgent();
      if (made?.constructor !== HttpsAgent && made?.constructor !== HttpAgent) return;
      const o = (made as HttpsAgent).options;
      const key = JSON.stringify([o.ca, o.cert, o.key, o.pfx, o.passphrase, o.rejectUnauthorized, o.servername].map((v) => (Buffer.isBuffer(v) ? v.toString('base64') : v)));
      made.destroy();
      if (current?.key !== key || current.agent.constructor !== made.constructor) {
        current?.agent.destroy();
        const Ctor = made.constructor as typeof HttpsAgent;
        current = { key, agent: new Ctor({ ...o, keepAlive: true }) };
      }
      context.setAgent(current.agent);
    },
  };
}

/**
 * Pods on this node (field selector `spec.nodeName`) and all namespaces, from the Kubernetes API
 * through client-node informers. The informer relists on 410 Gone by itself; on any other error it
 * stops, so this source restarts it with exponential backoff.
 */
export class KubePodSource implements PodSource {
  private readonly log: Logger;
  private readonly api: CoreV1Api;
  /** The cluster's server URL without a trailing slash. */
  private readonly server: string;
  private readonly auth: ReturnType<typeof keepAliveAuth>;
  private readonly informers: Restartable[] = [];
  private handlers: PodSourceHandlers | undefined;
  private stopped = false;
  /**
   * Namespaces a /cmdadd lookup read by GET ahead of the watch (a new namespace, or a burst right
   * after start): part of the cache, so the controller decides from what the agent looked up,
   * until the watch delivers this version or a later one.
   */
  private readonly fetchedNs = new Map<string, V1Namespace>();
  /**
   * What each watched object converts to, converted once: a pod is looked up on its CNI ADD and its
   * namespace on every reconcile, and the informer hands out the same object until the next event.
   */
  private readonly converted = new WeakMap<object, PodInfo | NamespaceInfo>();

  constructor(private readonly opts: KubePodSourceOptions) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'kube' });
    const cluster = opts.kubeConfig.getCurrentCluster();
    if (!cluster) {
      throw new CniAgentError('ERR_AGENT_KUBECONFIG', `kubeconfig has no current cluster (current context "${opts.kubeConfig.getCurrentContext()}")`);
    }
    // As KubeConfig.makeApiClient, but reusing connections (see keepAliveAuth).
    this.auth = keepAliveAuth(opts.kubeConfig);
    this.api = new CoreV1Api(createConfiguration({ baseServer: new ServerConfiguration(cluster.server, {}), authMethods: { default: this.auth } }));
    this.server = cluster.server.replace(/\/+$/, '');
  }

  async start(handlers: PodSourceHandlers): Promise<void> {
    this.handlers = handlers;
    const watch = new Watch(this.opts.kubeConfig);
    const fieldSelector = `spec.nodeName=${this.opts.nodeName}`;
    const nsInformer = new ListWatch<V1Namespace>(
      '/api/v1/namespaces',
      watch,
      () => this.api.listNamespace(),
      false,
    );
    const podInformer = new ListWatch<V1Pod>(
      '/api/v1/pods',
      watch,
      () => this.api.listPodForAllNamespaces({ fieldSelector }),
      false,
      undefined,
      fieldSelector,
    );
    const onNs = (obj: V1Namespace): void => {
      try {
        // An older version than the one fetched ahead of the watch changes nothing; the same or a
        // later one replaces it.
        const name = obj.metadata?.name;
        const fetched = name !== undefined ? this.fetchedNs.get(name) : undefined;
        if (fetched && isNewer(fetched, obj)) return;
        if (name !== undefined) this.fetchedNs.delete(name);
        this.handlers?.namespaceChanged(this.nsInfo(obj));
      } catch (err) {
        this.invalid(err);
      }
    };
    nsInformer.on('add', onNs);
    nsInformer.on('update', onNs);
    nsInformer.on('delete', (obj: V1Namespace) => {
      const name = obj.metadata?.name;
      const fetched = name !== undefined ? this.fetchedNs.get(name) : undefined;
      if (name !== undefined && fetched && !isNewer(fetched, obj)) this.fetchedNs.delete(name);
    });
    const onPod = (obj: V1Pod): void => {
      try {
        this.handlers?.podChanged(this.podInfo(obj));
      } catch (err) {
        this.invalid(err);
      }
    };
    podInformer.on('add', onPod);
    podInformer.on('update', onPod);
    podInformer.on('delete', (obj: V1Pod) => {
      try {
        this.handlers?.podDeleted(this.podInfo(obj));
      } catch (err) {
        this.invalid(err);
      }
    });
    // Namespaces first: a pod's enrollment depends on its namespace's labels.
    await this.startSynced(this.track(nsInformer as ListWatch<KubernetesObject>, 'namespaces'));
    await this.startSynced(this.track(podInformer as ListWatch<KubernetesObject>, `pods on node ${this.opts.nodeName}`));
  }

  /** podFromV1 of a watched (or fetched) object, once per object; throws as it does. */
  private podInfo(obj: V1Pod | KubernetesObject): PodInfo {
    let info = this.converted.get(obj) as PodInfo | undefined;
    if (!info) this.converted.set(obj, (info = podFromV1(obj)));
    return info;
  }

  /** namespaceFromV1, once per object. */
  private nsInfo(obj: V1Namespace): NamespaceInfo {
    let info = this.converted.get(obj) as NamespaceInfo | undefined;
    if (!info) this.converted.set(obj, (info = namespaceFromV1(obj)));
    return info;
  }

  private invalid(err: unknown): void {
    this.log.warn({ err }, 'skipping malformed object from the API server');
    this.handlers?.invalid?.(err as Error);
  }

  private track(informer: ListWatch<KubernetesObject>, what: string): Restartable {
    const r: Restartable = {
      informer,
      what,
      delay: this.opts.backoffInitialMs ?? 200,
      timer: undefined,
      failed: false,
    };
    informer.on('error', (err: unknown) => {
      r.failed = true;
      if (this.stopped) return;
      const wait = r.delay;
      r.delay = Math.min(r.delay * 2, this.opts.backoffMaxMs ?? 30_000);
      this.log.warn(
        { err: (err as Error)?.message ?? String(err), status: statusCode(err), retryInMs: wait, informer: what },
        'informer stopped on error, restarting',
      );
      clearTimeout(r.timer);
      r.timer = setTimeout(() => void this.restart(r), wait);
    });
    this.informers.push(r);
    return r;
  }

  private async restart(r: Restartable): Promise<void> {
    if (this.stopped) return;
    r.failed = false;
    await r.informer.start();
    if (!r.failed) {
      r.delay = this.opts.backoffInitialMs ?? 200;
      this.log.info({ informer: r.what }, 'informer restarted');
    }
  }

  /** Resolves once the informer listed and watches; retries with backoff until then. */
  private async startSynced(r: Restartable): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      r.failed = false;
      await r.informer.start();
      if (!r.failed) {
        clearTimeout(r.timer);
        r.delay = this.opts.backoffInitialMs ?? 200;
        return;
      }
      // The error handler scheduled a restart; take over that timer so only one loop runs.
      clearTimeout(r.timer);
      await new Promise((resolve) => setTimeout(resolve, r.delay / 2));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const r of this.informers) {
      clearTimeout(r.timer);
      await r.informer.stop();
    }
    this.handlers = undefined;
    this.fetchedNs.clear();
    this.auth.close();
  }

  private podInformer(): ListWatch<KubernetesObject> | undefined {
    return this.informers[1]?.informer;
  }

  pods(): PodInfo[] {
    const out: PodInfo[] = [];
    for (const obj of this.podInformer()?.list() ?? []) {
      try {
        out.push(this.podInfo(obj));
      } catch {
        // Reported when it arrived.
      }
    }
    return out;
  }

  pod(namespace: string, name: string): PodInfo | undefined {
    const obj = this.podInformer()?.get(name, namespace);
    if (!obj) return undefined;
    try {
      return this.podInfo(obj);
    } catch {
      return undefined;
    }
  }

  /**
   * From the informer's cache, else (a pod created a moment ago, or with `uid`, a cached pod of another
   * uid: a deleted one of the same name while the watch lags) a GET. Not found → undefined; an API
   * failure rejects with ERR_AGENT_KUBE_API, so a caller deciding enrollment fails closed.
   */
  async fetchPod(namespace: string, name: string, uid?: string): Promise<PodInfo | undefined> {
    const cached = this.pod(namespace, name);
    if (cached && (uid === undefined || cached.uid === uid)) return cached;
    let obj: V1Pod;
    try {
      obj = await this.api.readNamespacedPod({ name, namespace });
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw apiFailure(`GET pod ${namespace}/${name}`, err);
    }
    return podFromV1(obj);
  }

  /** The watched namespace, or the one fetched ahead of it while that is newer. */
  private namespaceObject(name: string): V1Namespace | undefined {
    const watched = this.informers[0]?.informer.get(name) as V1Namespace | undefined;
    const fetched = this.fetchedNs.get(name);
    if (!fetched) return watched;
    if (!watched || isNewer(fetched, watched)) return fetched;
    // The watch caught up: it alone keeps the namespace current from now on.
    this.fetchedNs.delete(name);
    return watched;
  }

  namespace(name: string): NamespaceInfo | undefined {
    const obj = this.namespaceObject(name);
    if (!obj) return undefined;
    try {
      return this.nsInfo(obj);
    } catch {
      return undefined;
    }
  }

  /**
   * As fetchPod: the cache, else a GET; not found → undefined, an API failure → ERR_AGENT_KUBE_API.
   * What the GET read joins the cache unless the watch has delivered the same or a later version
   * meanwhile (then that is returned), so the controller's later check sees what this returned.
   */
  async fetchNamespace(name: string): Promise<NamespaceInfo | undefined> {
    const cached = this.namespace(name);
    if (cached) return cached;
    let obj: V1Namespace;
    try {
      obj = await this.api.readNamespace({ name });
    } catch (err) {
      if (statusCode(err) === 404) return undefined;
      throw apiFailure(`GET namespace ${name}`, err);
    }
    const ns = this.nsInfo(obj);
    const watched = this.informers[0]?.informer.get(name);
    if (watched && !isNewer(obj, watched)) return this.namespace(name);
    const fetched = this.fetchedNs.get(name);
    if (fetched && !isNewer(obj, fetched)) return this.namespace(name);
    this.fetchedNs.set(name, obj);
    this.log.debug({ namespace: name, resourceVersion: obj.metadata?.resourceVersion }, 'namespace fetched ahead of the watch, cached until the watch delivers it');
    this.handlers?.namespaceChanged(ns);
    return ns;
  }

  /**
   * A merge patch of the pod's status subresource, sent as is (see send): client-node's generated
   * client costs ~4× the CPU (its request pipeline, and the whole V1Pod answer deserialized into
   * model classes), once per capture, and a burst of captures is when the agent's CPU is short.
   */
  async setRedirection(pod: PodInfo, value: 'enabled' | null): Promise<void> {
    const body = JSON.stringify({ metadata: { annotations: { [REDIRECTION_ANNOTATION]: value } } });
    await this.send('PATCH', `/api/v1/namespaces/${encodeURIComponent(pod.namespace)}/pods/${encodeURIComponent(pod.name)}/status`, body, PatchStrategy.MergePatch, `PATCH pods/${pod.namespace}/${pod.name}/status`);
  }

  /**
   * One API write with a JSON body through the kubeconfig's authentication and the keep-alive
   * agent; the answer's body is read only when it is an error (its Status says why). Rejects with
   * ERR_AGENT_KUBE_API naming `what`.
   */
  private async send(method: 'PATCH' | 'POST', path: string, body: string, contentType: string, what: string): Promise<void> {
    const ctx = new RequestContext(`${this.server}${path}`, method === 'PATCH' ? HttpMethod.PATCH : HttpMethod.POST);
    await this.auth.applySecurityAuthentication(ctx);
    const url = new URL(ctx.getUrl());
    // The user agent names the writer in the API server's audit log.
    const headers = { ...ctx.getHeaders(), 'user-agent': 'weir-cni-agent', 'content-type': contentType, accept: 'application/json', 'content-length': String(Buffer.byteLength(body)) };
    const agent = ctx.getAgent();
    const send = url.protocol === 'http:' ? httpRequest : httpsRequest;
    await new Promise<void>((resolve, reject) => {
      // Idle time on the socket is bounded by `timeout`; this bounds the whole exchange (an answer
      // trickling in), so the write slot it holds is always given back.
      const deadline = setTimeout(() => req.destroy(new Error(`not answered within ${WRITE_TIMEOUT_MS} ms`)), WRITE_TIMEOUT_MS);
      deadline.unref?.();
      const settle = (err?: Error): void => {
        clearTimeout(deadline);
        if (err) reject(err);
        else resolve();
      };
      const req = send(url, { method, headers, timeout: WRITE_TIMEOUT_MS, ...(agent ? { agent } : {}) }, (res) => {
        // A connection cut after the headers ends the answer without 'end' (and without 'error' when
        // nothing listens for it): settled here, or the write would never finish.
        res.once('error', () => undefined);
        res.once('close', () => {
          if (!res.complete) settle(apiFailure(what, new Error(`connection closed before the answer ended (status ${res.statusCode ?? 0})`)));
        });
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          res.resume();
          res.once('end', () => settle());
          return;
        }
        // The API's Status object says why (`pods "web-0" not found`); a little of it is enough.
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          if (text.length < 4096) text += chunk;
        });
        res.once('end', () => settle(apiFailure(what, { statusCode: status, body: statusBody(text) })));
      });
      req.once('timeout', () => req.destroy(new Error(`no answer within ${WRITE_TIMEOUT_MS} ms`)));
      req.once('error', (err) => settle(apiFailure(what, err)));
      req.end(body);
    });
  }

  /**
   * A core/v1 Event on the pod, POSTed as plain JSON (see send): through client-node's generated
   * client each cost ~1 ms of CPU more, and the capture-bypass warning writes one per captured pod
   * that keeps the runtime's NET_RAW (most pods, in `warn` mode). A failure is logged, not thrown.
   */
  async recordEvent(pod: PodInfo, event: PodEvent): Promise<void> {
    const now = new Date().toISOString();
    const component = this.opts.component ?? 'weir-cni-agent';
    const body = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { generateName: `${pod.name}.`, namespace: pod.namespace },
      involvedObject: { apiVersion: 'v1', kind: 'Pod', name: pod.name, namespace: pod.namespace, uid: pod.uid },
      type: event.type,
      reason: event.reason,
      message: event.message,
      source: { component, host: this.opts.nodeName },
      reportingComponent: component,
      reportingInstance: this.opts.nodeName,
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
    });
    try {
      await this.send('POST', `/api/v1/namespaces/${encodeURIComponent(pod.namespace)}/events`, body, 'application/json', `POST events/${pod.namespace} (${event.reason} on pod ${pod.name})`);
    } catch (err) {
      this.log.warn({ err: (err as Error).message, pod: `${pod.namespace}/${pod.name}` }, 'cannot record pod event');
    }
  }
}
