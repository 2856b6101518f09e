import type * as dgram from 'node:dgram';
import * as net from 'node:net';
import { connectTcp, listenTcp, type Netns } from '@weir/netns';
import { ZtunnelError } from '../errors.js';
import type { Logger } from '../logger.js';
import { silentLogger } from '../logger.js';
import type { WorkloadStore } from '../workload-store.js';
import { DnsForwarder, type DnsUpstream } from './forwarder.js';
import type { DnsMetrics } from './metrics.js';
import { HostResolver } from './host-resolver.js';
import { DnsNameTable } from './name-table.js';
import { DnsResolver } from './resolver.js';
import { isAddressUnavailable, type UdpSocketFactory } from './udp-socket.js';

export const DNS_PROXY_PORT = 15053;

export interface DnsProxyOptions {
  /** The pod's netns (borrowed; its owner closes it after stop()). */
  netns: Netns;
  /** SO_MARK on every socket (ztunnel: 1337), so the pod's rules never capture the proxy itself. */
  mark: number;
  store: WorkloadStore;
  /** Makes UDP sockets inside the pod's netns (ztunnel: `createUdpSocket` of @weir/netns). */
  udpSockets: UdpSocketFactory;
  /** Where names outside the mesh state go: the pod's resolver as the node sees it. */
  upstreams: DnsUpstream[];
  /** The pod's namespace and workload name (search path, metric labels). */
  namespace?: string | undefined;
  workloadName?: string | undefined;
  /** Default `cluster.local`. */
  clusterDomain?: string;
  /**
   * The mesh name index to answer from (built on `store` with this `clusterDomain`); default a table of
   * this proxy's own. One table shared by every pod's proxy keeps one index per node instead of per pod.
   */
  nameTable?: DnsNameTable;
  /** Default 15053. */
  port?: number;
  /** Also listen on ::1 when the pod's loopback has IPv6 (default true; skipped quietly when it has not). */
  ipv6?: boolean;
  /** Default true (an upgraded ztunnel binds beside the old one). */
  reusePort?: boolean;
  /** TTL of answers from the mesh state; default 30 s. */
  ttlSeconds?: number;
  /** Budget of one forwarded query across all upstreams; default 4000 ms (below glibc's 5 s retry). */
  timeoutMs?: number;
  /** Forwards in flight per pod; beyond it queries get SERVFAIL at once. Default 256. */
  maxInflight?: number;
  /** TCP clients at once per pod; default 64. */
  maxTcpConnections?: number;
  /** An idle TCP client is closed after this; default 10 s. */
  tcpIdleTimeoutMs?: number;
  metrics?: DnsMetrics;
  logger?: Logger;
}

/** Messages a TCP client may have in flight before we stop reading from it. */
const TCP_PIPELINE = 32;

const stoppedWhileStarting = (port: number): ZtunnelError =>
  new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `dns proxy on port ${port}: stopped while starting`);

const hostPort = (host: string, port: number): string => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

/**
 * One pod's DNS proxy: UDP and TCP on 127.0.0.1:15053 (and [::1]:15053 where the pod's loopback has
 * IPv6) inside the pod's netns, where the pod's DNS capture rule redirects its port-53 traffic.
 */
export class DnsProxy {
  readonly #o: DnsProxyOptions;
  readonly #log: Logger;
  readonly #resolver: DnsResolver;
  readonly #hosts: HostResolver;
  readonly #udp: dgram.Socket[] = [];
  readonly #tcp: net.Server[] = [];
  readonly #clients = new Set<net.Socket>();
  readonly #listeners: string[] = [];
  #stopped = false;
  /** start() in progress, for stop() to wait for: it closes what it bound after the stop. */
  #starting: Promise<unknown> | undefined;

  constructor(o: DnsProxyOptions) {
    this.#o = o;
    this.#log = (o.logger ?? silentLogger).child({ component: 'dns' });
    const forwarder = new DnsForwarder({
      upstreams: o.upstreams,
      udpSockets: o.udpSockets,
      mark: o.mark,
      timeoutMs: o.timeoutMs ?? 4000,
      connectTcp: ({ host, port, family, timeoutMs, signal }) =>
        connectTcp({ netns: o.netns, family, mark: o.mark, host, port, timeoutMs, signal }),
    });
    const table = o.nameTable ?? new DnsNameTable(o.store, o.clusterDomain !== undefined ? { clusterDomain: o.clusterDomain } : {});
    this.#hosts = new HostResolver({ table, namespace: o.namespace, forwarder });
    this.#resolver = new DnsResolver({
      table,
      forwarder,
      namespace: o.namespace,
      workloadName: o.workloadName,
      ttlSeconds: o.ttlSeconds ?? 30,
      maxInflight: o.maxInflight ?? 256,
      metrics: o.metrics,
      logger: this.#log,
    });
  }

  /** What is bound, e.g. `['udp 127.0.0.1:15053', 'tcp 127.0.0.1:15053']`. */
  get listeners(): string[] {
    return [...this.#listeners];
  }

  /**
   * A name → one IP as this pod's DNS would answer it (mesh state with the pod's search path, then
   * upstream); for SOCKS5 domain-name destinations. Works without start().
   */
  resolveHost(name: string): Promise<string | undefined> {
    return this.#hosts.resolve(name);
  }

  /** A name → one IP from the upstream resolvers only (`family` first), for endpoints known by hostname. */
  resolveUpstream(name: string, family: 4 | 6): Promise<string | undefined> {
    return this.#hosts.resolveUpstream(name, family);
  }

  /** Forwards in flight and TCP clients connected, for the admin dump and for tests of the limits. */
  stats(): { inflight: number; tcpClients: number } {
    return { inflight: this.#resolver.inflight, tcpClients: this.#clients.size };
  }

  /**
   * Binds UDP and TCP on 127.0.0.1 and, where possible, ::1. On failure nothing stays bound. A stop()
   * before it is done makes it fail with ERR_ZTUNNEL_PROXY_STOPPED, having closed what it bound.
   */
  start(): Promise<void> {
    const starting = this.#start();
    this.#starting = starting.catch(() => {});
    return starting;
  }

  async #start(): Promise<void> {
    const port = this.#o.port ?? DNS_PROXY_PORT;
    try {
      await this.#bind(4, '127.0.0.1', port);
      if (this.#o.ipv6 ?? true) {
        try {
          await this.#bind(6, '::1', port);
        } catch (err) {
          if (!isAddressUnavailable(err instanceof ZtunnelError ? err.cause : err)) throw err;
          // IPv6 disabled on the pod's loopback: exactly the case that must not break the pod.
          this.#log.debug({ err: (err as Error).message }, 'no IPv6 on the pod loopback, dns proxy on 127.0.0.1 only');
        }
      }
      if (this.#stopped) throw stoppedWhileStarting(port);
    } catch (err) {
      await Promise.all(this.#closeAll());
      throw err;
    }
    // Debug: a pod's proxy starts one per Add, with the same listeners each time (admin config_dump
    // lists them); at info it was a third of an enrollment's log lines.
    this.#log.debug({ listeners: this.#listeners.join(',') }, 'dns proxy started');
  }

  async #bind(family: 4 | 6, host: string, port: number): Promise<void> {
    if (this.#stopped) throw stoppedWhileStarting(port);
    const at = hostPort(host, port);
    let udp: dgram.Socket;
    try {
      udp = await this.#o.udpSockets({ family, address: host, port, mark: this.#o.mark, reusePort: this.#o.reusePort ?? true });
    } catch (err) {
      throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `dns proxy: cannot bind udp ${at}: ${(err as Error).message}`, { cause: err });
    }
    if (this.#stopped) {
      udp.close();
      throw stoppedWhileStarting(port);
    }
    udp.on('message', (msg, rinfo) => this.#onUdp(udp, msg, rinfo));
    udp.on('error', (err) => this.#log.warn({ err, listener: `udp ${at}` }, 'dns listener error'));
    const server = net.createServer({ noDelay: true }, (s) => this.#onTcp(s));
    server.maxConnections = this.#o.maxTcpConnections ?? 64;
    server.on('error', (err) => this.#log.warn({ err, listener: `tcp ${at}` }, 'dns listener error'));
    try {
      await listenTcp({ netns: this.#o.netns, host, port, mark: this.#o.mark, reusePort: this.#o.reusePort ?? true }, server);
    } catch (err) {
      udp.close();
      throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `dns proxy: cannot listen on tcp ${at}: ${(err as Error).message}`, { cause: err });
    }
    // Held now: start() checks for a stop after each bind and closes all it holds.
    this.#udp.push(udp);
    this.#tcp.push(server);
    this.#listeners.push(`udp ${at}`, `tcp ${at}`);
  }

  #closeAll(): Promise<void>[] {
    const closing = this.#tcp.splice(0).map((s) => new Promise<void>((r) => s.close(() => r())));
    for (const u of this.#udp.splice(0)) u.close();
    this.#listeners.length = 0;
    return closing;
  }

  #onUdp(udp: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const src = hostPort(rinfo.address, rinfo.port);
    void this.#resolver.answer(msg, 'udp', src).then((response) => {
      if (!response || this.#stopped) return;
      udp.send(response, rinfo.port, rinfo.address, (err) => {
        if (err) this.#log.debug({ err: err.message, src }, 'dns answer not sent');
      });
    });
  }

  #onTcp(socket: net.Socket): void {
    if (this.#stopped) return void socket.destroy();
    this.#clients.add(socket);
    const src = hostPort(socket.remoteAddress ?? '', socket.remotePort ?? 0);
    socket.on('close', () => this.#clients.delete(socket));
    socket.on('error', () => {});
    socket.setTimeout(this.#o.tcpIdleTimeoutMs ?? 10_000, () => socket.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let pending = 0;
    const onAnswer = (response: Buffer | undefined): void => {
      pending--;
      if (response && !socket.destroyed && response.length <= 0xffff) {
        const frame = Buffer.alloc(2);
        frame.writeUInt16BE(response.length, 0);
        socket.write(Buffer.concat([frame, response]));
      }
      if (pending < TCP_PIPELINE && socket.isPaused()) socket.resume();
    };
    socket.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = Buffer.from(buf.subarray(2, 2 + len));
        buf = buf.subarray(2 + len);
        pending++;
        void this.#resolver.answer(msg, 'tcp', src).then(onAnswer);
      }
      if (pending >= TCP_PIPELINE) socket.pause();
    });
  }

  /**
   * Closes the listeners and every TCP client; forwards in flight finish unanswered. Resolves once
   * nothing is bound, also when a start() was under way (it fails as stopped).
   */
  async stop(): Promise<void> {
    if (this.#stopped) return void (await this.#starting);
    this.#stopped = true;
    const closing = this.#closeAll();
    for (const c of this.#clients) c.destroy();
    await Promise.all([...closing, this.#starting]);
    this.#log.debug({}, 'dns proxy stopped');
  }
}
