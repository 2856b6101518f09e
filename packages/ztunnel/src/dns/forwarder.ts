import { randomInt } from 'node:crypto';
import { isIPv6 } from 'node:net';
import type * as net from 'node:net';
import { isResponse, withId } from './message.js';
import type { UdpSocketFactory } from './udp-socket.js';

/** A resolver the proxy forwards to: the pod's resolver as the node sees it. */
export interface DnsUpstream {
  address: string;
  port: number;
}

/** Opens a TCP connection to an upstream from inside the pod (marked); connectTcp in production. */
export type UpstreamTcpConnect = (o: { host: string; port: number; family: 4 | 6; timeoutMs: number; signal: AbortSignal }) => Promise<net.Socket>;

export interface DnsForwarderOptions {
  upstreams: DnsUpstream[];
  udpSockets: UdpSocketFactory;
  connectTcp: UpstreamTcpConnect;
  /** SO_MARK for the upstream UDP sockets. */
  mark?: number;
  /** Budget for one forwarded query across all upstreams. */
  timeoutMs: number;
}

/** Why a forward failed, per upstream tried; the proxy answers SERVFAIL. */
export class DnsForwardError extends Error {
  constructor(
    message: string,
    readonly attempts: { upstream: string; error: string }[],
  ) {
    super(message);
    this.name = 'DnsForwardError';
  }
}

const hostPort = (u: DnsUpstream): string => (isIPv6(u.address) ? `[${u.address}]:${u.port}` : `${u.address}:${u.port}`);

/**
 * Sends a raw query to the upstream resolvers in order until one answers, from inside the pod with
 * the packet mark. UDP queries go out from a fresh socket (random source port) with a fresh random
 * id, so answers cannot be spoofed by guessing either; the client's id is restored on the answer.
 * A truncated UDP answer is passed back as is: the client repeats over TCP, and TCP queries are
 * forwarded over TCP.
 */
export class DnsForwarder {
  readonly #o: DnsForwarderOptions;

  constructor(o: DnsForwarderOptions) {
    this.#o = o;
  }

  get upstreams(): readonly DnsUpstream[] {
    return this.#o.upstreams;
  }

  async forward(query: Buffer, transport: 'udp' | 'tcp'): Promise<{ response: Buffer; upstream: string }> {
    const { upstreams, timeoutMs } = this.#o;
    if (upstreams.length === 0) throw new DnsForwardError('no upstream resolver configured', []);
    const deadline = Date.now() + timeoutMs;
    const attempts: { upstream: string; error: string }[] = [];
    for (let i = 0; i < upstreams.length; i++) {
      const u = upstreams[i]!;
      const left = deadline - Date.now();
      if (left <= 0) break;
      // Share what is left between the upstreams not yet tried, so a dead first one cannot eat it all.
      const budget = Math.max(1, Math.floor(left / (upstreams.length - i)));
      try {
        const response = transport === 'udp' ? await this.#udp(query, u, budget) : await this.#tcp(query, u, budget);
        return { response, upstream: hostPort(u) };
      } catch (err) {
        attempts.push({ upstream: hostPort(u), error: (err as Error).message });
      }
    }
    throw new DnsForwardError(
      `no upstream answered within ${timeoutMs} ms: ${attempts.map((a) => `${a.upstream} ${a.error}`).join('; ') || 'timed out'}`,
      attempts,
    );
  }

  async #udp(query: Buffer, u: DnsUpstream, timeoutMs: number): Promise<Buffer> {
    const family = isIPv6(u.address) ? 6 : 4;
    const socket = await this.#o.udpSockets({
      family,
      address: family === 6 ? '::' : '0.0.0.0',
      port: 0,
      ...(this.#o.mark !== undefined ? { mark: this.#o.mark } : {}),
    });
    const id = randomInt(0x10000);
    try {
      return await new Promise<Buffer>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`udp timed out after ${timeoutMs} ms`)), timeoutMs);
        socket.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        socket.on('message', (msg) => {
          // The socket is connected, so only the upstream can reach it; still check the id.
          if (!isResponse(msg) || msg.readUInt16BE(0) !== id) return;
          clearTimeout(timer);
          resolve(withId(msg, query.readUInt16BE(0)));
        });
        // Connected, so an ICMP port unreachable surfaces as ECONNREFUSED at once, not as a timeout.
        socket.connect(u.port, u.address, () => {
          socket.send(withId(query, id), (err) => {
            if (err) {
              clearTimeout(timer);
              reject(err);
            }
          });
        });
      });
    } finally {
      socket.close();
    }
  }

  async #tcp(query: Buffer, u: DnsUpstream, timeoutMs: number): Promise<Buffer> {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error(`tcp timed out after ${timeoutMs} ms`)), timeoutMs);
    let socket: net.Socket | undefined;
    try {
      socket = await this.#o.connectTcp({ host: u.address, port: u.port, family: isIPv6(u.address) ? 6 : 4, timeoutMs, signal: abort.signal });
      const s = socket;
      return await new Promise<Buffer>((resolve, reject) => {
        if (abort.signal.aborted) return reject(abort.signal.reason as Error);
        abort.signal.addEventListener('abort', () => reject(abort.signal.reason as Error), { once: true });
        let buf: Buffer = Buffer.alloc(0);
        s.on('data', (chunk: Buffer) => {
          buf = Buffer.concat([buf, chunk]);
          if (buf.length < 2) return;
          const len = buf.readUInt16BE(0);
          if (buf.length < 2 + len) return;
          const msg = buf.subarray(2, 2 + len);
          if (len < 12 || !isResponse(msg)) return reject(new Error(`tcp answer of ${len} bytes is not a DNS response`));
          resolve(Buffer.from(msg));
        });
        s.on('error', reject);
        s.on('end', () => reject(new Error('tcp connection closed before a full answer')));
        const frame = Buffer.alloc(2 + query.length);
        frame.writeUInt16BE(query.length, 0);
        query.copy(frame, 2);
        s.write(frame);
      });
    } finally {
      clearTimeout(timer);
      socket?.destroy();
    }
  }
}
