import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { create, toBinary, type MessageInitShape } from '@bufbuild/protobuf';
import { LocalCa, PkiError, parseCertificateSigningRequest, type SignedWorkloadCertificate } from '@weir/pki';
import { CREATE_CERTIFICATE_PATH } from '../ca-client/ca-client.js';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, DELTA_ADS_PATH } from './client.js';
import { Action, AuthorizationSchema, Scope } from './gen/authorization_pb.js';
import type { LocalConfig, Policy, RbacMatch, Service, StringMatch, Workload } from '../local-config.js';
import { IstioCertificateRequestSchema, IstioCertificateResponseSchema, type IstioCertificateRequest, type IstioCertificateResponse } from './gen/citadel_pb.js';
import {
  DeltaDiscoveryRequestSchema,
  DeltaDiscoveryResponseSchema,
  type DeltaDiscoveryRequest,
  type DeltaDiscoveryResponse,
} from './gen/envoy/service/discovery/v3/discovery_pb.js';
import {
  AddressSchema,
  IPFamilies,
  NetworkMode,
  ServiceSchema,
  TunnelProtocol,
  WorkloadSchema,
  WorkloadStatus,
  WorkloadType,
} from './gen/workload_pb.js';
import { deserializer, serializer } from './grpc.js';

// A small istiod for tests and the local sandbox: Delta ADS for workloads, services and policies,
// and Istio's CA, on one TLS port. It speaks the same generated messages as the clients, over real
// gRPC (grpc-js), with real certificates.

export interface TestControlPlaneOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0 (any free port; kept across restart()). */
  port?: number;
  /** Serve TLS (default true); the server certificate names localhost, 127.0.0.1 and ::1. */
  tls?: boolean;
  /**
   * The bearer token clients must send; default random with TLS, null without (as istiod's
   * plaintext port: clients never send the token in clear). null: accept any or none.
   */
  token?: string | null;
  /** Trust domain of the CA; default cluster.local. */
  trustDomain?: string;
  /** Overrides the lifetime clients ask for (tests of rotation use seconds). */
  certTtlSeconds?: number;
}

/** One stream's view, for assertions. */
export interface RecordedRequest {
  stream: number;
  request: DeltaDiscoveryRequest;
  headers: Record<string, string>;
}

export interface IssuedCertificate {
  identity: string;
  serial: string;
  notAfter: Date;
  impersonated: string | undefined;
}

interface StoredResource {
  version: string;
  body: Uint8Array;
}

interface Stream {
  id: number;
  call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
  types: Set<string>;
  nonce: number;
}

const TYPE_URLS = [ADDRESS_TYPE, AUTHORIZATION_TYPE];

/**
 * ```ts
 * const cp = await TestControlPlane.start();
 * // ztunnel: XDS_ADDRESS=https://<cp.address>, XDS_ROOT_CA=<cp.rootCaPem>, token=<cp.token>
 * cp.setWorkload({ uid: 'u1', name: 'web-0', namespace: 'default', addresses: [ipBytes('10.0.0.5')] });
 * cp.removeWorkload('u1');
 * cp.caAvailable = false; // CA outage
 * await cp.stop(); await cp.restart(); // istiod going away and coming back
 * await cp.close();
 * ```
 */
export class TestControlPlane extends EventEmitter<{ request: [RecordedRequest]; issued: [IssuedCertificate] }> {
  readonly host: string;
  #port: number;
  readonly token: string | null;
  readonly trustDomain: string;
  /** Roots for both the gRPC server certificate (XDS_ROOT_CA / CA_ROOT_CA) and issued workload certificates. */
  readonly rootCaPem: string;
  readonly #tls: boolean;
  readonly #serverKeyPem: string;
  readonly #serverCertPem: string;
  readonly #ca: LocalCa;
  readonly #certTtlSeconds: number | undefined;
  readonly #state = new Map<string, Map<string, StoredResource>>(TYPE_URLS.map((t) => [t, new Map()]));
  readonly #streams = new Set<Stream>();
  #server: grpc.Server | undefined;
  #version = 0;
  #streamIds = 0;
  /** Every request received, oldest first. */
  readonly requests: RecordedRequest[] = [];
  /** Every certificate issued, oldest first. */
  readonly issued: IssuedCertificate[] = [];
  /** false: CreateCertificate answers UNAVAILABLE (a CA outage without an xDS outage). */
  caAvailable = true;

  private constructor(o: TestControlPlaneOptions, pki: { ca: LocalCa; serverCertPem: string; serverKeyPem: string }) {
    super();
    this.host = o.host ?? '127.0.0.1';
    this.#port = o.port ?? 0;
    this.token = o.token === undefined ? ((o.tls ?? true) ? randomBytes(12).toString('hex') : null) : o.token;
    this.trustDomain = o.trustDomain ?? 'cluster.local';
    this.#tls = o.tls ?? true;
    this.#certTtlSeconds = o.certTtlSeconds;
    this.rootCaPem = pki.ca.rootPem;
    this.#ca = pki.ca;
    this.#serverCertPem = pki.serverCertPem;
    this.#serverKeyPem = pki.serverKeyPem;
  }

  static async start(o: TestControlPlaneOptions = {}): Promise<TestControlPlane> {
    const td = o.trustDomain ?? 'cluster.local';
    const ca = await LocalCa.create({ trustDomain: td, commonName: 'Weir test control plane root' });
    const server = await ca.issueServerCertificate({
      commonName: 'istiod',
      dnsNames: ['localhost', 'istiod.istio-system.svc'],
      ipAddresses: ['127.0.0.1', '::1'],
    });
    const cp = new TestControlPlane(o, { ca, serverCertPem: server.chainPem, serverKeyPem: server.keyPem });
    await cp.restart();
    return cp;
  }

  /** `host:port` (give clients `https://` + this when TLS is on). */
  get address(): string {
    return `${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.#port}`;
  }

  get port(): number {
    return this.#port;
  }

  /** Streams currently open. */
  get streams(): number {
    return this.#streams.size;
  }

  // ---- xDS state ----

  /** Adds or replaces a workload (resource name: its uid) and pushes it. Returns the resource name. */
  setWorkload(w: MessageInitShape<typeof WorkloadSchema>): string {
    const workload = create(WorkloadSchema, w);
    const name = workload.uid || `${workload.namespace}/${workload.name}`;
    this.#set(ADDRESS_TYPE, name, toBinary(AddressSchema, create(AddressSchema, { type: { case: 'workload', value: workload } })));
    return name;
  }

  /** Adds or replaces a service (resource name `<namespace>/<hostname>`) and pushes it. */
  setService(s: MessageInitShape<typeof ServiceSchema>): string {
    const service = create(ServiceSchema, s);
    const name = `${service.namespace}/${service.hostname}`;
    this.#set(ADDRESS_TYPE, name, toBinary(AddressSchema, create(AddressSchema, { type: { case: 'service', value: service } })));
    return name;
  }

  /** Adds or replaces a policy (resource name `<namespace>/<name>`) and pushes it. */
  setPolicy(p: MessageInitShape<typeof AuthorizationSchema>): string {
    const policy = create(AuthorizationSchema, p);
    const name = `${policy.namespace}/${policy.name}`;
    this.#set(AUTHORIZATION_TYPE, name, toBinary(AuthorizationSchema, policy));
    return name;
  }

  /**
   * Serves a local config (ztunnel's LOCAL_XDS_PATH model, e.g. from parseLocalConfig) over xDS:
   * every workload, service and policy becomes a resource; resources not in it are removed. This is
   * how the sandbox turns its YAML into a control plane.
   */
  loadLocalConfig(config: LocalConfig): void {
    const keep = new Map<string, Set<string>>(TYPE_URLS.map((t) => [t, new Set()]));
    for (const w of config.workloads) keep.get(ADDRESS_TYPE)!.add(this.setWorkload(workloadToXds(w)));
    for (const s of config.services) keep.get(ADDRESS_TYPE)!.add(this.setService(serviceToXds(s)));
    for (const p of config.policies) keep.get(AUTHORIZATION_TYPE)!.add(this.setPolicy(policyToXds(p)));
    for (const [t, held] of this.#state) for (const name of [...held.keys()]) if (!keep.get(t)!.has(name)) this.remove(t, name);
  }

  removeWorkload(uid: string): void {
    this.remove(ADDRESS_TYPE, uid);
  }

  removeService(name: string): void {
    this.remove(ADDRESS_TYPE, name);
  }

  removePolicy(name: string): void {
    this.remove(AUTHORIZATION_TYPE, name);
  }

  /** Stores raw resource bytes (possibly malformed) under a name and pushes them. */
  setRaw(typeUrl: string, name: string, body: Uint8Array): void {
    this.#set(typeUrl, name, body);
  }

  remove(typeUrl: string, name: string): void {
    const held = this.#state.get(typeUrl);
    if (!held?.delete(name)) return;
    for (const s of this.#streams) if (s.types.has(typeUrl)) this.#send(s, typeUrl, [], [name]);
  }

  /** Name → version of what the control plane holds for a type. */
  versions(typeUrl: string): Record<string, string> {
    return Object.fromEntries([...(this.#state.get(typeUrl) ?? [])].map(([n, r]) => [n, r.version]));
  }

  #set(typeUrl: string, name: string, body: Uint8Array): void {
    const held = this.#state.get(typeUrl);
    if (!held) throw new Error(`unknown type ${typeUrl}`);
    // Delta xDS, as istiod: an unchanged resource keeps its version and is not sent again (a
    // loadLocalConfig after a one-line edit pushes that one resource, not the whole file).
    const old = held.get(name);
    if (old !== undefined && Buffer.from(old.body).equals(body)) return;
    const r = { version: String(++this.#version), body };
    held.set(name, r);
    for (const s of this.#streams) if (s.types.has(typeUrl)) this.#send(s, typeUrl, [[name, r]], []);
  }

  #send(s: Stream, typeUrl: string, resources: [string, StoredResource][], removed: string[]): void {
    const resp = create(DeltaDiscoveryResponseSchema, {
      typeUrl,
      nonce: `${s.id}-${++s.nonce}`,
      systemVersionInfo: String(this.#version),
      removedResources: removed,
      resources: resources.map(([name, r]) => ({ name, version: r.version, resource: { typeUrl, value: r.body } })),
    });
    s.call.write(resp);
  }

  #authorized(md: grpc.Metadata): string | undefined {
    if (this.token === null) return undefined;
    const got = md.get('authorization')[0];
    return got === `Bearer ${this.token}` ? undefined : `bad or missing bearer token (got ${got === undefined ? 'none' : JSON.stringify(String(got).slice(0, 12) + '…')})`;
  }

  #onStream(call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>): void {
    const denied = this.#authorized(call.metadata);
    if (denied) {
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: denied });
      return;
    }
    const s: Stream = { id: ++this.#streamIds, call, types: new Set(), nonce: 0 };
    this.#streams.add(s);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(call.metadata.getMap())) headers[k] = String(v);
    const done = (): void => {
      this.#streams.delete(s);
    };
    call.on('end', () => {
      done();
      call.end();
    });
    call.on('error', done);
    call.on('cancelled', done);
    call.on('close', done);
    call.on('data', (req: DeltaDiscoveryRequest) => {
      const rec = { stream: s.id, request: req, headers };
      this.requests.push(rec);
      this.emit('request', rec);
      if (req.responseNonce !== '') return; // an ACK or NACK: recorded, nothing to do
      if (!this.#state.has(req.typeUrl)) {
        this.#send(s, req.typeUrl, [], []);
        return;
      }
      // A (re)subscription: send what differs from what the client says it holds.
      s.types.add(req.typeUrl);
      const held = this.#state.get(req.typeUrl)!;
      const known = req.initialResourceVersions;
      const changed = [...held].filter(([name, r]) => known[name] !== r.version);
      const removed = Object.keys(known).filter((name) => !held.has(name));
      this.#send(s, req.typeUrl, changed, removed);
    });
  }

  // ---- CA ----

  async #onCreateCertificate(call: grpc.ServerUnaryCall<IstioCertificateRequest, IstioCertificateResponse>): Promise<IstioCertificateResponse> {
    const denied = this.#authorized(call.metadata);
    if (denied) throw Object.assign(new Error(denied), { code: grpc.status.UNAUTHENTICATED, details: denied });
    if (!this.caAvailable) throw Object.assign(new Error('CA unavailable'), { code: grpc.status.UNAVAILABLE, details: 'test CA outage' });
    const req = call.request;
    const invalid = (details: string): Error => Object.assign(new Error(details), { code: grpc.status.INVALID_ARGUMENT, details });
    let uris: string[];
    let publicKeyPem: string;
    try {
      ({ identities: uris, publicKeyPem } = parseCertificateSigningRequest(req.csr));
    } catch (err) {
      throw invalid((err as Error).message);
    }
    const impersonated = typeof req.metadata?.ImpersonatedIdentity === 'string' ? req.metadata.ImpersonatedIdentity : undefined;
    const identity = impersonated ?? uris[0];
    if (identity === undefined || uris.length !== 1 || uris[0] !== identity) {
      throw invalid(`CSR SANs ${JSON.stringify(uris)} do not match the requested identity ${identity ?? '(none)'}`);
    }
    if (!identity.startsWith(`spiffe://${this.trustDomain}/ns/`)) throw invalid(`identity ${identity} is outside trust domain ${this.trustDomain}`);
    const ttl = this.#certTtlSeconds ?? (Number(req.validityDuration) || 86_400);
    let leaf: SignedWorkloadCertificate;
    try {
      leaf = await this.#ca.issueWorkloadCertificate({ identity, publicKeyPem, ttlSeconds: ttl });
    } catch (err) {
      if (err instanceof PkiError) throw invalid(err.message);
      throw err;
    }
    const issued = { identity, serial: leaf.serial, notAfter: leaf.notAfter, impersonated };
    this.issued.push(issued);
    this.emit('issued', issued);
    return create(IstioCertificateResponseSchema, { certChain: [leaf.certPem, this.rootCaPem] });
  }

  // ---- lifecycle ----

  /** Starts serving (again) on the same port: istiod coming back. */
  async restart(): Promise<void> {
    if (this.#server) return;
    const server = new grpc.Server();
    server.addService(
      {
        DeltaAggregatedResources: {
          path: DELTA_ADS_PATH,
          requestStream: true,
          responseStream: true,
          requestSerialize: serializer(DeltaDiscoveryRequestSchema),
          requestDeserialize: deserializer(DeltaDiscoveryRequestSchema),
          responseSerialize: serializer(DeltaDiscoveryResponseSchema),
          responseDeserialize: deserializer(DeltaDiscoveryResponseSchema),
        },
        CreateCertificate: {
          path: CREATE_CERTIFICATE_PATH,
          requestStream: false,
          responseStream: false,
          requestSerialize: serializer(IstioCertificateRequestSchema),
          requestDeserialize: deserializer(IstioCertificateRequestSchema),
          responseSerialize: serializer(IstioCertificateResponseSchema),
          responseDeserialize: deserializer(IstioCertificateResponseSchema),
        },
      },
      {
        DeltaAggregatedResources: (call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>) => this.#onStream(call),
        CreateCertificate: (
          call: grpc.ServerUnaryCall<IstioCertificateRequest, IstioCertificateResponse>,
          cb: grpc.sendUnaryData<IstioCertificateResponse>,
        ) => {
          this.#onCreateCertificate(call).then(
            (r) => cb(null, r),
            (err: grpc.ServiceError) => cb(err),
          );
        },
      },
    );
    const creds = this.#tls
      ? grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(this.#serverKeyPem), cert_chain: Buffer.from(this.#serverCertPem) }], false)
      : grpc.ServerCredentials.createInsecure();
    const hostPort = `${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.#port}`;
    this.#port = await new Promise<number>((resolve, reject) => server.bindAsync(hostPort, creds, (err, port) => (err ? reject(err) : resolve(port))));
    this.#server = server;
  }

  /** Stops serving and drops every stream at once (istiod going away); state is kept for restart(). */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const s of this.#streams) s.call.destroy();
    this.#streams.clear();
    server?.forceShutdown();
  }

  async close(): Promise<void> {
    await this.stop();
  }
}

/** `'10.0.0.5'` / `'fd00::5'` → the raw bytes Istio's messages carry. */
export function ipBytes(ip: string): Uint8Array {
  if (ip.includes(':')) {
    const [head, tail] = ip.split('::') as [string, string | undefined];
    const h = head === '' ? [] : head.split(':');
    const t = tail === undefined || tail === '' ? [] : tail.split(':');
    const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
    const out = new Uint8Array(16);
    groups.forEach((g, i) => {
      const v = parseInt(g, 16);
      out[i * 2] = v >> 8;
      out[i * 2 + 1] = v & 0xff;
    });
    return out;
  }
  return new Uint8Array(ip.split('.').map(Number));
}

// ---- local-config model → Istio messages (the reverse of convert.ts, for serving YAML over xDS) ----

function networkAddress(vip: string): { network: string; address: Uint8Array } {
  const slash = vip.indexOf('/');
  return slash < 0 ? { network: '', address: ipBytes(vip) } : { network: vip.slice(0, slash), address: ipBytes(vip.slice(slash + 1)) };
}

function gatewayToXds(g: { destination?: unknown; hboneMtlsPort?: number | undefined } | undefined) {
  if (!g) return undefined;
  const d = g.destination as { hostname?: { namespace: string; hostname: string }; address?: string } | undefined;
  const destination = d?.hostname
    ? { case: 'hostname' as const, value: d.hostname }
    : d?.address !== undefined
      ? { case: 'address' as const, value: networkAddress(d.address) }
      : undefined;
  return { ...(destination ? { destination } : {}), hboneMtlsPort: g.hboneMtlsPort ?? 0 };
}

const WORKLOAD_TYPES: Record<string, WorkloadType> = {
  deployment: WorkloadType.DEPLOYMENT,
  cronjob: WorkloadType.CRONJOB,
  pod: WorkloadType.POD,
  job: WorkloadType.JOB,
};

export function workloadToXds(w: Workload): MessageInitShape<typeof WorkloadSchema> {
  return {
    uid: w.uid,
    name: w.name,
    namespace: w.namespace,
    addresses: w.workloadIps.map(ipBytes),
    hostname: w.hostname,
    network: w.network,
    tunnelProtocol: w.protocol === 'HBONE' ? TunnelProtocol.HBONE : TunnelProtocol.NONE,
    trustDomain: w.trustDomain,
    serviceAccount: w.serviceAccount,
    ...(w.waypoint ? { waypoint: gatewayToXds(w.waypoint) } : {}),
    ...(w.networkGateway ? { networkGateway: gatewayToXds(w.networkGateway) } : {}),
    node: w.node,
    canonicalName: w.canonicalName,
    canonicalRevision: w.canonicalRevision,
    workloadType: WORKLOAD_TYPES[w.workloadType] ?? WorkloadType.POD,
    workloadName: w.workloadName,
    services: Object.fromEntries(
      Object.entries(w.services).map(([k, ports]) => [k, { ports: Object.entries(ports).map(([sp, tp]) => ({ servicePort: Number(sp), targetPort: tp })) }]),
    ),
    authorizationPolicies: w.authorizationPolicies,
    status: w.status === 'Unhealthy' ? WorkloadStatus.UNHEALTHY : WorkloadStatus.HEALTHY,
    clusterId: w.clusterId,
    ...(w.locality ? { locality: w.locality } : {}),
    networkMode: w.networkMode === 'HostNetwork' ? NetworkMode.HOST_NETWORK : NetworkMode.STANDARD,
  };
}

const IP_FAMILIES: Record<string, IPFamilies> = {
  Automatic: IPFamilies.AUTOMATIC,
  IPv4Only: IPFamilies.IPV4_ONLY,
  IPv6Only: IPFamilies.IPV6_ONLY,
  Dual: IPFamilies.DUAL,
};

export function serviceToXds(s: Service): MessageInitShape<typeof ServiceSchema> {
  return {
    name: s.name,
    namespace: s.namespace,
    hostname: s.hostname,
    addresses: s.vips.map(networkAddress),
    ports: Object.entries(s.ports).map(([sp, tp]) => ({ servicePort: Number(sp), targetPort: tp })),
    subjectAltNames: s.subjectAltNames,
    ...(s.waypoint ? { waypoint: gatewayToXds(s.waypoint) } : {}),
    ipFamilies: IP_FAMILIES[s.ipFamilies ?? 'Automatic'] ?? IPFamilies.AUTOMATIC,
    canonical: s.canonical,
  };
}

function stringMatchToXds(m: StringMatch) {
  return { matchType: m.kind === 'presence' ? { case: 'presence' as const, value: {} } : { case: m.kind, value: m.value } };
}

function cidrToXds(c: string) {
  const [ip, len] = c.split('/') as [string, string | undefined];
  const address = ipBytes(ip);
  return { address, length: len === undefined ? address.length * 8 : Number(len) };
}

function serviceAccountToXds(m: RbacMatch['serviceAccounts'][number]) {
  if (m.name.kind !== 'exact') throw new Error(`service account match ${JSON.stringify(m)} has no xDS form (exact names only)`);
  return { namespace: m.namespace ?? '', serviceAccount: m.name.value };
}

export function policyToXds(p: Policy): MessageInitShape<typeof AuthorizationSchema> {
  const scope = { Global: Scope.GLOBAL, Namespace: Scope.NAMESPACE, WorkloadSelector: Scope.WORKLOAD_SELECTOR }[p.scope];
  return {
    name: p.name,
    namespace: p.namespace,
    scope,
    action: p.action === 'Deny' ? Action.DENY : Action.ALLOW,
    dryRun: p.dryRun,
    rules: p.rules.map((clauses) => ({
      clauses: clauses.map((matches) => ({
        matches: matches.map((m) => ({
          namespaces: m.namespaces.map(stringMatchToXds),
          notNamespaces: m.notNamespaces.map(stringMatchToXds),
          serviceAccounts: m.serviceAccounts.map(serviceAccountToXds),
          notServiceAccounts: m.notServiceAccounts.map(serviceAccountToXds),
          principals: m.principals.map(stringMatchToXds),
          notPrincipals: m.notPrincipals.map(stringMatchToXds),
          sourceIps: m.sourceIps.map(cidrToXds),
          notSourceIps: m.notSourceIps.map(cidrToXds),
          destinationIps: m.destinationIps.map(cidrToXds),
          notDestinationIps: m.notDestinationIps.map(cidrToXds),
          destinationPorts: m.destinationPorts,
          notDestinationPorts: m.notDestinationPorts,
        })),
      })),
    })),
  };
}
