import { readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { dirname, isAbsolute, join } from 'node:path';
import { CniPluginError } from './errors.js';

/** What a request to the API needs, resolved from a kubeconfig's current context. */
export interface KubeConnection {
  server: string;
  ca: Buffer | undefined;
  token: string | undefined;
  clientCert: Buffer | undefined;
  clientKey: Buffer | undefined;
  insecureSkipTlsVerify: boolean;
  /** `tls-server-name`: the name the server certificate is checked against instead of the server's host. */
  tlsServerName: string | undefined;
}

type Named<T> = { name?: string } & Record<string, T | undefined>;

function bad(path: string, what: string, cause?: unknown): CniPluginError {
  return new CniPluginError('ERR_CNI_KUBECONFIG', `kubeconfig ${path}: ${what}`, { cause });
}

/**
 * Credentials this client cannot honour. Calling the API without them would fail with a vaguer 401/403
 * (or, for impersonation, act as someone else), so the loader refuses them by name.
 */
const UNSUPPORTED_USER_FIELDS = ['exec', 'username', 'password', 'as', 'as-uid', 'as-groups', 'as-user-extra'] as const;
const SUPPORTED_AUTH = 'supported: token, tokenFile, auth-provider tokenFile, client-certificate(-data)/client-key(-data)';

/**
 * Reads a kubeconfig (YAML or JSON) and resolves its current context: server, CA, bearer token
 * (`token`, `tokenFile`, or the `auth-provider` `tokenFile` that @kubernetes/client-node exports) and
 * client certificate (inline `-data` or files relative to the kubeconfig). Anything else it would need
 * (exec plugins, other auth providers, basic auth, impersonation, a proxy) fails, naming the field.
 */
export async function loadKubeconfig(path: string): Promise<KubeConnection> {
  let doc: Record<string, unknown>;
  try {
    const text = await readFile(path, 'utf8');
    doc = parseJsonObject(text) ?? ((await import('yaml')).parse(text) as Record<string, unknown>);
  } catch (err) {
    throw bad(path, `cannot be read: ${(err as Error).message}`, err);
  }
  if (!doc || typeof doc !== 'object') throw bad(path, 'is not a mapping');
  const find = <T>(list: string, name: unknown, field: string): T | undefined => {
    const items = doc[list];
    if (!Array.isArray(items)) return undefined;
    const hit = (items as Named<T>[]).find((i) => i?.name === name) ?? (name === undefined ? (items[0] as Named<T>) : undefined);
    return hit?.[field];
  };
  const contextName = doc['current-context'];
  const context = find<{ cluster?: string; user?: string }>('contexts', contextName || undefined, 'context');
  const cluster = find<Record<string, unknown>>('clusters', context?.cluster, 'cluster');
  const user = find<Record<string, unknown>>('users', context?.user, 'user') ?? {};
  if (!cluster || typeof cluster['server'] !== 'string') throw bad(path, `no cluster server for context "${String(contextName ?? '')}"`);
  const userField = `users[${JSON.stringify(context?.user ?? '')}].user`;
  for (const field of UNSUPPORTED_USER_FIELDS) {
    if (user[field] !== undefined) throw bad(path, `${userField}.${field} is not supported by weir-cni (${SUPPORTED_AUTH})`);
  }
  if (cluster['proxy-url'] !== undefined) {
    throw bad(path, `clusters[${JSON.stringify(context?.cluster ?? '')}].cluster.proxy-url is not supported by weir-cni (it connects to the server directly)`);
  }
  const rel = (p: string) => (isAbsolute(p) ? p : join(dirname(path), p));
  const material = async (dataKey: string, fileKey: string, from: Record<string, unknown>): Promise<Buffer | undefined> => {
    const data = from[dataKey];
    if (typeof data === 'string' && data !== '') return Buffer.from(data, 'base64');
    const file = from[fileKey];
    if (typeof file === 'string' && file !== '') {
      try {
        return await readFile(rel(file));
      } catch (err) {
        throw bad(path, `${fileKey} ${file} cannot be read: ${(err as Error).message}`, err);
      }
    }
    return undefined;
  };
  let tokenFile = typeof user['tokenFile'] === 'string' && user['tokenFile'] !== '' ? user['tokenFile'] : undefined;
  let tokenFileField = 'tokenFile';
  const provider = user['auth-provider'] as { name?: unknown; config?: { tokenFile?: unknown } } | undefined;
  if (provider !== undefined) {
    const file = provider?.config?.tokenFile;
    if (provider?.name !== 'tokenFile' || typeof file !== 'string' || file === '') {
      throw bad(path, `${userField}.auth-provider "${String(provider?.name)}" is not supported by weir-cni (${SUPPORTED_AUTH})`);
    }
    tokenFile ??= file;
    if (tokenFile === file) tokenFileField = 'auth-provider.config.tokenFile';
  }
  let token = typeof user['token'] === 'string' && user['token'] !== '' ? user['token'] : undefined;
  if (token === undefined && tokenFile !== undefined) {
    try {
      token = (await readFile(rel(tokenFile), 'utf8')).trim();
    } catch (err) {
      throw bad(path, `${tokenFileField} ${tokenFile} cannot be read: ${(err as Error).message}`, err);
    }
  }
  return {
    server: cluster['server'].replace(/\/+$/, ''),
    ca: await material('certificate-authority-data', 'certificate-authority', cluster),
    token,
    clientCert: await material('client-certificate-data', 'client-certificate', user),
    clientKey: await material('client-key-data', 'client-key', user),
    insecureSkipTlsVerify: cluster['insecure-skip-tls-verify'] === true,
    tlsServerName: typeof cluster['tls-server-name'] === 'string' && cluster['tls-server-name'] !== '' ? cluster['tls-server-name'] : undefined,
  };
}

/**
 * A kubeconfig in JSON (what @kubernetes/client-node's exportConfig, and so weir-cni-agent, writes) is
 * YAML too; JSON.parse reads it without loading the YAML parser, which costs a plugin exec ~10–20 ms
 * of CPU. Anything else (or JSON that does not parse) goes to the YAML parser, which decides.
 */
function parseJsonObject(text: string): Record<string, unknown> | undefined {
  if (!text.trimStart().startsWith('{')) return undefined;
  try {
    const doc: unknown = JSON.parse(text);
    return typeof doc === 'object' && doc !== null && !Array.isArray(doc) ? (doc as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The Status a failed API call answered with, when it sent one. */
export interface KubeApiFailure {
  status: number;
  reason: string | undefined;
}

/**
 * A deliberately tiny Kubernetes client: GETs JSON with the kubeconfig's credentials over one
 * keep-alive connection pool, so the plugin binary stays small and starts fast.
 */
export class KubeClient {
  readonly #conn: KubeConnection;
  readonly #timeoutMs: number;
  readonly #agent: HttpsAgent | undefined;

  constructor(conn: KubeConnection, opts: { timeoutMs?: number } = {}) {
    this.#conn = conn;
    this.#timeoutMs = opts.timeoutMs ?? 5000;
    if (conn.server.startsWith('https:')) {
      this.#agent = new HttpsAgent({
        keepAlive: true,
        // Both GETs share one connection: a single TLS handshake is most of the cost of a lookup.
        maxSockets: 1,
        ...(conn.ca ? { ca: conn.ca } : {}),
        ...(conn.clientCert ? { cert: conn.clientCert } : {}),
        ...(conn.clientKey ? { key: conn.clientKey } : {}),
        ...(conn.tlsServerName ? { servername: conn.tlsServerName } : {}),
        rejectUnauthorized: !conn.insecureSkipTlsVerify,
      });
    }
  }

  /** GETs `path` (e.g. `/api/v1/namespaces/default/pods/web-0`); rejects with ERR_CNI_KUBE_API on non-200. */
  get(path: string): Promise<unknown> {
    const url = new URL(this.#conn.server + path);
    const headers: Record<string, string> = { Accept: 'application/json', 'User-Agent': 'weir-cni' };
    if (this.#conn.token) headers['Authorization'] = `Bearer ${this.#conn.token}`;
    const fail = (what: string, cause?: unknown, failure?: KubeApiFailure) => {
      const err = new CniPluginError('ERR_CNI_KUBE_API', `GET ${url.href} ${what}`, { cause });
      return Object.assign(err, { failure });
    };
    return new Promise((resolve, reject) => {
      const onResponse = (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(fail(`failed: ${err.message}`, err));
        });
        res.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch (err) {
            return reject(fail(`answered ${res.statusCode} with a body that is not JSON`, err));
          }
          if (res.statusCode === 200) return resolve(body);
          const st = body as { message?: string; reason?: string };
          reject(fail(`answered ${res.statusCode}: ${st.message ?? text.slice(0, 200)}`, undefined, { status: res.statusCode ?? 0, reason: st.reason }));
        });
      };
      const req = url.protocol === 'https:'
        ? httpsRequest(url, { headers, agent: this.#agent }, onResponse)
        : httpRequest(url, { headers }, onResponse);
      const timer = setTimeout(() => {
        req.destroy();
        reject(fail(`did not answer within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      // A request still queued when close() drops the pool must not hold the process for the deadline.
      timer.unref();
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(fail(`failed: ${err.message}`, err));
      });
      req.end();
    });
  }

  /** Closes pooled connections. */
  close(): void {
    this.#agent?.destroy();
  }
}
