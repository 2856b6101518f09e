import { connectSeqpacket } from '@weir/netns';
import { ClientSession, type ZdsHandler } from './client-session.js';
import { ZdsError } from './errors.js';
import { silentLogger, type ZdsLogger } from './logger.js';

export interface ZdsClientOptions {
  /** The node agent's socket, e.g. /var/run/ztunnel/ztunnel.sock. */
  path: string;
  logger?: ZdsLogger;
  /** Reconnect delay: starts at initialMs, doubles per failed attempt up to maxMs. */
  backoff?: { initialMs: number; maxMs: number };
}

/**
 * ztunnel's end of ZDS: keeps one connection to the node agent, reconnecting with backoff, and feeds
 * every record to a handler.
 */
export class ZdsClient {
  readonly path: string;
  readonly #log: ZdsLogger;
  readonly #initialMs: number;
  readonly #maxMs: number;
  #session: ClientSession | undefined;
  #loop: Promise<void> | undefined;
  #closed = false;
  #wake: (() => void) | undefined;

  constructor(opts: ZdsClientOptions) {
    this.path = opts.path;
    this.#log = (opts.logger ?? silentLogger).child({ component: 'zds-client' });
    this.#initialMs = opts.backoff?.initialMs ?? 10;
    this.#maxMs = opts.backoff?.maxMs ?? 15_000;
  }

  /** True while a connection is up and the hello went out. */
  get connected(): boolean {
    return this.#session !== undefined;
  }

  start(handler: ZdsHandler): void {
    if (this.#loop !== undefined || this.#closed) {
      throw new ZdsError('ERR_ZDS_ALREADY_STARTED', `ZdsClient for ${this.path} was already started or closed`);
    }
    this.#loop = this.#run(handler);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#session?.close();
    this.#wake?.();
    await this.#loop;
  }

  async #run(handler: ZdsHandler): Promise<void> {
    let delay = this.#initialMs;
    while (!this.#closed) {
      const session = await this.#connect(handler);
      if (session !== undefined) {
        this.#session = session;
        if (this.#closed) session.close();
        safely(() => handler.onConnected?.(), this.#log, 'onConnected');
        const err = await session.done;
        this.#session = undefined;
        if (err !== undefined) this.#log.warn({ err: err.message, code: err.code }, 'zds connection lost');
        safely(() => handler.onDisconnected?.(err), this.#log, 'onDisconnected');
        // A connection that carried records was a good one: start over from the short delay.
        if (session.acked > 0) delay = this.#initialMs;
      }
      if (this.#closed) break;
      await this.#sleep(delay);
      delay = Math.min(delay * 2, this.#maxMs);
    }
  }

  async #connect(handler: ZdsHandler): Promise<ClientSession | undefined> {
    let session: ClientSession | undefined;
    try {
      const socket = await connectSeqpacket(this.path);
      session = new ClientSession(socket, handler, this.#log);
      if (this.#closed) {
        session.close();
        return undefined;
      }
      await session.hello();
      this.#log.info({ path: this.path }, 'connected to the node agent, hello sent');
      return session;
    } catch (err) {
      session?.close();
      this.#log.debug({ path: this.path, err: (err as Error).message }, 'zds connect failed, retrying');
      return undefined;
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
      this.#wake = done;
    });
  }
}

function safely(fn: () => void, log: ZdsLogger, what: string): void {
  try {
    fn();
  } catch (err) {
    log.error({ err: (err as Error).message }, `ZdsHandler.${what} threw`);
  }
}
