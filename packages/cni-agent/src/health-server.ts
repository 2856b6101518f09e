import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface HealthServerOptions {
  host: string;
  port: number;
  /** Undefined when ready, else the reason it is not. */
  notReadyReason: () => string | undefined;
  registry: Registry;
  /** What `/debug/config` serves as JSON (read-only); no such path when undefined. */
  config?: () => unknown;
}

/**
 * `/readyz` (200 `ready` or 503 with the reason), `/metrics` (Prometheus text) and `/debug/config`
 * (the agent's effective options as JSON, for `weirctl doctor`; istio-cni has no such endpoint, the
 * path follows istiod's `/debug/...` read-only endpoints).
 */
export class HealthServer {
  private server: Server | undefined;

  constructor(private readonly opts: HealthServerOptions) {}

  async start(): Promise<AddressInfo> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path === '/readyz' || path === '/healthz/ready') {
        const why = this.opts.notReadyReason();
        res.writeHead(why === undefined ? 200 : 503, { 'content-type': 'text/plain' });
        res.end(why === undefined ? 'ready\n' : `not ready: ${why}\n`);
        return;
      }
      if (path === '/metrics' || path === '/stats/prometheus') {
        this.opts.registry.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': this.opts.registry.contentType });
            res.end(text);
          },
          (err: Error) => {
            res.writeHead(500, { 'content-type': 'text/plain' });
            res.end(`${err.message}\n`);
          },
        );
        return;
      }
      const config = this.opts.config;
      if (path === '/debug/config' && config !== undefined) {
        if (req.method !== 'GET' && req.method !== 'HEAD') {
          res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' });
          res.end('method not allowed\n');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`${JSON.stringify(config(), null, 2)}\n`);
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    return server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
