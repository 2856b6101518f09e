import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FakeApiServer } from '@weir/fake-apiserver';

/** Headers without the hop-by-hop ones: each side of the proxy frames its own connection. */
function endToEnd(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out = { ...headers };
  for (const h of ['connection', 'keep-alive', 'transfer-encoding', 'host', 'upgrade', 'proxy-connection']) delete out[h];
  return out;
}

/**
 * apps/v1 DaemonSets in front of the repo's fake API server, which serves only pods, namespaces and
 * events: GETs of `/apis/apps/v1/namespaces/<ns>/daemonsets/<name>` are answered here as the
 * apiserver answers them (the object, or a 404 `Status` with reason NotFound and details naming the
 * DaemonSet); every other request is passed through to the fake unchanged. (Goes once
 * @weir/fake-apiserver serves DaemonSets itself.)
 */
export class DaemonSetApi {
  readonly requests: { path: string; status: number }[] = [];
  readonly #daemonSets = new Map<string, { deletionTimestamp?: string }>();
  readonly #server: Server;
  readonly #upstream: URL;

  private constructor(api: FakeApiServer) {
    this.#upstream = new URL(api.url);
    this.#server = createServer((req, res) => this.#handle(req, res));
  }

  static async start(api: FakeApiServer): Promise<DaemonSetApi> {
    const s = new DaemonSetApi(api);
    await new Promise<void>((resolve) => s.#server.listen(0, '127.0.0.1', resolve));
    return s;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /** Creates (or replaces) a DaemonSet; `deleting` gives it a deletionTimestamp, as a foreground delete does. */
  set(namespace: string, name: string, opts: { deleting?: boolean } = {}): void {
    this.#daemonSets.set(`${namespace}/${name}`, opts.deleting ? { deletionTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') } : {});
  }

  delete(namespace: string, name: string): void {
    this.#daemonSets.delete(`${namespace}/${name}`);
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const m = /^\/apis\/apps\/v1\/namespaces\/([^/]+)\/daemonsets\/([^/]+)$/.exec(path);
    if (!m || req.method !== 'GET') {
      const up = request(this.#upstream, { method: req.method, path: req.url, headers: endToEnd(req.headers) }, (r) => {
        res.writeHead(r.statusCode ?? 502, endToEnd(r.headers));
        // A watch answers headers first and events later; clients wait for those headers.
        res.flushHeaders();
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
      return;
    }
    const namespace = decodeURIComponent(m[1]!);
    const name = decodeURIComponent(m[2]!);
    const ds = this.#daemonSets.get(`${namespace}/${name}`);
    const [status, body] = ds
      ? [
          200,
          {
            apiVersion: 'apps/v1',
            kind: 'DaemonSet',
            metadata: { name, namespace, uid: `ds-${name}`, resourceVersion: '1', ...(ds.deletionTimestamp ? { deletionTimestamp: ds.deletionTimestamp, finalizers: ['foregroundDeletion'] } : {}) },
            spec: { selector: { matchLabels: { app: name } }, template: { metadata: { labels: { app: name } }, spec: { containers: [{ name: 'cni-agent', image: 'weir' }] } } },
          },
        ]
      : [
          404,
          {
            kind: 'Status',
            apiVersion: 'v1',
            metadata: {},
            status: 'Failure',
            message: `daemonsets.apps "${name}" not found`,
            reason: 'NotFound',
            details: { name, group: 'apps', kind: 'daemonsets' },
            code: 404,
          },
        ];
    this.requests.push({ path, status });
    req.resume();
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(body));
  }
}
