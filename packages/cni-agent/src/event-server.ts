import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { silentLogger, type Logger } from './logger.js';

/** The `/cmdadd` body, as the CNI plugin sends it (Go field names). */
export interface CmdAddEvent {
  Netns: string;
  PodName: string;
  PodNamespace: string;
  /** K8S_POD_UID, when the plugin sends it (Weir's plugin does, istio-cni's does not). */
  PodUID?: string | undefined;
  IPs: unknown[];
}

/** What a 200 to `/cmdadd` means; its body is `pod captured` or `pod not enrolled`. */
export type CmdAddOutcome = 'captured' | 'not-enrolled';

/** The 200 bodies, by outcome: the plugin logs which one it got. */
export const CMD_ADD_OK_BODY: Readonly<Record<CmdAddOutcome, string>> = {
  captured: 'pod captured\n',
  'not-enrolled': 'pod not enrolled\n',
};

export interface CniEventServerOptions {
  /** Unix socket path, normally `<run_dir>/pluginevent.sock`. */
  socketPath: string;
  /** Validates the body; throws (any error) for a bad body, which is answered 400. */
  parse: (body: unknown) => CmdAddEvent;
  /**
   * Decides and captures: resolves `captured` only once the pod is fully captured, `not-enrolled` when
   * there is nothing to capture (both 200, the body says which); rejects otherwise (500).
   */
  onCmdAdd: (event: CmdAddEvent, receivedAt: bigint) => Promise<CmdAddOutcome>;
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
 * The CNI plugin → agent event endpoint: HTTP over a unix socket. The plugin posts every pod it sees,
 * so this is where enrollment is decided: `POST /cmdadd` answers 200 `pod captured` only after the pod
 * is captured, 200 `pod not enrolled` when there is nothing to capture, 400 for a body that does not
 * parse, 500 when the decision or the capture failed.
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
      const outcome = await this.opts.onCmdAdd(event, receivedAt);
      reply(res, 200, CMD_ADD_OK_BODY[outcome]);
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
