import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ZtunnelError } from './errors.js';
import { LOG_LEVELS, type LogLevel } from './logger.js';

/** `host:port` or `[v6]:port`. */
export interface ListenAddress {
  host: string;
  port: number;
}

export function parseListenAddress(value: string): ListenAddress {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(value) ?? /^([^:]+):(\d+)$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new ZtunnelError('ERR_ZTUNNEL_CONFIG', `listen address ${JSON.stringify(value)} is not host:port or [v6]:port`);
  }
  return { host: m[1]!, port };
}

type Handler = (req: IncomingMessage, url: URL, body: string) => Promise<{ status: number; type?: string; body: string }>;

/** A small HTTP server: routes by path, buffers small request bodies. */
export class HttpEndpoint {
  readonly #server: Server;
  constructor(
    readonly name: string,
    routes: Record<string, Handler>,
  ) {
    this.#server = createServer((req, res) => void this.#handle(routes, req, res));
  }

  async #handle(routes: Record<string, Handler>, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = routes[url.pathname];
    let body = '';
    for await (const chunk of req) {
      body += String(chunk);
      if (body.length > 65536) break;
    }
    try {
      const out = route ? await route(req, url, body) : { status: 404, body: `no such endpoint ${url.pathname}\n` };
      res.writeHead(out.status, { 'content-type': out.type ?? 'text/plain; charset=utf-8' });
      res.end(out.body);
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`${(err as Error).message}\n`);
    }
  }

  listen(addr: ListenAddress): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void =>
        reject(new ZtunnelError('ERR_ZTUNNEL_SERVER', `${this.name} cannot listen on ${addr.host}:${addr.port}: ${err.message}`, { cause: err }));
      this.#server.once('error', onError);
      this.#server.listen(addr.port, addr.host, () => {
        this.#server.off('error', onError);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  address(): AddressInfo | undefined {
    return (this.#server.address() as AddressInfo | null) ?? undefined;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}

export interface AdminHooks {
  configDump(): unknown;
  logLevel(): LogLevel;
  setLogLevel(level: LogLevel): void;
  quit(): void;
}

/** Admin (127.0.0.1:15000): `/config_dump`, `/logging`, `/quitquitquit`. */
export function createAdminServer(hooks: AdminHooks): HttpEndpoint {
  return new HttpEndpoint('admin server', {
    '/config_dump': async () => ({
      status: 200,
      type: 'application/json',
      body: JSON.stringify(hooks.configDump(), null, 2) + '\n',
    }),
    '/logging': async (req, url, body) => {
      if (req.method === 'POST') {
        const level = url.searchParams.get('level') ?? new URLSearchParams(body).get('level') ?? '';
        if (!(LOG_LEVELS as readonly string[]).includes(level)) {
          return { status: 400, body: `invalid level ${JSON.stringify(level)}; one of ${LOG_LEVELS.join(', ')}\n` };
        }
        hooks.setLogLevel(level as LogLevel);
      }
      return { status: 200, body: `current log level is ${hooks.logLevel()}\n` };
    },
    '/quitquitquit': async (req) => {
      if (req.method !== 'POST') return { status: 405, body: 'POST only\n' };
      setImmediate(() => hooks.quit());
      return { status: 200, body: 'OK\n' };
    },
  });
}

/** Metrics (:15020): `/metrics` and `/stats/prometheus`. */
export function createMetricsServer(source: { text(): Promise<string>; contentType: string }): HttpEndpoint {
  const handler: Handler = async () => ({ status: 200, type: source.contentType, body: await source.text() });
  return new HttpEndpoint('metrics server', { '/metrics': handler, '/stats/prometheus': handler });
}

/** Readiness (:15021): 200 `ready`, or 500 `not ready, pending: …`. */
export function createReadinessServer(pending: () => string[]): HttpEndpoint {
  return new HttpEndpoint('readiness server', {
    '/healthz/ready': async () => {
      const p = pending();
      return p.length === 0 ? { status: 200, body: 'ready\n' } : { status: 500, body: `not ready, pending: ${p.join(', ')}\n` };
    },
  });
}
