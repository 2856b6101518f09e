import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, type JsonObject } from '@bufbuild/protobuf';
import type { LocalConfig, Policy, Service, Workload } from '../local-config.js';
import { silentLogger, type Logger } from '../logger.js';
import { Counter, Gauge, type Registry } from '../metrics.js';
import { failClosedPolicy, policyFromXds, serviceFromXds, workloadFromXds } from './convert.js';
import { AuthorizationSchema, type Authorization } from './gen/authorization_pb.js';
import {
  DeltaDiscoveryRequestSchema,
  DeltaDiscoveryResponseSchema,
  type DeltaDiscoveryRequest,
  type DeltaDiscoveryResponse,
} from './gen/envoy/service/discovery/v3/discovery_pb.js';
import { AddressSchema } from './gen/workload_pb.js';
import {
  authMetadata,
  channelCredentials,
  channelOptions,
  checkChannel,
  deserializer,
  grpcTarget,
  isPlaintext,
  serializer,
  type ChannelOptions,
} from './grpc.js';

export const ADDRESS_TYPE = 'type.googleapis.com/istio.workload.Address';
export const AUTHORIZATION_TYPE = 'type.googleapis.com/istio.security.Authorization';
export const DELTA_ADS_PATH = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources';
const TYPES = [ADDRESS_TYPE, AUTHORIZATION_TYPE] as const;
type TypeUrl = (typeof TYPES)[number];

/** What the client writes into: `WorkloadStore` satisfies it. */
export interface XdsStoreSink {
  replace(config: LocalConfig): void;
}

/** Who this ztunnel is, as sent in the xDS Node (ztunnel reads these from its pod's env). */
export interface XdsNodeInfo {
  /** POD_NAME */
  podName?: string;
  /** POD_NAMESPACE */
  podNamespace?: string;
  /** INSTANCE_IP */
  instanceIp?: string;
  /** NODE_NAME */
  nodeName?: string;
  /** CLUSTER_ID (default `Kubernetes`); also sent as the `clusterid` header. */
  clusterId?: string;
  /** ISTIO_META_* values (prefix stripped), merged into the node metadata. */
  metadata?: JsonObject;
}

export interface XdsClientOptions extends ChannelOptions {
  store: XdsStoreSink;
  /** Returns the bearer token (the projected service-account token); read on every connect. */
  token?: () => Promise<string | undefined> | string | undefined;
  node?: XdsNodeInfo;
  /** Reconnect backoff; default 10 ms doubling to 15 s (ztunnel's). */
  backoff?: { initialMs: number; maxMs: number };
  logger?: Logger;
  /** Where the rejection metrics go (`weir_xds_rejected_resources_total`, `weir_xds_rejected_resources`). */
  registry?: Registry;
}

type Converted = { kind: 'workload'; value: Workload } | { kind: 'service'; value: Service } | { kind: 'policy'; value: Policy };

interface Held {
  version: string;
  converted: Converted;
  /** A stand-in for an authorization policy that could not be converted (failClosedPolicy). */
  failClosed?: true;
}

/**
 * What is in force for a resource whose latest version was rejected: its previous version
 * (`kept-previous`, as Istio keeps the last good config), a deny-side stand-in (`fail-closed`,
 * authorization policies without a previous version), or nothing (`not-applied`).
 */
export type RejectedOutcome = 'kept-previous' | 'fail-closed' | 'not-applied';

interface Rejected {
  version: string;
  error: string;
  at: Date;
  outcome: RejectedOutcome;
}

interface TypeState {
  resources: Map<string, Held>;
  /** Resources whose latest version was rejected, until a good version or a removal. */
  rejected: Map<string, Rejected>;
  systemVersionInfo: string;
  lastNonce?: string;
  lastAck?: { nonce: string; at: Date };
  lastNack?: { nonce: string; at: Date; error: string };
  /** A response of this type was applied (all of it, or some of it) since start (readiness). */
  synced: boolean;
}

export interface XdsTypeDump {
  typeUrl: string;
  /** What is held; `failClosed` marks a deny-side stand-in for a rejected policy. */
  resources: { name: string; version: string; failClosed?: true }[];
  /** Resources whose latest version was rejected, and what is in force instead. */
  rejected: { name: string; version: string; error: string; at: string; outcome: RejectedOutcome }[];
  systemVersionInfo: string;
  lastNonce: string | null;
  lastAck: { nonce: string; at: string } | null;
  lastNack: { nonce: string; at: string; error: string } | null;
}

export interface XdsDump {
  address: string;
  connected: boolean;
  connections: number;
  ready: boolean;
  lastError: string | null;
  types: XdsTypeDump[];
}

/**
 * A Delta ADS client of istiod, as ztunnel's: subscribes to workloads/services
 * (`istio.workload.Address`) and policies (`istio.security.Authorization`), converts them to the
 * local-config model and replaces the store's state after every response. Each resource stands
 * alone, as upstream: every one that converts is applied, removals always are, and the response is
 * NACKed naming only the bad ones (resource and field). A rejected resource keeps its previous
 * version; a rejected authorization policy without one is enforced fail-closed (failClosedPolicy).
 * A response that applied anything counts toward readiness. On disconnect the state stays; the next
 * stream starts with every held resource's version, so istiod sends only the difference.
 */
export class XdsClient extends EventEmitter<{
  ready: [];
  applied: [typeUrl: string, nonce: string];
  nack: [typeUrl: string, nonce: string, error: string];
  connected: [];
  disconnected: [error: string];
}> {
  readonly #o: XdsClientOptions;
  readonly #log: Logger;
  readonly #types = new Map<TypeUrl, TypeState>();
  #client: grpc.Client | undefined;
  #call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> | undefined;
  #connected = false;
  #connections = 0;
  #lastError: string | null = null;
  #closed = false;
  #started = false;
  #sleep: { timer: NodeJS.Timeout; resolve: () => void } | undefined;
  #loop: Promise<void> | undefined;
  #ready = false;
  readonly #readyPromise: Promise<void>;
  #resolveReady!: () => void;
  #rejections: Counter<'type_url'> | undefined;

  constructor(options: XdsClientOptions) {
    super();
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    checkChannel(options);
    for (const t of TYPES) this.#types.set(t, { resources: new Map(), rejected: new Map(), systemVersionInfo: '', synced: false });
    this.#readyPromise = new Promise((resolve) => (this.#resolveReady = resolve));
    if (options.registry) this.#registerMetrics(options.registry);
  }

  #registerMetrics(registry: Registry): void {
    this.#rejections = new Counter({
      name: 'weir_xds_rejected_resources_total',
      help: 'xDS resources rejected (NACKed) because they could not be converted.',
      labelNames: ['type_url'],
      registers: [registry],
    });
    const types = this.#types;
    const current = new Gauge({
      name: 'weir_xds_rejected_resources',
      help: 'xDS resources whose latest version is rejected, by what is in force instead (kept-previous, fail-closed, not-applied).',
      labelNames: ['type_url', 'outcome'],
      registers: [registry],
      collect() {
        current.reset();
        for (const [typeUrl, s] of types) {
          for (const outcome of ['kept-previous', 'fail-closed', 'not-applied'] as const) current.set({ type_url: typeUrl, outcome }, 0);
          for (const r of s.rejected.values()) current.inc({ type_url: typeUrl, outcome: r.outcome });
        }
      },
    });
  }

  /** Connects and keeps reconnecting until close(). */
  start(): void {
    if (this.#started) throw new Error('XdsClient.start() called twice');
    this.#started = true;
    this.#loop = this.#run();
  }

  /** Resolves once one response of every subscribed type was accepted (ztunnel's readiness gate). */
  ready(): Promise<void> {
    return this.#readyPromise;
  }

  get isReady(): boolean {
    return this.#ready;
  }

  /** Why readiness fails; empty when every type has been received. */
  pending(): string[] {
    return [...this.#types].filter(([, s]) => !s.synced).map(([t]) => `xds ${t.slice(t.lastIndexOf('/') + 1)}`);
  }

  /** The current model built from everything held. */
  config(): LocalConfig {
    const out: LocalConfig = { workloads: [], services: [], policies: [] };
    for (const s of this.#types.values()) {
      for (const { converted: c } of s.resources.values()) {
        if (c.kind === 'workload') out.workloads.push(c.value);
        else if (c.kind === 'service') out.services.push(c.value);
        else out.policies.push(c.value);
      }
    }
    return out;
  }

  /** For `/config_dump`: resource names and versions per type, last ACK and NACK. */
  dump(): XdsDump {
    const iso = (d: Date): string => d.toISOString();
    return {
      address: this.#o.address,
      connected: this.#connected,
      connections: this.#connections,
      ready: this.#ready,
      lastError: this.#lastError,
      types: [...this.#types].map(([typeUrl, s]) => ({
        typeUrl,
        resources: [...s.resources]
          .map(([name, h]) => ({ name, version: h.version, ...(h.failClosed ? { failClosed: true as const } : {}) }))
          .sort((a, b) => a.name.localeCompare(b.name)),
        rejected: [...s.rejected]
          .map(([name, r]) => ({ name, version: r.version, error: r.error, at: iso(r.at), outcome: r.outcome }))
          .sort((a, b) => a.name.localeCompare(b.name)),
        systemVersionInfo: s.systemVersionInfo,
        lastNonce: s.lastNonce ?? null,
        lastAck: s.lastAck ? { nonce: s.lastAck.nonce, at: iso(s.lastAck.at) } : null,
        lastNack: s.lastNack ? { nonce: s.lastNack.nonce, at: iso(s.lastNack.at), error: s.lastNack.error } : null,
      })),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#sleep) {
      clearTimeout(this.#sleep.timer);
      this.#sleep.resolve();
    }
    this.#call?.cancel();
    this.#client?.close();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const initialMs = this.#o.backoff?.initialMs ?? 10;
    const maxMs = this.#o.backoff?.maxMs ?? 15_000;
    let backoff = initialMs;
    while (!this.#closed) {
      const { error, gotResponse } = await this.#stream();
      if (this.#closed) break;
      // A stream that delivered something was healthy: start the backoff over (as ztunnel).
      if (gotResponse) backoff = initialMs;
      this.#lastError = error;
      this.#log.warn({ error, backoff_ms: backoff, address: this.#o.address }, 'XDS client connection error, retrying');
      await new Promise<void>((resolve) => {
        this.#sleep = { timer: setTimeout(resolve, backoff), resolve };
      });
      this.#sleep = undefined;
      backoff = Math.min(maxMs, backoff * 2);
    }
  }

  #node(): DeltaDiscoveryRequest['node'] {
    const n = this.#o.node ?? {};
    const ip = n.instanceIp ?? '1.1.1.1';
    const pod = n.podName ?? '';
    const ns = n.podNamespace ?? '';
    const metadata: JsonObject = {
      NAME: pod,
      NAMESPACE: ns,
      INSTANCE_IPS: ip,
      NODE_NAME: n.nodeName ?? '',
      CLUSTER_ID: n.clusterId ?? 'Kubernetes',
      ...(n.metadata ?? {}),
    };
    return create(DeltaDiscoveryRequestSchema, {
      node: { id: `ztunnel~${ip}~${pod}.${ns}~${ns}.svc.cluster.local`, metadata },
    }).node;
  }

  #initialRequest(typeUrl: TypeUrl): DeltaDiscoveryRequest {
    const held = this.#types.get(typeUrl)!.resources;
    const initialResourceVersions: Record<string, string> = {};
    for (const [name, h] of held) initialResourceVersions[name] = h.version;
    return create(DeltaDiscoveryRequestSchema, { node: this.#node(), typeUrl, initialResourceVersions });
  }

  async #stream(): Promise<{ error: string; gotResponse: boolean }> {
    let gotResponse = false;
    let md: grpc.Metadata;
    try {
      // Never the token in clear (the plaintext channel would also drop it).
      md = await authMetadata(isPlaintext(this.#o.address) ? undefined : this.#o.token, this.#o.node?.clusterId ?? 'Kubernetes');
    } catch (err) {
      return { error: `reading the xDS token failed: ${(err as Error).message}`, gotResponse };
    }
    if (this.#closed) return { error: 'closed', gotResponse };
    const client = new grpc.Client(grpcTarget(this.#o.address), channelCredentials(this.#o), channelOptions(this.#o));
    this.#client = client;
    const call = client.makeBidiStreamRequest(
      DELTA_ADS_PATH,
      serializer(DeltaDiscoveryRequestSchema),
      deserializer(DeltaDiscoveryResponseSchema),
      md,
    );
    this.#call = call;
    this.#connections++;
    const id = this.#connections;
    const log = this.#log.child({ xds_connection: id });
    const error = await new Promise<string>((resolve) => {
      call.on('metadata', () => {
        this.#connected = true;
        log.info({ address: this.#o.address }, 'Stream established');
        this.emit('connected');
      });
      call.on('data', (resp: DeltaDiscoveryResponse) => {
        gotResponse = true;
        this.#onResponse(call, resp, log);
      });
      call.on('error', (err: grpc.ServiceError) => resolve(`${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`));
      call.on('status', (s: grpc.StatusObject) => resolve(s.code === grpc.status.OK ? 'stream closed by server' : `${grpc.status[s.code] ?? s.code}: ${s.details}`));
      for (const t of TYPES) {
        const req = this.#initialRequest(t);
        log.debug({ type_url: t, resources: Object.keys(req.initialResourceVersions).length }, 'sending initial request');
        call.write(req);
      }
    });
    this.#connected = false;
    call.cancel();
    client.close();
    if (this.#call === call) this.#call = undefined;
    if (this.#client === client) this.#client = undefined;
    if (!this.#closed) this.emit('disconnected', error);
    return { error, gotResponse };
  }

  #onResponse(call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>, resp: DeltaDiscoveryResponse, log: Logger): void {
    const typeUrl = resp.typeUrl;
    const state = this.#types.get(typeUrl as TypeUrl);
    log.debug({ type_url: typeUrl, size: resp.resources.length, removes: resp.removedResources.length, nonce: resp.nonce }, 'received response');
    if (!state) {
      log.error({ type_url: typeUrl }, 'unknown type');
      call.write(create(DeltaDiscoveryRequestSchema, { typeUrl, responseNonce: resp.nonce, errorDetail: { code: grpc.status.INVALID_ARGUMENT, message: `unknown type ${typeUrl}` } }));
      return;
    }
    state.lastNonce = resp.nonce;
    const at = new Date();
    const errors: string[] = [];
    let applied = 0;
    // Removals are always applied: keeping a resource istiod deleted is never the safer choice.
    for (const name of resp.removedResources) {
      state.resources.delete(name);
      state.rejected.delete(name);
      applied++;
    }
    for (const r of resp.resources) {
      let converted: Converted;
      try {
        converted = decode(typeUrl as TypeUrl, r.name, r.resource);
      } catch (err) {
        const error = (err as Error).message;
        errors.push(error);
        const previous = state.resources.get(r.name);
        let outcome: RejectedOutcome;
        if (previous !== undefined && !previous.failClosed) {
          outcome = 'kept-previous';
        } else if (typeUrl === AUTHORIZATION_TYPE) {
          // Without a good version to keep, a policy that may deny must not be missing (fail open).
          const stand = failClosedPolicy(r.name, tryAuthorization(r.resource));
          state.resources.set(r.name, { version: r.version, converted: { kind: 'policy', value: stand }, failClosed: true });
          applied++;
          outcome = 'fail-closed';
        } else {
          outcome = 'not-applied';
        }
        state.rejected.set(r.name, { version: r.version, error, at, outcome });
        this.#rejections?.inc({ type_url: typeUrl });
        log.error({ type_url: typeUrl, resource: r.name, version: r.version, outcome, error }, 'xds resource rejected');
        continue;
      }
      state.resources.set(r.name, { version: r.version, converted });
      state.rejected.delete(r.name);
      applied++;
    }
    if (applied > 0 || errors.length === 0) {
      state.systemVersionInfo = resp.systemVersionInfo;
      this.#o.store.replace(this.config());
    }
    if (errors.length > 0) {
      const error = errors.join('; ');
      state.lastNack = { nonce: resp.nonce, at, error };
      log.error({ type_url: typeUrl, nonce: resp.nonce, type: 'NACK', error }, 'sending response');
      call.write(create(DeltaDiscoveryRequestSchema, { typeUrl, responseNonce: resp.nonce, errorDetail: { code: grpc.status.INVALID_ARGUMENT, message: error } }));
      this.emit('nack', typeUrl, resp.nonce, error);
    } else {
      state.lastAck = { nonce: resp.nonce, at };
      log.debug({ type_url: typeUrl, nonce: resp.nonce, type: 'ACK' }, 'sending response');
      call.write(create(DeltaDiscoveryRequestSchema, { typeUrl, responseNonce: resp.nonce }));
    }
    if (applied > 0 || errors.length === 0) this.emit('applied', typeUrl, resp.nonce);
    // A response that applied something is the state istiod has for us, less what we refused: waiting
    // for a push that never comes (istiod does not resend a NACKed version) would keep ztunnel from
    // ever serving its pods. One that applied nothing does not count.
    if (!state.synced && (applied > 0 || errors.length === 0)) {
      state.synced = true;
      log.info({ type_url: typeUrl, resources: state.resources.size, rejected: state.rejected.size }, 'received initial xDS state');
      if (!this.#ready && [...this.#types.values()].every((s) => s.synced)) {
        this.#ready = true;
        this.#resolveReady();
        this.emit('ready');
      }
    }
  }
}

/** The policy as far as it decodes, for its fail-closed stand-in; undefined when it does not. */
function tryAuthorization(any: { typeUrl: string; value: Uint8Array } | undefined): Authorization | undefined {
  if (any?.typeUrl !== AUTHORIZATION_TYPE) return undefined;
  try {
    return fromBinary(AuthorizationSchema, any.value);
  } catch {
    return undefined;
  }
}

function decode(typeUrl: TypeUrl, name: string, any: { typeUrl: string; value: Uint8Array } | undefined): Converted {
  if (!any) throw new Error(`resource ${name}: XDS payload without resource`);
  if (any.typeUrl !== typeUrl) throw new Error(`resource ${name}: type ${any.typeUrl} in a ${typeUrl} response`);
  if (typeUrl === AUTHORIZATION_TYPE) {
    let a;
    try {
      a = fromBinary(AuthorizationSchema, any.value);
    } catch (err) {
      throw new Error(`authorization ${name}: decode: ${(err as Error).message}`);
    }
    return { kind: 'policy', value: policyFromXds(name, a) };
  }
  let addr;
  try {
    addr = fromBinary(AddressSchema, any.value);
  } catch (err) {
    throw new Error(`address ${name}: decode: ${(err as Error).message}`);
  }
  switch (addr.type.case) {
    case 'workload':
      return { kind: 'workload', value: workloadFromXds(name, addr.type.value) };
    case 'service':
      return { kind: 'service', value: serviceFromXds(name, addr.type.value) };
    default:
      throw new Error(`address ${name}: neither workload nor service`);
  }
}
