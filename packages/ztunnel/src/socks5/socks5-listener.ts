import * as net from 'node:net';
import { listenTcp, type Netns } from '@weir/netns';
import { ZtunnelError } from '../errors.js';
import type { Logger } from '../logger.js';
import { silentLogger } from '../logger.js';
import { SOCKS5_REPLY, Socks5Handshake, socks5Reply, type Socks5Request } from './handshake.js';

export const SOCKS5_PORT = 15080;

/** Where a SOCKS5 client's connection goes: always an IP literal; `name` when the client gave one. */
export interface Socks5Target {
  host: string;
  port: number;
  name?: string;
}

export interface Socks5ListenerOptions {
  /** The pod's netns (borrowed). */
  netns: Netns;
  mark: number;
  /**
   * Takes over an accepted client once the handshake succeeded and the success reply went out:
   * the same outbound path as 15001 (HBONE to mesh destinations, passthrough otherwise). Bytes the
   * client sent behind its request are still readable from `socket`. A rejection destroys the socket.
   */
  onConnect: (socket: net.Socket, target: Socks5Target) => void | Promise<void>;
  /** Resolves a domain-name destination to an IP (mesh state first, then upstream DNS); undefined: unknown. */
  resolve?: (name: string) => Promise<string | undefined> | string | undefined;
  /** Default 127.0.0.1 (as the seed's `ss -ntlp` shows). */
  host?: string;
  /** Default 15080. */
  port?: number;
  reusePort?: boolean;
  /** Destination ports refused (0x05) because they are the proxy itself. Default 15001, 15006, 15008, 15053, 15080. */
  refusedPorts?: number[];
  /** A client that has not finished its handshake by then is dropped. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Default 1024. */
  maxConnections?: number;
  logger?: Logger;
}

const hostPort = (host: string, port: number): string => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

/**
 * ztunnel's SOCKS5 listener in a pod (`CONNECT` only, no authentication), through which an
 * application sends a connection into the mesh explicitly. It parses the handshake and hands the
 * socket and destination to `onConnect`.
 */
export class Socks5Listener {
  readonly #o: Socks5ListenerOptions;
  readonly #log: Logger;
  readonly #server: net.Server;
  readonly #handshaking = new Set<net.Socket>();
  #address: string | undefined;

  constructor(o: Socks5ListenerOptions) {
    this.#o = o;
    this.#log = (o.logger ?? silentLogger).child({ component: 'socks5' });
    this.#server = net.createServer({ noDelay: true, allowHalfOpen: true }, (s) => this.#onConnection(s));
    this.#server.maxConnections = o.maxConnections ?? 1024;
    this.#server.on('error', (err) => this.#log.warn({ err }, 'socks5 listener error'));
  }

  /** `127.0.0.1:15080` once started. */
  get address(): string | undefined {
    return this.#address;
  }

  async start(): Promise<void> {
    const host = this.#o.host ?? '127.0.0.1';
    const port = this.#o.port ?? SOCKS5_PORT;
    try {
      await listenTcp({ netns: this.#o.netns, host, port, mark: this.#o.mark, reusePort: this.#o.reusePort ?? true }, this.#server);
    } catch (err) {
      throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `socks5: cannot listen on ${hostPort(host, port)}: ${(err as Error).message}`, { cause: err });
    }
    this.#address = hostPort(host, port);
    this.#log.info({ address: this.#address }, 'socks5 listener started');
  }

  /** Stops accepting and drops clients still in their handshake; handed-over connections are the callback's. */
  async stop(): Promise<void> {
    if (this.#address === undefined) return;
    this.#address = undefined;
    const closed = new Promise<void>((r) => this.#server.close(() => r()));
    for (const s of this.#handshaking) s.destroy();
    await closed;
  }

  #onConnection(socket: net.Socket): void {
    const src = hostPort(socket.remoteAddress ?? '', socket.remotePort ?? 0);
    this.#handshaking.add(socket);
    socket.on('error', () => {});
    socket.once('close', () => this.#handshaking.delete(socket));
    socket.setTimeout(this.#o.handshakeTimeoutMs ?? 10_000, () => {
      this.#log.debug({ src }, 'socks5 handshake timed out');
      socket.destroy();
    });
    const hs = new Socks5Handshake();
    const onData = (chunk: Buffer): void => {
      const step = hs.push(chunk);
      if (step.kind === 'more') return;
      if (step.kind === 'reply') return void socket.write(step.reply);
      socket.off('data', onData);
      socket.pause();
      if (step.kind === 'fail') {
        this.#log.debug({ src, reason: step.reason }, 'socks5 request refused');
        if (step.reply.length > 0) socket.end(step.reply, () => socket.destroy());
        else socket.destroy();
        return;
      }
      if (step.reply.length > 0) socket.write(step.reply);
      void this.#connect(socket, src, step.request, step.rest);
    };
    socket.on('data', onData);
  }

  #refuse(socket: net.Socket, src: string, code: number, reason: string, dst: string): void {
    this.#log.debug({ src, dst, reply: code, reason }, 'socks5 request refused');
    socket.end(socks5Reply(code), () => socket.destroy());
  }

  async #connect(socket: net.Socket, src: string, req: Socks5Request, rest: Buffer): Promise<void> {
    let host = req.host;
    const dst = hostPort(req.host, req.port);
    if (req.addressType === 'domain') {
      let ip: string | undefined;
      try {
        ip = (await this.#o.resolve?.(req.host)) ?? undefined;
      } catch (err) {
        this.#log.debug({ src, name: req.host, err: (err as Error).message }, 'socks5 name resolution failed');
      }
      if (ip === undefined || net.isIP(ip) === 0) return this.#refuse(socket, src, SOCKS5_REPLY.HOST_UNREACHABLE, 'name does not resolve', dst);
      host = ip;
    }
    if (socket.destroyed) return;
    if (req.port === 0 || host === '0.0.0.0' || host === '::') {
      return this.#refuse(socket, src, SOCKS5_REPLY.CONNECTION_REFUSED, 'unspecified destination', dst);
    }
    if ((this.#o.refusedPorts ?? [15001, 15006, 15008, 15053, 15080]).includes(req.port)) {
      return this.#refuse(socket, src, SOCKS5_REPLY.CONNECTION_REFUSED, 'recursive call to ourselves', dst);
    }
    this.#handshaking.delete(socket);
    socket.setTimeout(0);
    socket.write(socks5Reply(SOCKS5_REPLY.SUCCEEDED));
    if (rest.length > 0) socket.unshift(rest);
    const target: Socks5Target = { host, port: req.port, ...(req.addressType === 'domain' ? { name: req.host } : {}) };
    this.#log.debug({ src, dst: hostPort(host, req.port), name: target.name }, 'socks5 connect');
    try {
      await this.#o.onConnect(socket, target);
    } catch (err) {
      this.#log.warn({ src, dst: hostPort(host, req.port), err }, 'socks5 connection failed');
      socket.destroy();
    }
  }
}
