import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { silentLogger, type Logger } from './logger.js';

/** The `/cmdadd` body, as the CNI plugin sends it (Go field names). */
export interface CmdAddEvent {
  Netns: string;
  PodName: string;
  PodNamespace: string;
  IPs: unknown[];
}

export interface CniEventServerOptions {
  /** Unix socket path, normally `<run_dir>/pluginevent.sock`. */
  socketPath: string;
  /** Validates the body; throws (any error) for a bad body, which is answered 400. */
  parse: (body: unknown) => CmdAddEvent;
  /** Captures the pod; resolves only when it is fully captured, rejects otherwise (500). */
  onCmdAdd: (event: CmdAddEvent, receivedAt: bigint) => Promise<void>;
  logger?: Logger;
  maxBodyBytes?: number;
}

class BadRequest extends Error {}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        reject(new BadRequest(`body larger than ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function reply(res: ServerResponse, status: number, text: string): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The CNI plugin → agent event endpoint: HTTP over a unix socket. `POST /cmdadd` answers 200 only
 * after the pod is captured, 400 for a body that does not parse, 500 when capture failed.
 */
export class CniEventServer {
  private server: Server | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: CniEventServerOptions) {
    this.log = (opts.logger ?? silentLogger).child({ scope: 'cni-event' });
  }

  async start(): Promise<void> {
    await mkdir(dirname(this.opts.socketPath), { recursive: true });
    // A socket file left by a previous (killed) agent blocks bind.
    await rm(this.opts.socketPath, { force: true });
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'cni event server error'));
    this.server = server;
    this.log.info({ socket: this.opts.socketPath }, 'cni event server listening');
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const receivedAt = process.hrtime.bigint();
    if (req.url !== '/cmdadd') return reply(res, 404, `unknown path ${req.url}\n`);
    if (req.method !== 'POST') return reply(res, 405, `method ${req.method} not allowed\n`);
    let event: CmdAddEvent;
    try {
      const raw = await readBody(req, this.opts.maxBodyBytes ?? 64 * 1024);
      let json: unknown;
      try {
        json = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        throw new BadRequest(`body is not JSON: ${(err as Error).message}`);
      }
      try {
        event = this.opts.parse(json);
      } catch (err) {
        throw new BadRequest(`bad cmdadd body: ${(err as Error).message}`);
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'rejecting cmdadd event');
      return reply(res, 400, `${(err as Error).message}\n`);
    }
    try {
      await this.opts.onCmdAdd(event, receivedAt);
      reply(res, 200, 'pod captured\n');
    } catch (err) {
      this.log.warn(
        { pod: `${event.PodNamespace}/${event.PodName}`, err: (err as Error).message },
        'cmdadd failed, pod not captured',
      );
      reply(res, 500, `${(err as Error).message}\n`);
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.opts.socketPath, { force: true });
  }
}
