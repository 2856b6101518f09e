import { isIP, type Socket } from 'node:net';
import type { HboneClient } from '@weir/hbone';
import { ConnectionRecord, type ConnectionInfo, type Endpoint } from './connection-record.js';
import type { Service, Workload } from './local-config.js';
import type { Logger } from './logger.js';
import { tunnelOutbound } from './outbound-tunnel.js';
import type { ZtunnelMetrics } from './metrics.js';
import type { ResolvedDestination, WorkloadStore } from './workload-store.js';

// Waypoints (Istio ambient L7): a service or workload with `waypoint` must be reached through that
// proxy, which enforces the L7 and targetRef AuthorizationPolicies the destination's ztunnel never
// sees. As ztunnel's outbound does: HBONE to the waypoint, CONNECT with the destination as the client
// addressed it (service VIP or pod IP, and port), accepting only the waypoint's identity. A waypoint
// the state cannot resolve refuses the connection: going direct would skip its policies.

/** Istio's HBONE port, the waypoint's default when its address names none. */
const HBONE_PORT = 15008;

type GatewayAddress = NonNullable<Workload['waypoint']>;

/** The waypoint's destination as xDS and the local YAML give it: an address or a namespaced hostname. */
type WaypointRef = { ip: string } | { namespace: string; hostname: string };

/** An outbound connection sent through the destination's waypoint. */
export interface WaypointRoute {
  kind: 'route';
  /** The waypoint as the config names it (`10.96.0.9`, `ns/waypoint.ns.svc.cluster.local`). */
  waypoint: string;
  /** The waypoint endpoint HBONE dials. */
  peer: { host: string; port: number };
  /** The CONNECT `:authority`: the original destination. */
  target: { host: string; port: number };
  /** The waypoint workload's SPIFFE identity: the only one accepted. */
  identity: string;
  waypointWorkload: Workload;
  /** The destination service when the client addressed its VIP. */
  service: Service | undefined;
  /** The destination workload when known (addressed directly, or the endpoint the VIP resolved to). */
  workload: Workload | undefined;
}

/** An outbound connection that needs a waypoint the state cannot resolve: refused, never sent direct. */
export interface WaypointRefusal {
  kind: 'refuse';
  waypoint: string;
  target: { host: string; port: number };
  service: Service | undefined;
  workload: Workload | undefined;
  /** Why the waypoint cannot be used. */
  reason: string;
}

export type WaypointDecision = WaypointRoute | WaypointRefusal;

const stripNetwork = (s: string): string => {
  const slash = s.indexOf('/');
  return slash < 0 ? s : s.slice(slash + 1);
};
const normalizeIp = (ip: string): string => (ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip);
const hostPort = (host: string, port: number): string => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

function ipRef(s: unknown): WaypointRef | undefined {
  if (typeof s === 'string') {
    const ip = normalizeIp(stripNetwork(s));
    return isIP(ip) !== 0 ? { ip } : undefined;
  }
  if (typeof s === 'object' && s !== null && 'address' in s) return ipRef((s as { address: unknown }).address);
  return undefined;
}

/** `{address: "<network>/<ip>"}`, `{hostname: {namespace, hostname}}` (as convert.ts writes), or the bare forms. */
function parseRef(destination: unknown): WaypointRef | undefined {
  if (typeof destination === 'string') return ipRef(destination);
  if (typeof destination !== 'object' || destination === null) return undefined;
  const d = destination as { address?: unknown; hostname?: unknown };
  if (d.address !== undefined) return ipRef(d.address);
  const h = d.hostname;
  if (typeof h === 'object' && h !== null) {
    const { namespace, hostname } = h as { namespace?: unknown; hostname?: unknown };
    if (typeof namespace === 'string' && typeof hostname === 'string' && hostname !== '') return { namespace, hostname };
  }
  if (typeof h === 'string') {
    const slash = h.indexOf('/');
    if (slash > 0) return { namespace: h.slice(0, slash), hostname: h.slice(slash + 1) };
  }
  return undefined;
}

function refName(ref: WaypointRef | undefined, g: GatewayAddress): string {
  if (ref === undefined) return JSON.stringify(g.destination ?? null);
  return 'ip' in ref ? ref.ip : `${ref.namespace}/${ref.hostname}`;
}

/** The waypoint endpoint for `ref`: a workload IP, a service VIP (one endpoint), or a service by hostname. */
function endpointOf(store: WorkloadStore, ref: WaypointRef, port: number): ResolvedDestination | string {
  if ('ip' in ref) return store.resolve(ref.ip, port) ?? `${ref.ip} is neither a workload nor a service with a healthy endpoint in the workload state`;
  const host = ref.hostname.toLowerCase();
  const service = store.config.services.find((s) => s.namespace === ref.namespace && s.hostname.toLowerCase() === host);
  if (service === undefined) return `no service ${ref.namespace}/${ref.hostname} in the workload state`;
  for (const vip of service.vips) {
    const r = store.resolve(stripNetwork(vip), port);
    if (r) return r;
  }
  const key = `${service.namespace}/${service.hostname}`;
  const w = store.config.workloads.find((x) => x.status === 'Healthy' && x.services[key] !== undefined && x.workloadIps.length > 0);
  if (w === undefined) return `service ${key} has no healthy endpoint`;
  const target = Number(w.services[key]?.[String(port)] ?? service.ports[String(port)] ?? port) || port;
  return { workload: w, address: w.workloadIps[0]!, port: target, service };
}

/**
 * Whether an outbound connection to `dst` must go through a waypoint, and where. `resolved`: what
 * `store.resolve(dst)` answered (undefined: unknown, or a VIP with no endpoint). The service's waypoint
 * applies when the client addressed a VIP, else the workload's (ztunnel: "service takes precedence").
 * `source()` is this pod's workload, asked only when there is a waypoint: the waypoint's own traffic
 * goes direct. Undefined: no waypoint applies.
 */
export function waypointFor(
  store: WorkloadStore,
  dst: { address: string; port: number },
  resolved: ResolvedDestination | undefined,
  source: () => Workload | undefined,
): WaypointDecision | undefined {
  // A VIP whose service has no endpoint: resolve() said nothing, yet its waypoint still applies.
  const service = resolved !== undefined ? resolved.service : store.serviceByVip(dst.address);
  const gateway = service?.waypoint ?? resolved?.workload.waypoint;
  if (gateway === undefined) return undefined;
  const workload = resolved?.workload;
  const target = { host: dst.address, port: dst.port };
  const ref = parseRef(gateway.destination);
  const waypoint = refName(ref, gateway);
  const refuse = (reason: string): WaypointRefusal => ({ kind: 'refuse', waypoint, target, service, workload, reason });
  if (ref === undefined) return refuse('its address is neither an IP nor a namespaced hostname');
  const port = gateway.hboneMtlsPort ?? HBONE_PORT;
  const endpoint = endpointOf(store, ref, port);
  if (typeof endpoint === 'string') return refuse(endpoint);
  const wp = endpoint.workload;
  const me = source();
  if (me !== undefined && (me === wp || (me.uid !== '' && me.uid === wp.uid))) return undefined;
  return {
    kind: 'route',
    waypoint,
    peer: { host: endpoint.address, port: endpoint.port },
    target,
    identity: store.identityOf(wp),
    waypointWorkload: wp,
    service,
    workload,
  };
}

export interface WaypointOutbound {
  /** The captured downstream connection. */
  socket: Socket;
  /** This pod as the connection's source. */
  src: Endpoint;
  /** The pod's HBONE client (dials from inside the pod, marked). */
  client: () => HboneClient;
  /** `baggage`, `forwarded`, `traceparent`, as for a direct tunnel. */
  headers: Record<string, string>;
  metrics: ZtunnelMetrics;
  accessLog: Logger;
}

/**
 * Carries a connection as `d` says: tunnelled to the waypoint, or refused with the access log's
 * `connection failed` (`waypoint required: …`) and `istio_tcp_connections_failed_total`.
 */
export async function outboundViaWaypoint(d: WaypointDecision, o: WaypointOutbound): Promise<void> {
  const route = d.kind === 'route';
  const info: ConnectionInfo = {
    direction: 'outbound',
    src: o.src,
    dst: {
      addr: hostPort(d.target.host, d.target.port),
      hboneAddr: route ? hostPort(d.peer.host, d.peer.port) : undefined,
      service: d.service?.hostname,
      workload: d.workload?.name,
      namespace: d.workload?.namespace ?? d.service?.namespace,
      identity: route ? d.identity : undefined,
    },
    mtls: route,
  };
  const record = new ConnectionRecord(info, o.metrics, o.accessLog);
  const { socket } = o;
  if (!route) {
    const what = d.service ? `service ${d.service.namespace}/${d.service.hostname}` : d.workload ? `workload ${d.workload.namespace}/${d.workload.name}` : 'destination';
    record.fail('CONNECT', `waypoint required: ${what} at ${info.dst.addr} must go through waypoint ${d.waypoint}, which cannot be used: ${d.reason}`);
    socket.destroy();
    return;
  }
  await tunnelOutbound(
    socket,
    record,
    (signal) => o.client().connect({ peer: d.peer, target: d.target, expectedIdentities: [d.identity], headers: o.headers, signal }),
    `waypoint ${d.waypoint} (${hostPort(d.peer.host, d.peer.port)}): `,
  );
}
