import { lookup } from 'node:dns/promises';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  HboneClient,
  createHboneServer,
  type BufferBudget,
  type HboneConnectContext,
  type HbonePeer,
  type HboneAuthorizeResult,
  type HboneAbortSignal,
  type HboneServer,
  type HboneTarget,
  type HboneTlsOptions,
} from '@weir/hbone';
import { NetnsError, connectTcp, createUdpSocket, listenTcp, originalDst, socketLocalAddress, type ConnectTcpOptions, type Netns } from '@weir/netns';
import { evaluatePolicies, type AuthorizationDecision, type ConnectionAttributes, type PeerIdentity } from './authorization.js';
import { ConnectionRecord, openTally, type ConnectionInfo } from './connection-record.js';
import { DnsNameTable, DnsProxy, HostResolver, fdUdpSocketFactory, type DnsMetrics, type DnsUpstream } from './dns/index.js';
import { TCP_KEEPALIVE, copyBidirectional, tuneSocket } from './copy.js';
import { isZtunnelPort } from './inbound-target.js';
import { ZtunnelError } from './errors.js';
import type { IdentityManager, WorkloadCertificate } from './identity.js';
import type { Policy, Workload } from './local-config.js';
import type { Logger } from './logger.js';
import type { TcpTally, ZtunnelMetrics } from './metrics.js';
import { Socks5Listener } from './socks5/index.js';
import { newTraceparent } from './traceparent.js';
import { netnsHasTproxyRules } from './tproxy-rules.js';
import { DownstreamClosed, tunnelOutbound } from './outbound-tunnel.js';
import { outboundViaWaypoint, waypointFor } from './waypoint.js';
import type { WorkloadStore } from './workload-store.js';

export interface ProxyPorts {
  outbound: number;
  inboundPlaintext: number;
  inbound: number;
}
export const DEFAULT_PORTS: ProxyPorts = { outbound: 15001, inboundPlaintext: 15006, inbound: 15008 };

/** `auto`: try IP_TRANSPARENT, fall back without; `required`: fail without it; `never`: don't try. */
export type OrigSrcMode = 'auto' | 'required' | 'never';

export interface PodWorkloadInfo {
  name: string;
  namespace: string;
  serviceAccount: string;
}

export interface InpodProxyOptions {
  uid: string;
  workloadInfo?: PodWorkloadInfo | undefined;
  /** The pod's netns; the proxy borrows it (its owner closes it after stop()). */
  netns: Netns;
  store: WorkloadStore;
  identities: IdentityManager;
  /** The mesh trust bundle (PEM roots); a function is read per TLS context, so a rotated bundle takes effect. */
  trustBundle: string | (() => string);
  trustDomain: string;
  /** Sent in the HBONE `baggage` header (`k8s.cluster.name`). */
  clusterId?: string;
  mark: number;
  reusePort: boolean;
  origSrc: OrigSrcMode;
  ipv6: boolean;
  ports?: ProxyPorts;
  metrics: ZtunnelMetrics;
  logger: Logger;
  /** Outbound TCP connect timeout (ztunnel: 10 s). */
  connectTimeoutMs?: number;
  /** Bounds what paused HBONE tunnels hold, shared by every pod's client and server (one per process). */
  bufferBudget?: BufferBudget;
  /** SOCKS5 on 127.0.0.1:15080 into the outbound path; default off (as current ztunnel). */
  socks5?: boolean;
  /** DNS proxy on 15053 (UDP+TCP, 127.0.0.1 and ::1 where lo has IPv6); undefined: off. */
  dns?: { upstreams: DnsUpstream[]; metrics: DnsMetrics; clusterDomain?: string; nameTable?: DnsNameTable } | undefined;
  /**
   * Fetch the pod's certificate before binding, and fail start() when the CA does: an ack then also
   * means mTLS is ready, at the cost of a CA round trip per enrollment. Default false: bind at once and
   * fetch it in the background (as ztunnel does); mTLS connections that come first wait for it.
   */
  awaitCertificate?: boolean;
  /**
   * Retry delays of the background certificate fetch while the CA fails: doubling, jittered (default
   * 500 ms to 30 s); at most half the connect timeout while connections wait for the certificate.
   */
  certificateRetry?: { initialMs: number; maxMs: number };
  /**
   * Connections that may wait for the pod's first certificate at once (default 1024); beyond it new
   * ones are closed at once, so a CA outage cannot pin the node's fds (each waits up to the connect timeout).
   */
  maxCertificateWaiters?: number;
  /**
   * How the first certificate fetch after start() is scheduled (without `awaitCertificate`): called
   * once start() has bound everything, with the fetch to run when it suits (e.g. once no enrollment
   * waits for its ack). Running it later is harmless: it does nothing once the proxy stopped, has or
   * is fetching its certificate, or a connection already started it (one that comes first never waits
   * for the scheduler). Default: at once.
   */
  prefetch?: (fetch: () => void) => void;
}

export interface InpodProxyState {
  uid: string;
  name: string | undefined;
  namespace: string | undefined;
  identity: string;
  netns: { dev: number; ino: number };
  listeners: string[];
  transparent: boolean;
  connections: number;
}

const normalizeIp = (ip: string | undefined): string =>
  ip === undefined ? '' : ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
// Only ever given IP literals (or ''), and only IPv6 ones contain ':' (net.isIPv6 runs a long regex).
const familyOf = (ip: string): 4 | 6 => (ip.includes(':') ? 6 : 4);
const hostPort = (ip: string, port: number): string => (familyOf(ip) === 6 ? `[${ip}]:${port}` : `${ip}:${port}`);

// One listener shared by every socket: a per-connection closure costs memory for as long as the
// connection is idle.
const ignoreError = (): void => {};

function errnoOf(err: unknown): number | undefined {
  return err instanceof NetnsError ? err.errno : undefined;
}

/** An HBONE session's peer as the inbound path uses it (`peerInfo`: one per session, shared by its streams). */
interface PeerInfo {
  ip: string;
  identity: PeerIdentity | undefined;
  /** The SPIFFE URI, for access logs. */
  name: string | undefined;
  /** The proxy's store generation `srcWorkload` and `tally` were taken at (-1: not yet). */
  gen: number;
  srcWorkload: Workload | undefined;
  /** The open tally of this peer's tunnels into this pod. */
  tally: TcpTally | undefined;
}
const peerInfo = new WeakMap<HbonePeer, PeerInfo>();

/** A mesh destination's per-workload constants for outbound tunnels, kept until the store changes. */
interface OutboundPeer {
  identity: string;
  /** expectedIdentities when the destination has no service SANs. */
  expected: string[];
  /** The open tally of a tunnel to this workload (its labels do not depend on addresses). */
  tally: TcpTally;
}

const NO_POLICIES: AuthorizationDecision = Object.freeze({ allowed: true, reason: 'no-allow-policies' });

/** #podIps while the workload state does not know this pod: no address is this pod's yet. */
const NO_WORKLOAD: ReadonlySet<string> = new Set();

const isLoopback = (ip: string): boolean => ip === '::1' || ip.startsWith('127.');

/**
 * The addresses inbound may target: the workload's IPs, never loopback or unspecified ones (a tunnel
 * to 127.0.0.1 would reach the pod's localhost-only services from the mesh).
 */
function podIpsOf(w: Workload | undefined): ReadonlySet<string> {
  if (w === undefined) return NO_WORKLOAD;
  const ips = new Set<string>();
  for (const raw of w.workloadIps) {
    const ip = normalizeIp(raw);
    if (ip !== '' && !isLoopback(ip) && ip !== '0.0.0.0' && ip !== '::') ips.add(ip);
  }
  return ips;
}

// Errors where retrying a connect without source spoofing can help (no IP_TRANSPARENT, address not bindable).
const SPOOF_ERRNOS = new Set([1, 13, 22, 99]); // EPERM EACCES EINVAL EADDRNOTAVAIL

/**
 * One pod's proxy: listeners on 15001/15006/15008 inside the pod's netns, an HBONE client for its
 * outbound tunnels (dialled from inside the pod with the packet mark), an HBONE server for inbound,
 * and tracking of live connections so the proxy can drain.
 */
export class InpodProxy {
  readonly uid: string;
  readonly identity: string;
  readonly #o: InpodProxyOptions;
  readonly #ports: ProxyPorts;
  readonly #log: Logger;
  readonly #servers: net.Server[] = [];
  readonly #live = new Set<Duplex>();
  /** Authorized inbound connections, re-checked when policies change. */
  readonly #inbound = new Map<Duplex, ConnectionAttributes>();
  /**
   * The policies those connections were last decided by. Unchanged policy objects keep their
   * identity across xDS pushes, so a push of some other workload re-evaluates (and logs) nothing.
   */
  #checkedPolicies: readonly Policy[] = [];
  readonly #onStoreChange = (): void => {
    this.#baggage = undefined;
    this.#srcInfo = undefined;
    this.#outboundPeers = new WeakMap();
    this.#podIps = undefined;
    this.#storeGen++;
    this.#recheckInbound();
  };
  /** 'close' listeners shared by all connections (called with the closed stream as `this`). */
  readonly #untrack: (this: Duplex) => void;
  readonly #untrackInbound: (this: Duplex) => void;
  /** The access log (`component: access`), one per proxy rather than a child logger per connection. */
  readonly #accessLog: Logger;
  /** The HBONE `baggage` value: the same for every connection of this pod until the store changes. */
  #baggage: string | undefined;
  /** This pod as a connection's endpoint (#src()), likewise. */
  #srcInfo: { workload: string | undefined; namespace: string | undefined; identity: string } | undefined;
  /** Per destination workload object (the store makes new ones on change, and this is reset then too). */
  #outboundPeers = new WeakMap<Workload, OutboundPeer>();
  /** Bumped on every store change: per-session caches (PeerInfo) taken before are stale. */
  #storeGen = 0;
  /**
   * IPs this pod answers on (#ownIps()): its workload's, from the store, made again after a store
   * change. Never learned from sockets: an in-pod connect to 127.0.0.1:15006 must not open loopback
   * to HBONE peers, nor a REDIRECTed foreign destination make this pod a relay.
   */
  #podIps: ReadonlySet<string> | undefined;
  #listeners: string[] = [];
  #transparent = false;
  // Made on first use (#client(), #server()): each holds its own TLS context (~28 KiB of native
  // memory) and most pods on a node carry no mesh traffic in one direction or the other.
  #hboneServer: HboneServer | undefined;
  #hboneClient: HboneClient | undefined;
  /** The pod's current certificate; rotations replace it. Undefined until the first one arrives. */
  #cert: WorkloadCertificate | undefined;
  readonly #onRotate = (next: WorkloadCertificate): void => {
    this.#cert = next;
    this.#hboneServer?.setTls(this.#tls(next));
    this.#hboneClient?.setTls(this.#tls(next));
    // Another pod of this identity may bring a newer one before our own first fetch answers.
    for (const w of this.#certWaiters) w.resolve();
  };
  /** Connections waiting for the first certificate (#certified()). */
  readonly #certWaiters = new Set<{ resolve: () => void; reject: (err: Error) => void }>();
  /** Why the last fetch of the first certificate failed (named in the waiters' error). */
  #certError: string | undefined;
  #certRetry: NodeJS.Timeout | undefined;
  /** When #certRetry fires (Date.now() time). */
  #certRetryAt = 0;
  #certBackoffMs = 0;
  /** An acquire is in flight: a wake-up (#certAvailable) does not start another. */
  #certFetching = false;
  /** The first fetch has begun (from the prefetch or a connection): a later prefetch does nothing. */
  #certAsked = false;
  /** Stops IdentityManager's whenAvailable() for this identity, watched while a fetch has failed. */
  #unwatchCert: (() => void) | undefined;
  /** What connections beyond maxCertificateWaiters are refused with (one error: no stack per refusal). */
  #tooManyWaiting: ZtunnelError | undefined;
  /** Refusals since the last log line about them, and when that was (logged once per wait period). */
  #refusedWaiting = 0;
  #refusedLoggedAt = 0;
  #socks5: Socks5Listener | undefined;
  #dns: DnsProxy | undefined;
  #releaseCert: (() => void) | undefined;
  #stopped = false;
  /** start() binding: stop() waits for it to finish or give all back. */
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  /** Releases everything held; once, shared by a failing start() and stop(). */
  #teardown: Promise<void> | undefined;

  constructor(o: InpodProxyOptions) {
    this.#o = o;
    this.uid = o.uid;
    this.#ports = o.ports ?? DEFAULT_PORTS;
    const info = o.workloadInfo;
    const w = this.#workload();
    if (info) this.identity = `spiffe://${o.trustDomain}/ns/${info.namespace}/sa/${info.serviceAccount || 'default'}`;
    else if (w) this.identity = o.store.identityOf(w);
    else {
      throw new ZtunnelError(
        'ERR_ZTUNNEL_UNKNOWN_WORKLOAD',
        `pod uid ${o.uid}: no workload info from the node agent and no workload with that uid in the local config`,
      );
    }
    this.#log = o.logger.child({ uid: o.uid });
    this.#accessLog = this.#log.child({ component: 'access' });
    const live = this.#live;
    const inbound = this.#inbound;
    this.#untrack = function (this: Duplex) {
      live.delete(this);
    };
    this.#untrackInbound = function (this: Duplex) {
      inbound.delete(this);
    };
  }

  get netns(): Netns {
    return this.#o.netns;
  }

  /** The pod's workload in the store (by uid, then by name/namespace); state may change under us. */
  #workload(): Workload | undefined {
    const { store, uid, workloadInfo } = this.#o;
    return store.workloadByUid(uid) ?? (workloadInfo ? store.workloadByName(workloadInfo.namespace, workloadInfo.name) : undefined);
  }

  #tls(cert: WorkloadCertificate): HboneTlsOptions {
    const tb = this.#o.trustBundle;
    return { key: cert.keyPem, cert: cert.chainPem, ca: typeof tb === 'function' ? tb() : tb };
  }

  /**
   * Binds the listeners (15001/15006/15008, and DNS/SOCKS5 when on) and resolves: the pod's traffic is
   * captured from then on. Its certificate is then fetched in the background, as upstream ztunnel
   * prefetches it, when the `prefetch` scheduler runs the fetch (see #certified() for the connections
   * that come first); with
   * `awaitCertificate` it is fetched before binding instead, and start() fails when the CA does. On
   * failure everything is released. A stop() before it is done makes it fail with
   * ERR_ZTUNNEL_PROXY_STOPPED, holding nothing; that stop() resolves once nothing is bound (it never
   * waits for the certificate fetch, which holds nothing in the pod: the certificate is released when
   * it arrives).
   */
  async start(): Promise<void> {
    const stopped = (): ZtunnelError => new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `pod ${this.uid}: proxy stopped while starting`);
    if (this.#stopped) throw stopped();
    if (this.#o.awaitCertificate === true) {
      try {
        await this.#fetchCertificate(false);
      } catch (err) {
        this.#stopped = true;
        await this.#release(0);
        throw err;
      }
      // stop() ran during the fetch and has already torn down (the fetch gave the certificate back).
      if (this.#stopped) throw stopped();
    }
    let bound: (() => void) | undefined;
    try {
      // No await since the check above: stop() either ran before it or sees this.
      this.#starting = new Promise<void>((r) => (bound = r));
      this.#checkedPolicies = this.#policiesNow();
      this.#o.store.on('change', this.#onStoreChange);
      // Checked after every step: a stop() is waiting for us to give up.
      await this.#listen(this.#ports.outbound, (s) => this.#onOutbound(s));
      if (this.#stopped) throw stopped();
      await this.#listen(this.#ports.inboundPlaintext, (s) => this.#onInboundPlaintext(s));
      if (this.#stopped) throw stopped();
      await this.#listen(this.#ports.inbound, (s) => this.#onInboundHbone(s));
      if (this.#stopped) throw stopped();
      if (!this.#transparent) this.#checkInboundCapture();
      if (this.#o.dns) await this.#startDns(this.#o.dns);
      if (this.#stopped) throw stopped();
      if (this.#o.socks5) await this.#startSocks5();
      if (this.#stopped) throw stopped();
      // Asked once everything is bound: the key generation and signing (or CSR) do not hold up the
      // Add's ack, and a connection that comes first starts it and waits for it.
      if (this.#o.awaitCertificate !== true) {
        if (this.#o.prefetch) this.#o.prefetch(this.#prefetch);
        else this.#prefetch();
      }
    } catch (err) {
      // Not stop(): it may be waiting for this very start(), through #starting.
      this.#stopped = true;
      await this.#release(0);
      throw err;
    } finally {
      this.#starting = undefined;
      bound?.();
    }
  }

  /**
   * One ask for the pod's certificate. What arrives after a stop is given back at once; a failure is
   * logged and, with `retry`, asked again after a doubling, jittered delay until a certificate comes or
   * the proxy stops (IdentityManager retries only certificates it has handed out).
   */
  async #fetchCertificate(retry: boolean): Promise<void> {
    let got: { cert: WorkloadCertificate; release: () => void };
    this.#certFetching = true;
    this.#certAsked = true;
    try {
      got = await this.#o.identities.acquire(this.identity, this.#onRotate);
    } catch (err) {
      if (this.#stopped) throw err;
      this.#certError = (err as Error).message;
      if (retry) {
        const { initialMs, maxMs } = this.#o.certificateRetry ?? { initialMs: 500, maxMs: 30_000 };
        this.#certBackoffMs = this.#certBackoffMs === 0 ? initialMs : Math.min(maxMs, this.#certBackoffMs * 2);
        let delay = Math.round(this.#certBackoffMs / 2 + (Math.random() * this.#certBackoffMs) / 2);
        if (this.#certWaiters.size > 0) delay = Math.min(delay, this.#waitingRetryMs());
        this.#log.warn({ identity: this.identity, err, retry_ms: delay, waiting: this.#certWaiters.size }, 'failed to fetch certificate, retrying');
        this.#retryCertificate(delay);
        // IdentityManager drops a failed acquirer: without this, a certificate another pod of this
        // identity gets once the CA is back would reach this pod only at its own (backed-off) retry.
        this.#unwatchCert ??= this.#o.identities.whenAvailable(this.identity, this.#certAvailable);
      }
      throw err;
    } finally {
      this.#certFetching = false;
    }
    this.#unwatchCert?.();
    this.#unwatchCert = undefined;
    if (this.#stopped) return got.release();
    this.#releaseCert = got.release;
    // A rotation may already have landed through #onRotate: keep the newer one.
    this.#cert ??= got.cert;
    this.#certError = undefined;
    this.#log.debug({ identity: this.identity, serial: got.cert.serial, waiting: this.#certWaiters.size }, 'certificate ready');
    for (const w of this.#certWaiters) w.resolve();
  }

  #retryCertificate(delay: number): void {
    clearTimeout(this.#certRetry);
    this.#certRetryAt = Date.now() + delay;
    this.#certRetry = setTimeout(() => {
      this.#certRetry = undefined;
      if (!this.#stopped) this.#fetchCertificate(true).catch(ignoreError);
    }, delay);
  }

  /** The retry delay while connections wait: a quarter to half the connect timeout, so one lands within their wait. */
  #waitingRetryMs(): number {
    const ms = this.#o.connectTimeoutMs ?? 10_000;
    return Math.round(ms / 4 + (Math.random() * ms) / 4);
  }

  /** The first fetch, when nothing started it yet (the scheduler may call it late, or after a stop). */
  readonly #prefetch = (): void => {
    if (this.#stopped || this.#cert !== undefined || this.#certFetching || this.#certAsked) return;
    this.#fetchCertificate(true).catch(ignoreError);
  };

  /** IdentityManager holds a valid certificate for this identity now (another pod fetched it): take it. */
  readonly #certAvailable = (): void => {
    if (this.#stopped || this.#cert !== undefined || this.#certFetching) return;
    clearTimeout(this.#certRetry);
    this.#certRetry = undefined;
    this.#fetchCertificate(true).catch(ignoreError);
  };

  /**
   * Resolves once the pod has its certificate: at once, except for a connection that comes before the
   * first one arrived, which waits for it, at most the connect timeout. It fails (the connection is
   * closed, never served without mTLS nor let around the proxy) when none comes by then, the proxy
   * stops, or `signal` (the downstream going away) aborts; at once when maxCertificateWaiters
   * connections are waiting already.
   */
  #certified(signal?: HboneAbortSignal): Promise<void> {
    if (this.#cert) return Promise.resolve();
    if (this.#stopped) return Promise.reject(new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `pod ${this.uid}: proxy stopped, no new tunnels`));
    if (signal?.aborted === true) return Promise.reject(signal.reason as Error);
    const ms = this.#o.connectTimeoutMs ?? 10_000;
    const max = this.#o.maxCertificateWaiters ?? 1024;
    if (this.#certWaiters.size >= max) return Promise.reject(this.#refuseWaiter(max, ms));
    // Before the scheduled prefetch ran: this connection needs the certificate now.
    this.#prefetch();
    // A retry backed off beyond the wait would come too late for this connection: bring it forward.
    if (this.#certRetry !== undefined && this.#certRetryAt - Date.now() > ms / 2) this.#retryCertificate(this.#waitingRetryMs());
    return new Promise<void>((resolve, reject) => {
      const settle = (err?: Error): void => {
        clearTimeout(timer);
        this.#certWaiters.delete(waiter);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const waiter = { resolve: () => settle(), reject: settle };
      const onAbort = (): void => settle(signal?.reason as Error);
      const timer = setTimeout(() => {
        const why = this.#certError ?? 'the CA has not answered yet';
        settle(new ZtunnelError('ERR_ZTUNNEL_IDENTITY', `pod ${this.uid}: no certificate for ${this.identity} within ${ms} ms (${why})`));
      }, ms);
      this.#certWaiters.add(waiter);
      signal?.addEventListener('abort', onAbort);
    });
  }

  /** A connection beyond maxCertificateWaiters: refused, and logged once per wait period with the count. */
  #refuseWaiter(max: number, ms: number): ZtunnelError {
    this.#tooManyWaiting ??= new ZtunnelError(
      'ERR_ZTUNNEL_IDENTITY',
      `pod ${this.uid}: ${max} connections already wait for a certificate for ${this.identity}; connection closed`,
    );
    this.#refusedWaiting++;
    const now = Date.now();
    if (now - this.#refusedLoggedAt >= ms) {
      this.#log.warn(
        { identity: this.identity, waiting: this.#certWaiters.size, refused: this.#refusedWaiting, err: this.#certError },
        'connections closed: too many waiting for the certificate',
      );
      this.#refusedLoggedAt = now;
      this.#refusedWaiting = 0;
    }
    return this.#tooManyWaiting;
  }

  /** The HBONE client for this pod's outbound tunnels (dialled from inside the pod, marked). */
  #client(): HboneClient {
    if (this.#hboneClient) return this.#hboneClient;
    if (this.#stopped || !this.#cert) throw new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `pod ${this.uid}: proxy stopped, no new tunnels`);
    this.#hboneClient = new HboneClient({
      tls: this.#tls(this.#cert),
      socketFactory: (peer) =>
        connectTcp({
          netns: this.#o.netns,
          family: familyOf(peer.host),
          mark: this.#o.mark,
          host: peer.host,
          port: peer.port,
          timeoutMs: this.#o.connectTimeoutMs ?? 10_000,
          noDelay: true,
          keepalive: TCP_KEEPALIVE,
        }),
      maxStreamsPerSession: 100,
      // The whole HBONE connect (TCP, TLS, the peer's SETTINGS) within the pod's connect timeout;
      // the CONNECT answer keeps the client's default (15 s): the peer first connects to its app,
      // with its own 10 s timeout, before it answers.
      connectTimeoutMs: this.#o.connectTimeoutMs ?? 10_000,
      ...(this.#o.bufferBudget ? { bufferBudget: this.#o.bufferBudget } : {}),
    });
    return this.#hboneClient;
  }

  /** The HBONE server terminating tunnels to this pod on 15008. */
  #server(): HboneServer | undefined {
    if (this.#hboneServer || this.#stopped || !this.#cert) return this.#hboneServer;
    this.#hboneServer = createHboneServer({
      tls: this.#tls(this.#cert),
      validateTarget: (t) => this.#isHboneTarget(t.host) && !isZtunnelPort(t.port, this.#ports),
      authorize: (peer, target) => this.#authorizeHbone(peer, target),
      connect: (target, ctx) => this.#connectHbone(target, ctx),
      logger: this.#log.child({ component: 'hbone' }),
      ...(this.#o.bufferBudget ? { bufferBudget: this.#o.bufferBudget } : {}),
    });
    return this.#hboneServer;
  }

  async #startDns(dns: NonNullable<InpodProxyOptions['dns']>): Promise<void> {
    const { netns, mark } = this.#o;
    const src = this.#src();
    this.#dns = new DnsProxy({
      netns,
      mark,
      store: this.#o.store,
      // Sockets made natively inside the pod netns, with the mark, so the capture rule skips our own queries.
      udpSockets: fdUdpSocketFactory((s) =>
        createUdpSocket({ netns, family: s.family, bindAddress: s.address, bindPort: s.port, mark: s.mark, reusePort: s.reusePort }),
      ),
      upstreams: dns.upstreams,
      namespace: src.namespace,
      workloadName: src.workload,
      ipv6: this.#o.ipv6,
      reusePort: this.#o.reusePort,
      metrics: dns.metrics,
      logger: this.#log,
      ...(dns.clusterDomain ? { clusterDomain: dns.clusterDomain } : {}),
      ...(dns.nameTable ? { nameTable: dns.nameTable } : {}),
    });
    await this.#dns.start();
    this.#listeners.push(...this.#dns.listeners);
  }

  async #startSocks5(): Promise<void> {
    // Names resolve like the pod's DNS: through the DNS proxy when it runs, else from the mesh state only.
    const dns = this.#dns;
    const hosts = dns ? undefined : new HostResolver({ table: new DnsNameTable(this.#o.store), namespace: this.#src().namespace });
    const resolve = (name: string): Promise<string | undefined> => (dns ? dns.resolveHost(name) : hosts!.resolve(name));
    this.#socks5 = new Socks5Listener({
      netns: this.#o.netns,
      mark: this.#o.mark,
      reusePort: this.#o.reusePort,
      logger: this.#log.child({ component: 'socks5' }),
      resolve,
      onConnect: (socket, target) => {
        socket.on('error', ignoreError);
        this.#track(socket);
        tuneSocket(socket);
        return this.#outboundTo(socket, { address: normalizeIp(target.host), port: target.port });
      },
    });
    await this.#socks5.start();
    if (this.#socks5.address) this.#listeners.push(this.#socks5.address);
  }

  async #listen(port: number, onConnection: (s: net.Socket) => void): Promise<void> {
    // Not Node's keepAlive (it would set only the idle time): Istio's three timers are set on the
    // listener, and every accepted socket inherits them.
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
    server.on('error', (err: Error) => this.#log.warn({ err, port }, 'listener error'));
    const { origSrc, mark, reusePort, ipv6, netns } = this.#o;
    const hosts = ipv6 ? ['::', '0.0.0.0'] : ['0.0.0.0'];
    let lastErr: unknown;
    for (const host of hosts) {
      for (const transparent of origSrc === 'never' ? [false] : origSrc === 'required' ? [true] : [true, false]) {
        if (this.#servers.length > 0 && transparent !== this.#transparent) continue;
        try {
          await listenTcp({ netns, host, port, mark, reusePort, transparent, keepalive: TCP_KEEPALIVE }, server);
          this.#transparent = transparent;
          this.#servers.push(server);
          this.#listeners.push(hostPort(host, port));
          return;
        } catch (err) {
          lastErr = err;
          const errno = errnoOf(err);
          // EPERM: no IP_TRANSPARENT here → try without; EAFNOSUPPORT/EADDRNOTAVAIL on [::]: no IPv6 → 0.0.0.0.
          if (errno === 1 && transparent) continue;
          if ((errno === 97 || errno === 99) && host === '::') break;
          throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `pod ${this.uid}: cannot listen on ${hostPort(host, port)}: ${(err as Error).message}`, { cause: err });
        }
      }
    }
    throw new ZtunnelError('ERR_ZTUNNEL_PROXY_START', `pod ${this.uid}: cannot listen on port ${port}: ${(lastErr as Error | undefined)?.message}`, { cause: lastErr });
  }

  /** This pod's IPs from the store; NO_WORKLOAD while the store does not know the pod. */
  #ownIps(): ReadonlySet<string> {
    return (this.#podIps ??= podIpsOf(this.#workload()));
  }

  /**
   * An HBONE target must be one of this pod's IPs (else 400). A pod the store does not know has none
   * to check yet: authorize refuses it then (unknown destination), naming why.
   */
  #isHboneTarget(host: string): boolean {
    const ips = this.#ownIps();
    return ips === NO_WORKLOAD || ips.has(normalizeIp(host));
  }

  #track(d: Duplex): void {
    this.#live.add(d);
    // 'close' fires once: on() with a shared function, not once() (a wrapper per call).
    d.on('close', this.#untrack);
  }

  /** This pod as a connection's endpoint; callers copy from it, never change it. */
  #src(): { readonly workload: string | undefined; readonly namespace: string | undefined; readonly identity: string } {
    if (this.#srcInfo) return this.#srcInfo;
    const w = this.#workload();
    return (this.#srcInfo = {
      workload: w?.name ?? this.#o.workloadInfo?.name,
      namespace: w?.namespace ?? this.#o.workloadInfo?.namespace,
      identity: this.identity,
    });
  }

  /**
   * Original destination. REDIRECT (the outbound capture) rewrites it to the listener's port and
   * SO_ORIGINAL_DST has it; TPROXY (inbound, in the seed's mode) keeps it as the local address, where
   * SO_ORIGINAL_DST fails (no NAT entry: an error and its stack per connection). `tproxyFirst`: look
   * at the local address first, and take it unless its port is the listener's own (then REDIRECT).
   */
  #destination(socket: net.Socket, listenerPort: number, tproxyFirst: boolean): { address: string; port: number } | undefined {
    if (tproxyFirst) {
      const localPort = socket.localPort;
      const address = normalizeIp(socket.localAddress);
      if (localPort !== undefined && localPort !== listenerPort && address !== '') return { address, port: localPort };
    }
    try {
      const d = originalDst(socket);
      return { address: normalizeIp(d.address), port: d.port };
    } catch {
      try {
        const d = socketLocalAddress(socket);
        return { address: normalizeIp(d.address), port: d.port };
      } catch {
        return undefined;
      }
    }
  }

  /**
   * Listeners without IP_TRANSPARENT (origSrc `never`, or `auto` without the right) under the seed's
   * TPROXY rules: the kernel drops every inbound connection, since TPROXY only delivers to transparent
   * sockets. Refused here rather than run a proxy that silently takes no inbound. Rules loaded by legacy
   * iptables are not seen; a dump the kernel refuses is logged and the proxy runs.
   */
  #checkInboundCapture(): void {
    let tproxy: boolean;
    try {
      tproxy = netnsHasTproxyRules(this.#o.netns);
    } catch (err) {
      this.#log.warn({ err }, "cannot read the pod's nftables rules: not checked whether inbound capture needs transparent listeners");
      return;
    }
    if (!tproxy) return;
    const why =
      this.#o.origSrc === 'never'
        ? "origSrc is 'never' (ENABLE_ORIG_SRC=false)"
        : 'IP_TRANSPARENT is not permitted here (ztunnel needs CAP_NET_ADMIN in the pod netns)';
    throw new ZtunnelError(
      'ERR_ZTUNNEL_PROXY_START',
      `pod ${this.uid}: the pod's inbound capture is TPROXY (tproxy rule mode), which delivers only to transparent listeners, but ${why}: every inbound connection would be dropped; use the redirect rule mode or allow original source`,
    );
  }

  #isOwnPort(port: number): boolean {
    return port === this.#ports.outbound || port === this.#ports.inbound || port === this.#ports.inboundPlaintext;
  }

  // ---------------------------------------------------------------- outbound (15001)

  #onOutbound(socket: net.Socket): void {
    socket.on('error', ignoreError);
    this.#track(socket);
    const dst = this.#destination(socket, this.#ports.outbound, false);
    if (!dst) return void socket.destroy();
    void this.#outboundTo(socket, dst).catch((err) => {
      // Refusals beyond maxCertificateWaiters are logged once per wait period (#refuseWaiter).
      if (err !== this.#tooManyWaiting) this.#log.warn({ err }, 'outbound connection failed');
      socket.destroy();
    });
  }

  /** The outbound path for a known destination: HBONE to mesh workloads, passthrough otherwise. */
  async #outboundTo(socket: net.Socket, dst: { address: string; port: number }): Promise<void> {
    const srcAddr = hostPort(normalizeIp(socket.remoteAddress), socket.remotePort ?? 0);
    if (this.#isOwnPort(dst.port)) {
      this.#log.warn({ 'src.addr': srcAddr, 'dst.addr': hostPort(dst.address, dst.port) }, 'connection failed: recursive call to ourselves');
      return void socket.destroy();
    }
    const resolved = this.#o.store.resolve(dst.address, dst.port);
    const me = this.#src();
    const src = { addr: srcAddr, workload: me.workload, namespace: me.namespace, identity: me.identity };
    // A destination with a waypoint is never reached directly: its L7 policies live in the waypoint.
    const waypoint = waypointFor(this.#o.store, dst, resolved, () => this.#workload());
    if (waypoint !== undefined) {
      if (!this.#cert) await this.#certified(new DownstreamClosed(socket));
      const { metrics } = this.#o;
      return outboundViaWaypoint(waypoint, { socket, src, client: () => this.#client(), headers: this.#hboneHeaders(srcAddr), metrics, accessLog: this.#accessLog });
    }
    const target = resolved?.workload.protocol === 'HBONE' ? resolved : undefined;
    if (target) {
      const { workload: w, address, port, service } = target;
      const info: ConnectionInfo = {
        direction: 'outbound',
        src,
        dst: {
          addr: hostPort(address, port),
          hboneAddr: hostPort(address, this.#ports.inbound),
          service: service?.hostname,
          workload: w.name,
          namespace: w.namespace,
          identity: undefined,
        },
        mtls: true,
      };
      let known = this.#outboundPeers.get(w);
      if (known === undefined) {
        const identity = this.#o.store.identityOf(w);
        info.dst.identity = identity;
        known = { identity, expected: [identity], tally: openTally(this.#o.metrics, info) };
        this.#outboundPeers.set(w, known);
      }
      const { identity } = known;
      info.dst.identity = identity;
      const record = new ConnectionRecord(info, this.#o.metrics, this.#accessLog, known.tally);
      const sans = service?.subjectAltNames;
      const open = (signal: HboneAbortSignal): Promise<Duplex> =>
        this.#client().connect({
          peer: { host: address, port: this.#ports.inbound },
          target: { host: address, port },
          expectedIdentities: sans === undefined || sans.length === 0 ? known.expected : [identity, ...sans],
          headers: this.#hboneHeaders(srcAddr),
          signal,
        });
      await tunnelOutbound(socket, record, (signal) => (this.#cert ? open(signal) : this.#certified(signal).then(() => open(signal))));
      return;
    }
    // A service whose endpoints are known by hostname only (a ServiceEntry with DNS resolution) is
    // reached at what the name resolves to now: its VIP leads nowhere.
    const byName = resolved === undefined ? this.#o.store.dnsEndpoint(dst.address, dst.port) : undefined;
    const named = resolved ?? byName;
    // Not a mesh workload: plain TCP, still from inside the pod and marked so the pod's rules let it out.
    const record = new ConnectionRecord(
      {
        direction: 'outbound',
        src,
        dst: { addr: hostPort(dst.address, dst.port), workload: named?.workload.name, namespace: named?.workload.namespace, service: named?.service?.hostname },
        mtls: false,
      },
      this.#o.metrics,
      this.#accessLog,
    );
    let host = resolved?.address ?? dst.address;
    let port = resolved?.port ?? dst.port;
    if (byName) {
      let address: string | undefined;
      try {
        address = await this.#resolveEndpointName(byName.hostname, net.isIPv6(dst.address) ? 6 : 4);
      } catch (err) {
        record.fail('CONNECT', `resolving ${byName.hostname}: ${(err as Error).message}`);
        return void socket.destroy();
      }
      if (address === undefined) {
        record.fail('CONNECT', `${byName.hostname} resolves to no address`);
        return void socket.destroy();
      }
      host = address;
      port = byName.port;
    }
    let upstream: net.Socket;
    try {
      upstream = await connectTcp(this.#podConnectOptions(host, port, undefined));
    } catch (err) {
      record.fail('CONNECT', (err as Error).message);
      socket.destroy();
      return;
    }
    void copyBidirectional(socket, upstream).then((r) => record.complete(r.sent, r.received));
  }

  /**
   * An endpoint's hostname → one address, `family` first: through the pod's DNS proxy's upstream
   * resolvers when it runs (as the pod would), else the node's resolver. The mesh's own names are not
   * consulted: they map the service's hostname back to its VIP.
   */
  async #resolveEndpointName(hostname: string, family: 4 | 6): Promise<string | undefined> {
    if (this.#dns) return this.#dns.resolveUpstream(hostname, family);
    try {
      return (await lookup(hostname, { family })).address;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOTFOUND' || (err as NodeJS.ErrnoException).code === 'ENODATA') {
        return (await lookup(hostname).catch(() => undefined))?.address;
      }
      throw err;
    }
  }

  /** What ztunnel sends with CONNECT: who is calling (baggage), the original client, a fresh trace. */
  #hboneHeaders(srcAddr: string): Record<string, string> {
    return {
      baggage: (this.#baggage ??= this.#baggageValue()),
      forwarded: `for="${srcAddr}"`,
      traceparent: newTraceparent(),
    };
  }

  #baggageValue(): string {
    const src = this.#src();
    const w = this.#workload();
    return [
      `k8s.cluster.name=${this.#o.clusterId ?? 'Kubernetes'}`,
      `k8s.namespace.name=${src.namespace ?? ''}`,
      `k8s.${w?.workloadType || 'pod'}.name=${w?.workloadName || src.workload || ''}`,
      `service.name=${w?.canonicalName || src.workload || ''}`,
      `service.version=${w?.canonicalRevision || 'latest'}`,
    ].join(',');
  }

  // ---------------------------------------------------------------- inbound

  /**
   * L4 policy for this pod as `w` (known: a pod the store does not know is refused before, never
   * allowed here). Dry-run results are logged, except for the policies in `logged` (a re-check logs
   * only the dry-run policies that changed since the connection's last decision).
   */
  #authorize(
    w: Workload,
    sourceIp: string,
    identity: PeerIdentity | undefined,
    dstIp: string,
    dstPort: number,
    policies: readonly Policy[] = this.#o.store.policiesFor(w),
    logged?: ReadonlySet<Policy>,
  ): AuthorizationDecision {
    // What evaluatePolicies answers for no policies, without its per-call objects.
    if (policies.length === 0) return NO_POLICIES;
    return evaluatePolicies(
      policies,
      { sourceIp, sourceIdentity: identity, destinationIp: dstIp, destinationPort: dstPort },
      {
        onDryRun: (p, matched) => {
          if (logged?.has(p) !== true) {
            this.#log.info({ policy: `${p.namespace}/${p.name}`, action: p.action, matched, src: sourceIp }, 'dry-run authorization policy evaluated');
          }
        },
      },
    );
  }

  #policiesNow(): readonly Policy[] {
    const w = this.#workload();
    return w === undefined ? [] : this.#o.store.policiesFor(w);
  }

  /**
   * A connection refused before it is a proxied connection, as ztunnel's early deny: the access log's
   * WARN `connection failed` with the addresses and why; no TCP metrics (nothing was opened).
   */
  #earlyDeny(srcAddr: string, dstAddr: string, error: string): void {
    this.#accessLog.warn({ 'src.addr': srcAddr, 'dst.addr': dstAddr, direction: 'inbound', error }, 'connection failed');
  }

  /**
   * Inbound to this pod while the workload state does not know it (istiod has not pushed it yet, or
   * is unreachable): no policy can be evaluated for it, so it is refused, as ztunnel does.
   */
  #unknownDestination(srcAddr: string, dstIp: string, dstPort: number): void {
    const info = this.#o.workloadInfo;
    const pod = info ? `${info.namespace}/${info.name} (uid ${this.uid})` : `uid ${this.uid}`;
    this.#earlyDeny(srcAddr, hostPort(dstIp, dstPort), `unknown destination: ${dstIp}: pod ${pod} is not in the workload state yet`);
  }

  #trackInbound(d: Duplex, attrs: ConnectionAttributes): void {
    this.#inbound.set(d, attrs);
    d.on('close', this.#untrackInbound);
  }

  /** Policies changed: live inbound connections that would now be denied are closed (as ztunnel does). */
  #recheckInbound(): void {
    const w = this.#workload();
    // Gone from the state (the pod is being deleted, or its entry is being replaced): connections
    // authorized while it was known keep running, as ztunnel keeps the workload it authorized them for.
    if (w === undefined) return;
    const policies = this.#o.store.policiesFor(w);
    const before = this.#checkedPolicies;
    // Only a change of the policies that apply here can change a decision (review 6: every xDS push
    // re-evaluated every connection and logged every dry-run policy again).
    if (policies.length === before.length && policies.every((p, i) => p === before[i])) return;
    this.#checkedPolicies = policies;
    const logged = new Set(before);
    for (const [d, attrs] of this.#inbound) {
      const decision = this.#authorize(w, attrs.sourceIp, attrs.sourceIdentity, attrs.destinationIp, attrs.destinationPort, policies, logged);
      if (decision.allowed) continue;
      this.#log.info(
        { src: attrs.sourceIp, dst: hostPort(attrs.destinationIp, attrs.destinationPort), policy: decision.policy, reason: decision.reason },
        'connection closed: no longer authorized after a policy change',
      );
      this.#inbound.delete(d);
      d.destroy();
    }
  }

  /** `peer`: the HBONE session's peer (then srcIp is its address), whose source workload and tally are kept per session. */
  #inboundRecord(srcIp: string, srcPort: number, srcIdentity: string | undefined, dstIp: string, dstPort: number, mtls: boolean, peer?: PeerInfo): ConnectionRecord {
    const cached = peer !== undefined && peer.gen === this.#storeGen;
    const src = cached ? peer.srcWorkload : this.#o.store.workloadByIp(srcIp);
    const me = this.#src();
    const info: ConnectionInfo = {
      direction: 'inbound',
      src: { addr: hostPort(srcIp, srcPort), workload: src?.name, namespace: src?.namespace, identity: srcIdentity },
      dst: {
        addr: hostPort(dstIp, dstPort),
        hboneAddr: mtls ? hostPort(dstIp, this.#ports.inbound) : undefined,
        workload: me.workload,
        namespace: me.namespace,
        identity: me.identity,
      },
      mtls,
    };
    if (peer !== undefined && !cached) {
      peer.gen = this.#storeGen;
      peer.srcWorkload = src;
      peer.tally = openTally(this.#o.metrics, info);
    }
    return new ConnectionRecord(info, this.#o.metrics, this.#accessLog, peer?.tally);
  }

  /** Connects to the app inside the pod: marked, and from the client's own address when transparent works. */
  // Not async: the connect's own promise is handed on (an async frame and a second promise per connection otherwise).
  #connectApp(host: string, port: number, clientIp: string, signal?: ConnectTcpOptions['signal']): Promise<net.Socket> {
    const spoof = this.#transparent && clientIp !== '' && familyOf(clientIp) === familyOf(host) && clientIp !== host;
    if (!spoof) return connectTcp(this.#podConnectOptions(host, port, signal));
    const o = this.#podConnectOptions(host, port, signal);
    o.transparent = true;
    o.freebind = true;
    o.bindAddress = clientIp;
    return connectTcp(o).catch((err: unknown) => {
      const errno = errnoOf(err);
      if (this.#o.origSrc === 'required' || errno === undefined || !SPOOF_ERRNOS.has(errno)) throw err;
      this.#log.debug({ err, clientIp }, 'source spoofing failed, connecting from the pod address');
      return connectTcp(this.#podConnectOptions(host, port, signal));
    });
  }

  // A connect from inside the pod with the mark (to the local app, or a passthrough destination).
  // Built field by field: object spreads with a conditional member were a visible cost per connection.
  #podConnectOptions(host: string, port: number, signal: ConnectTcpOptions['signal']): ConnectTcpOptions {
    const o: ConnectTcpOptions = {
      netns: this.#o.netns,
      family: familyOf(host),
      mark: this.#o.mark,
      host,
      port,
      timeoutMs: this.#o.connectTimeoutMs ?? 10_000,
      noDelay: true,
      keepalive: TCP_KEEPALIVE,
    };
    if (signal) o.signal = signal;
    return o;
  }

  #onInboundHbone(socket: net.Socket): void {
    socket.on('error', ignoreError);
    this.#log.debug({ src: socket.remoteAddress }, 'inbound HBONE connection');
    if (this.#cert) return this.#serveHbone(socket);
    // Before the pod's first certificate: the handshake waits for it (the ClientHello stays buffered).
    this.#certified(new DownstreamClosed(socket)).then(
      () => this.#serveHbone(socket),
      (err: unknown) => {
        if (!this.#stopped && !socket.destroyed && err !== this.#tooManyWaiting) this.#log.warn({ src: socket.remoteAddress, err }, 'inbound HBONE connection closed: no certificate for this pod');
        socket.destroy();
      },
    );
  }

  #serveHbone(socket: net.Socket): void {
    let server: HboneServer | undefined;
    try {
      server = this.#server();
    } catch (err) {
      // Certificate material HBONE refuses (no SPIFFE SAN, key not matching): this pod's inbound
      // tunnels fail, the node's other pods keep running.
      this.#log.error({ err }, 'cannot serve inbound HBONE for this pod');
      return void socket.destroy();
    }
    if (!server || this.#stopped) return void socket.destroy();
    server.handleConnection(socket);
  }

  /** The peer's identity as policies and access logs need it: per session, not per stream. */
  #peerOf(peer: HbonePeer): PeerInfo {
    let p = peerInfo.get(peer);
    if (p === undefined) {
      const id = peer.identity;
      p = {
        ip: normalizeIp(peer.remoteAddress),
        identity: id ? { trustDomain: id.trustDomain, namespace: id.namespace, serviceAccount: id.serviceAccount } : undefined,
        name: id?.toString(),
        gen: -1,
        srcWorkload: undefined,
        tally: undefined,
      };
      peerInfo.set(peer, p);
    }
    return p;
  }

  #authorizeHbone(peer: HbonePeer, target: HboneTarget): HboneAuthorizeResult {
    const p = this.#peerOf(peer);
    const w = this.#workload();
    if (w === undefined) {
      this.#unknownDestination(hostPort(p.ip, peer.remotePort), normalizeIp(target.host), target.port);
      // Not a policy decision: 503 as ztunnel answers without a local workload, not 401 (DENY).
      return { allow: false, status: 503, reason: `unknown destination ${hostPort(target.host, target.port)}: pod uid ${this.uid} is not in the workload state yet` };
    }
    const d = this.#authorize(w, p.ip, p.identity, normalizeIp(target.host), target.port);
    if (!d.allowed) {
      const record = this.#inboundRecord(p.ip, peer.remotePort, p.name, normalizeIp(target.host), target.port, true, p);
      record.fail('DENY', `connection denied by authorization policy (${d.reason}${d.policy ? ` ${d.policy}` : ''})`);
    }
    return d.allowed;
  }

  async #connectHbone(target: HboneTarget, ctx: HboneConnectContext): Promise<Duplex> {
    const { peer } = ctx;
    const p = this.#peerOf(peer);
    if (this.#log.isLevelEnabled?.('debug') !== false) {
      this.#log.debug(
        { peer: p.name, target: hostPort(target.host, target.port), baggage: ctx.headers.raw.baggage, traceparent: ctx.headers.raw.traceparent },
        'inbound HBONE stream',
      );
    }
    const dstIp = normalizeIp(target.host);
    const record = this.#inboundRecord(p.ip, peer.remotePort, p.name, dstIp, target.port, true, p);
    let upstream: net.Socket;
    try {
      // The stream's abort signal only for a connect that waits: hbone makes it (an AbortController and
      // a stream listener) on first use, and a connect to the app in the pod usually completes at once.
      upstream = await this.#connectApp(dstIp, target.port, p.ip, () => ctx.signal);
    } catch (err) {
      record.fail('CONNECT', (err as Error).message);
      throw err;
    }
    this.#track(upstream);
    this.#trackInbound(upstream, { sourceIp: p.ip, sourceIdentity: p.identity, destinationIp: dstIp, destinationPort: target.port });
    upstream.on('close', () => record.complete(upstream.bytesRead, upstream.bytesWritten));
    return upstream;
  }

  #onInboundPlaintext(socket: net.Socket): void {
    socket.on('error', ignoreError);
    this.#track(socket);
    void this.#inboundPlaintext(socket).catch((err) => {
      this.#log.warn({ err }, 'inbound connection failed');
      socket.destroy();
    });
  }

  async #inboundPlaintext(socket: net.Socket): Promise<void> {
    const srcIp = normalizeIp(socket.remoteAddress);
    const srcAddr = hostPort(srcIp, socket.remotePort ?? 0);
    const dst = this.#destination(socket, this.#ports.inboundPlaintext, true);
    if (!dst) return void socket.destroy();
    if (this.#isOwnPort(dst.port)) {
      this.#log.warn({ 'src.addr': srcAddr, 'dst.addr': hostPort(dst.address, dst.port) }, 'connection failed: recursive call to ourselves');
      return void socket.destroy();
    }
    const w = this.#workload();
    if (w === undefined) {
      this.#unknownDestination(srcAddr, dst.address, dst.port);
      return void socket.destroy();
    }
    if (!this.#ownIps().has(dst.address)) {
      // Another address routed through this pod (`ip route add X via <pod>`, then REDIRECTed to us):
      // relaying it would launder the client through this pod's identity and address.
      this.#earlyDeny(srcAddr, hostPort(dst.address, dst.port), `destination ${dst.address} is not an address of this pod (${[...this.#ownIps()].join(', ')})`);
      return void socket.destroy();
    }
    const record = this.#inboundRecord(srcIp, socket.remotePort ?? 0, undefined, dst.address, dst.port, false);
    const d = this.#authorize(w, srcIp, undefined, dst.address, dst.port);
    if (!d.allowed) {
      record.fail('DENY', `connection denied by authorization policy (${d.reason}${d.policy ? ` ${d.policy}` : ''})`);
      return void socket.destroy();
    }
    let upstream: net.Socket;
    try {
      upstream = await this.#connectApp(dst.address, dst.port, srcIp);
    } catch (err) {
      record.fail('CONNECT', (err as Error).message);
      return void socket.destroy();
    }
    this.#trackInbound(socket, { sourceIp: srcIp, destinationIp: dst.address, destinationPort: dst.port });
    void copyBidirectional(socket, upstream).then((r) => record.complete(r.sent, r.received));
  }

  // ---------------------------------------------------------------- lifecycle

  state(): InpodProxyState {
    const info = this.#o.workloadInfo;
    const w = this.#workload();
    return {
      uid: this.uid,
      name: info?.name ?? w?.name,
      namespace: info?.namespace ?? w?.namespace,
      identity: this.identity,
      netns: { dev: this.#o.netns.id.dev, ino: this.#o.netns.id.ino },
      listeners: [...this.#listeners],
      transparent: this.#transparent,
      connections: this.#live.size + (this.#hboneServer?.stats().tunnels ?? 0),
    };
  }

  /** Stops accepting at once; no-op when already stopped. */
  closeListeners(): void {
    for (const s of this.#servers.splice(0)) s.close();
    void this.#dns?.stop();
    void this.#socks5?.stop();
  }

  /**
   * Drains: listeners close at once, HBONE sessions get GOAWAY, established connections may finish
   * until `deadlineMs` (0: cut now), then whatever is left is destroyed. A start() still binding is
   * waited for (it gives up at its next step), so once this resolves nothing listens in the pod.
   */
  stop(o: { deadlineMs: number }): Promise<void> {
    return (this.#stopping ??= this.#stop(o.deadlineMs));
  }

  async #stop(deadlineMs: number): Promise<void> {
    this.#stopped = true;
    this.#o.store.off('change', this.#onStoreChange);
    this.closeListeners();
    await this.#starting;
    await this.#release(deadlineMs);
  }

  #release(deadlineMs: number): Promise<void> {
    return (this.#teardown ??= this.#releaseAll(deadlineMs));
  }

  async #releaseAll(deadlineMs: number): Promise<void> {
    this.#o.store.off('change', this.#onStoreChange);
    this.closeListeners();
    clearTimeout(this.#certRetry);
    this.#unwatchCert?.();
    this.#unwatchCert = undefined;
    if (this.#certWaiters.size > 0) {
      const stopped = new ZtunnelError('ERR_ZTUNNEL_PROXY_STOPPED', `pod ${this.uid}: proxy stopped before its certificate arrived`);
      for (const w of this.#certWaiters) w.reject(stopped);
    }
    const deadline = Math.max(0, deadlineMs);
    const serverClosed = this.#hboneServer?.close({ deadlineMs: deadline }) ?? Promise.resolve();
    // The outbound client stays open while connections drain: one accepted just before the listeners
    // closed may not have asked for its tunnel yet, and must be proxied, not reset.
    if (this.#live.size > 0 && deadline > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline);
        const check = (): void => {
          if (this.#live.size === 0) {
            clearTimeout(timer);
            resolve();
          }
        };
        for (const d of this.#live) d.once('close', () => setImmediate(check));
      });
    }
    for (const d of [...this.#live]) d.destroy();
    const clientClosed = this.#hboneClient?.close({ deadlineMs: 0 }) ?? Promise.resolve();
    await this.#dns?.stop();
    await this.#socks5?.stop();
    await serverClosed.catch(() => {});
    await clientClosed.catch(() => {});
    this.#releaseCert?.();
    this.#releaseCert = undefined;
  }
}
