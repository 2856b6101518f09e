// XdsClient against a real Delta ADS server (grpc-js, TLS, bearer token): what istiod pushes shows up
// in the WorkloadStore lookups the data path uses, and in the dump.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ADDRESS_TYPE, AUTHORIZATION_TYPE, XdsClient } from '../src/xds/client.js';
import { Action, Scope } from '../src/xds/gen/authorization_pb.js';
import { TunnelProtocol, WorkloadStatus } from '../src/xds/gen/workload_pb.js';
import { WorkloadStore } from '../src/workload-store.js';
import { evaluatePolicies } from '../src/authorization.js';
import { parseLocalConfig, type LocalConfig } from '../src/local-config.js';
import { Registry } from '../src/metrics.js';
import { TestControlPlane, ipBytes, recordingLogger, waitFor, type LogLine } from './support-control-plane.js';
import { WEB_0_YAML } from './support-xds.js';

let cp: TestControlPlane;
/** "Promptly" for a push: 1 s on an idle machine, with room for a starved event loop. */
const PROMPT_MS = 3000;
let store: WorkloadStore;
let client: XdsClient;
let lines: LogLine[];

function startClient(extra: Partial<ConstructorParameters<typeof XdsClient>[0]> = {}): XdsClient {
  lines = [];
  client = new XdsClient({
    address: `https://${cp.address}`,
    rootCaPem: cp.rootCaPem,
    token: () => cp.token ?? undefined,
    store,
    node: { podName: 'ztunnel-abc', podNamespace: 'istio-system', instanceIp: '10.1.0.9', nodeName: 'node-a', clusterId: 'c1', metadata: { EXTRA: 'x' } },
    logger: recordingLogger(lines),
    ...extra,
  });
  client.start();
  return client;
}

const web = (ip: string, extra: object = {}) => ({
  uid: 'cluster1//Pod/default/web-0',
  name: 'web-0',
  namespace: 'default',
  serviceAccount: 'web',
  trustDomain: 'cluster.local',
  addresses: [ipBytes(ip)],
  tunnelProtocol: TunnelProtocol.HBONE,
  node: 'node-a',
  services: { 'default/web.default.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080 }] } },
  ...extra,
});

beforeEach(async () => {
  cp = await TestControlPlane.start();
  store = new WorkloadStore();
});

afterEach(async () => {
  await client?.close();
  await cp.close();
});

describe('XdsClient', () => {
  it('subscribes with ztunnel node metadata and credentials, is ready after both types, applies pushes', async () => {
    cp.setWorkload(web('10.0.0.5'));
    cp.setService({
      name: 'web',
      namespace: 'default',
      hostname: 'web.default.svc.cluster.local',
      addresses: [{ network: '', address: ipBytes('10.96.0.10') }],
      ports: [{ servicePort: 80, targetPort: 8080 }],
    });
    startClient();
    expect(client.isReady).toBe(false);
    expect(client.pending()).toEqual(['xds istio.workload.Address', 'xds istio.security.Authorization']);
    await client.ready();
    expect(client.pending()).toEqual([]);

    const initial = cp.requests.filter((r) => r.request.responseNonce === '');
    expect(initial.map((r) => r.request.typeUrl).sort()).toEqual([AUTHORIZATION_TYPE, ADDRESS_TYPE].sort());
    const first = initial[0]!;
    expect(first.headers.authorization).toBe(`Bearer ${cp.token}`);
    expect(first.headers.clusterid).toBe('c1');
    expect(first.request.node?.id).toBe('ztunnel~10.1.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local');
    expect(first.request.node?.metadata).toEqual({
      NAME: 'ztunnel-abc',
      NAMESPACE: 'istio-system',
      INSTANCE_IPS: '10.1.0.9',
      NODE_NAME: 'node-a',
      CLUSTER_ID: 'c1',
      EXTRA: 'x',
    });
    expect(first.request.initialResourceVersions).toEqual({});

    // Routing sees them: by pod IP, by service VIP (target port mapped), identity.
    const w = store.workloadByIp('10.0.0.5')!;
    expect(w).toMatchObject({ uid: 'cluster1//Pod/default/web-0', name: 'web-0', protocol: 'HBONE', serviceAccount: 'web' });
    expect(store.identityOf(w)).toBe('spiffe://cluster.local/ns/default/sa/web');
    expect(store.resolve('10.96.0.10', 80)).toMatchObject({ address: '10.0.0.5', port: 8080, service: { hostname: 'web.default.svc.cluster.local' } });

    // A policy pushed later: applied promptly and enforced by the same evaluation the YAML feeds.
    const t0 = Date.now();
    cp.setPolicy({
      name: 'deny-evil',
      namespace: 'default',
      scope: Scope.NAMESPACE,
      action: Action.DENY,
      rules: [{ clauses: [{ matches: [{ namespaces: [{ matchType: { case: 'exact', value: 'evil' } }] }] }] }],
    });
    await waitFor('policy in store', () => store.config.policies.length === 1);
    // Nothing on the push path waits on a timer (1 s is the idle-machine bar); the margin is for a
    // starved event loop. The same stream carried it: no reconnect.
    expect(Date.now() - t0).toBeLessThan(PROMPT_MS);
    expect(client.dump().connections).toBe(1);
    const [p] = store.policiesFor(w);
    expect(p).toMatchObject({ name: 'deny-evil', action: 'Deny', scope: 'Namespace' });
    const deny = evaluatePolicies(store.policiesFor(w), {
      sourceIdentity: { namespace: 'evil', serviceAccount: 'x', trustDomain: 'cluster.local' },
      sourceIp: '10.0.0.7',
      destinationIp: '10.0.0.5',
      destinationPort: 8080,
    });
    expect(deny.allowed).toBe(false);

    // The dump names each resource with its version and the last ACK per type.
    const dump = client.dump();
    expect(dump.ready).toBe(true);
    expect(dump.connected).toBe(true);
    const addr = dump.types.find((t) => t.typeUrl === ADDRESS_TYPE)!;
    expect(addr.resources).toEqual(
      Object.entries(cp.versions(ADDRESS_TYPE))
        .map(([name, version]) => ({ name, version }))
        .sort((a, b) => a.name.localeCompare(b.name)),
    );
    expect(addr.lastAck?.nonce).toBeTruthy();
    expect(addr.lastNack).toBeNull();
    const authz = dump.types.find((t) => t.typeUrl === AUTHORIZATION_TYPE)!;
    expect(authz.resources).toEqual([{ name: 'default/deny-evil', version: cp.versions(AUTHORIZATION_TYPE)['default/deny-evil'] }]);
    // Every response was ACKed with its nonce.
    await waitFor('ack of the policy push', () => cp.requests.some((r) => r.request.responseNonce === authz.lastAck?.nonce && !r.request.errorDetail));
  });

  it('applies updates and removals promptly, on the same stream', async () => {
    cp.setWorkload(web('10.0.0.5'));
    const svc = cp.setService({
      name: 'web',
      namespace: 'default',
      hostname: 'web.default.svc.cluster.local',
      addresses: [{ network: 'net1', address: ipBytes('fd00::10') }],
      ports: [{ servicePort: 80, targetPort: 8080 }],
    });
    cp.setPolicy({ name: 'p', namespace: 'default', scope: Scope.GLOBAL, action: Action.ALLOW, rules: [] });
    startClient();
    await client.ready();
    expect(store.serviceByVip('fd00::10')?.vips).toEqual(['net1/fd00::10']);

    let t0 = Date.now();
    cp.setWorkload(web('10.0.0.6', { status: WorkloadStatus.UNHEALTHY }));
    await waitFor('moved workload', () => store.workloadByIp('10.0.0.6'));
    expect(Date.now() - t0).toBeLessThan(PROMPT_MS);
    expect(store.workloadByIp('10.0.0.5')).toBeUndefined();
    expect(store.workloadByIp('10.0.0.6')?.status).toBe('Unhealthy');
    expect(store.resolve('fd00::10', 80)).toBeUndefined(); // no healthy endpoint

    t0 = Date.now();
    cp.removeWorkload('cluster1//Pod/default/web-0');
    cp.removeService(svc);
    cp.removePolicy('default/p');
    await waitFor('removals', () => store.config.workloads.length + store.config.services.length + store.config.policies.length === 0);
    expect(Date.now() - t0).toBeLessThan(PROMPT_MS);
    expect(client.dump().connections).toBe(1);
    expect(store.workloadByUid('cluster1//Pod/default/web-0')).toBeUndefined();
    expect(store.serviceByVip('fd00::10')).toBeUndefined();
    expect(client.dump().types.every((t) => t.resources.length === 0)).toBe(true);
  });

  it('NACKs a bad update naming resource and field, keeps the previous version, and takes the next good one', async () => {
    cp.setWorkload(web('10.0.0.5'));
    startClient();
    await client.ready();
    const before = store.config;
    const goodVersion = cp.versions(ADDRESS_TYPE)['cluster1//Pod/default/web-0'];

    // A 5-byte address.
    cp.setWorkload(web('10.0.0.5', { addresses: [new Uint8Array([10, 0, 0, 5, 1])] }));
    const nack = await waitFor('NACK', () => cp.requests.find((r) => r.request.errorDetail !== undefined));
    expect(nack.request.typeUrl).toBe(ADDRESS_TYPE);
    expect(nack.request.errorDetail?.message).toMatch(/^workload cluster1\/\/Pod\/default\/web-0.*addresses\[0\].*5 bytes is not an IPv4/);
    expect(nack.request.errorDetail?.code).toBe(3);

    // Nothing else was in the response: same state object, the previous version held and advertised.
    expect(store.config).toBe(before);
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0');
    const dump = client.dump().types.find((t) => t.typeUrl === ADDRESS_TYPE)!;
    expect(dump.resources).toEqual([{ name: 'cluster1//Pod/default/web-0', version: goodVersion }]);
    expect(dump.lastNack?.error).toMatch(/5 bytes/);
    expect(dump.rejected).toEqual([
      expect.objectContaining({ name: 'cluster1//Pod/default/web-0', version: cp.versions(ADDRESS_TYPE)['cluster1//Pod/default/web-0'], outcome: 'kept-previous' }),
    ]);
    expect(lines.some((l) => l.level === 'error' && l.obj.type === 'NACK')).toBe(true);
    expect(lines.find((l) => l.msg === 'xds resource rejected')?.obj).toMatchObject({ resource: 'cluster1//Pod/default/web-0', outcome: 'kept-previous' });

    // A later good push is accepted again and clears the rejection.
    cp.setWorkload(web('10.0.0.8'));
    await waitFor('recovered', () => store.workloadByIp('10.0.0.8'));
    expect(client.dump().types.find((t) => t.typeUrl === ADDRESS_TYPE)!.rejected).toEqual([]);
  });

  it('applies every good resource of a response and NACKs only the bad ones; a hostname-only workload is good (review 6 #1)', async () => {
    const registry = new Registry();
    // istiod's first Address response: every workload and service in one message, here including the
    // hostname-only workload of a ServiceEntry with resolution DNS, and one this build cannot read.
    cp.setWorkload(web('10.0.0.5'));
    cp.setWorkload({ uid: 'Kubernetes/networking.istio.io/ServiceEntry/ext/github/api.github.com', name: 'github', namespace: 'ext', hostname: 'api.github.com' });
    cp.setService({ name: 'github', namespace: 'ext', hostname: 'api.github.com', addresses: [{ network: '', address: ipBytes('240.240.0.1') }], ports: [{ servicePort: 443, targetPort: 443 }] });
    cp.setWorkload({ uid: 'u-bad', name: '', namespace: 'default', addresses: [ipBytes('10.0.0.9')] });
    startClient({ registry });
    await client.ready();

    // One response held all four: three applied, one NACK naming the bad one and its field only.
    const initial = await waitFor('the NACK', () => {
      const answers = cp.requests.filter((r) => r.request.typeUrl === ADDRESS_TYPE && r.request.responseNonce !== '');
      return answers.length > 0 && answers;
    });
    expect(initial).toHaveLength(1);
    expect(initial[0]!.request.errorDetail?.message).toBe('workload u-bad: name: Too small: expected string to have >=1 characters');
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0');
    expect(store.workloadByUid('Kubernetes/networking.istio.io/ServiceEntry/ext/github/api.github.com')).toMatchObject({ hostname: 'api.github.com', workloadIps: [] });
    expect(store.serviceByVip('240.240.0.1')?.hostname).toBe('api.github.com');
    expect(store.workloadByUid('u-bad')).toBeUndefined();
    expect(store.workloadByIp('10.0.0.9')).toBeUndefined();
    // A destination reached by IP never lands on the address-less workload.
    expect(store.resolve('240.240.0.1', 443)).toBeUndefined();
    expect(client.pending()).toEqual([]);
    const dump = client.dump().types.find((t) => t.typeUrl === ADDRESS_TYPE)!;
    expect(dump.rejected).toEqual([expect.objectContaining({ name: 'u-bad', outcome: 'not-applied' })]);
    expect(lines.filter((l) => l.msg === 'xds resource rejected').map((l) => l.obj.resource)).toEqual(['u-bad']);
    const metrics = await registry.metrics();
    expect(metrics).toContain(`weir_xds_rejected_resources_total{type_url="${ADDRESS_TYPE}"} 1`);
    expect(metrics).toContain(`weir_xds_rejected_resources{type_url="${ADDRESS_TYPE}",outcome="not-applied"} 1`);
  });

  it('applies the good updates and every removal of a mixed response (a resubscription after istiod restarts)', async () => {
    cp.setWorkload(web('10.0.0.5'));
    cp.setWorkload({ uid: 'u-db', name: 'db-0', namespace: 'data', addresses: [ipBytes('10.0.0.20')] });
    cp.setWorkload({ uid: 'u-cache', name: 'cache-0', namespace: 'data', addresses: [ipBytes('10.0.0.21')] });
    startClient();
    await client.ready();
    await cp.stop();
    await waitFor('disconnect seen', () => !client.dump().connected);
    // While away: db removed, cache moved, web broken, a new pod.
    cp.removeWorkload('u-db');
    cp.setWorkload({ uid: 'u-cache', name: 'cache-0', namespace: 'data', addresses: [ipBytes('10.0.0.22')] });
    cp.setWorkload(web('10.0.0.5', { addresses: [new Uint8Array(7)] }));
    cp.setWorkload({ uid: 'u-new', name: 'new-0', namespace: 'default', addresses: [ipBytes('10.0.0.30')] });
    const from = cp.requests.length;
    await cp.restart();
    const nack = await waitFor('NACK of the resync', () => cp.requests.slice(from).find((r) => r.request.errorDetail !== undefined), 5000);
    expect(nack.request.errorDetail?.message).toMatch(/^workload cluster1\/\/Pod\/default\/web-0\.addresses\[0\]: 7 bytes/);
    expect(store.workloadByIp('10.0.0.20')).toBeUndefined();
    expect(store.workloadByIp('10.0.0.21')).toBeUndefined();
    expect(store.workloadByIp('10.0.0.22')?.name).toBe('cache-0');
    expect(store.workloadByIp('10.0.0.30')?.name).toBe('new-0');
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0'); // the previous version, kept
  });

  it('never lets a rejected authorization policy fail open', async () => {
    const registry = new Registry();
    const denyEvil = {
      name: 'deny-evil',
      namespace: 'default',
      scope: Scope.NAMESPACE,
      action: Action.DENY,
      rules: [{ clauses: [{ matches: [{ namespaces: [{ matchType: { case: 'exact' as const, value: 'evil' } }] }] }] }],
    };
    cp.setWorkload(web('10.0.0.5'));
    cp.setWorkload({ uid: 'u-db', name: 'db-0', namespace: 'data', addresses: [ipBytes('10.0.0.20')], authorizationPolicies: ['data/only-app'] });
    cp.setPolicy(denyEvil);
    startClient({ registry });
    await client.ready();
    const w = store.workloadByIp('10.0.0.5')!;
    const db = store.workloadByIp('10.0.0.20')!;
    const from = (ns: string, port = 8080) => ({
      sourceIdentity: { namespace: ns, serviceAccount: 'x', trustDomain: 'cluster.local' },
      sourceIp: '10.0.0.7',
      destinationIp: '10.0.0.5',
      destinationPort: port,
    });
    const allowed = (wl: typeof w, ns: string, port = 8080) => evaluatePolicies(store.policiesFor(wl), from(ns, port)).allowed;
    expect(allowed(w, 'evil')).toBe(false);
    expect(allowed(w, 'good')).toBe(true);

    // 1. An update of a known policy that does not convert: the last good version stays in force.
    const nacks = () => cp.requests.filter((r) => r.request.typeUrl === AUTHORIZATION_TYPE && r.request.errorDetail);
    cp.setPolicy({ ...denyEvil, rules: [{ clauses: [{ matches: [{ destinationPorts: [0] }] }] }] });
    await waitFor('NACK of the update', () => nacks().length === 1);
    expect(nacks()[0]!.request.errorDetail?.message).toMatch(/^authorization default\/deny-evil: rules\[0\]\[0\]\[0\]\.destinationPorts\[0\]/);
    expect(allowed(w, 'evil')).toBe(false);
    expect(allowed(w, 'good')).toBe(true);

    // 2. A new DENY that does not convert: everything its scope covers is denied until a good version.
    cp.setPolicy({ name: 'deny-new', namespace: 'default', scope: Scope.NAMESPACE, action: Action.DENY, rules: [{ clauses: [{ matches: [{ namespaces: [{}] }] }] }] });
    await waitFor('NACK of the new DENY', () => nacks().length === 2);
    expect(nacks()[1]!.request.errorDetail?.message).toMatch(/^authorization default\/deny-new\.rules\[0\]\[0\]\[0\]\.namespaces\[0\]: string match with no exact, prefix, suffix or presence/);
    expect(allowed(w, 'good')).toBe(false);
    expect(evaluatePolicies(store.policiesFor(w), from('good'))).toMatchObject({ reason: 'deny-matched', policy: 'default/deny-new' });
    expect(allowed(db, 'good')).toBe(true); // another namespace: untouched
    cp.setPolicy({ name: 'deny-new', namespace: 'default', scope: Scope.NAMESPACE, action: Action.DENY, rules: [{ clauses: [{ matches: [{ destinationPorts: [9999] }] }] }] });
    await waitFor('the good version replaces the stand-in', () => allowed(w, 'good'));
    expect(allowed(w, 'good', 9999)).toBe(false);

    // 3. A new ALLOW that does not convert: it admits nothing, so what it selects falls back to deny.
    expect(allowed(db, 'app')).toBe(true);
    cp.setPolicy({ name: 'only-app', namespace: 'data', scope: Scope.WORKLOAD_SELECTOR, action: Action.ALLOW, rules: [{ clauses: [{ matches: [{ sourceIps: [{ address: new Uint8Array(5), length: 8 }] }] }] }] });
    await waitFor('NACK of the new ALLOW', () => nacks().length === 3);
    expect(allowed(db, 'app')).toBe(false);
    expect(allowed(w, 'good')).toBe(true); // not selected by it

    // 4. A policy that does not even decode: denied everywhere (its scope is unknown).
    cp.setRaw(AUTHORIZATION_TYPE, 'default/garbage', new Uint8Array([0xff, 0xff, 0xff]));
    await waitFor('decode NACK', () => nacks().length === 4);
    expect(nacks()[3]!.request.errorDetail?.message).toMatch(/^authorization default\/garbage: decode/);
    expect(allowed(w, 'good')).toBe(false);
    expect(evaluatePolicies(store.policiesFor(w), from('good'))).toMatchObject({ reason: 'deny-matched', policy: 'default/garbage' });

    // Visible where operators look: the dump, the error log, the metrics.
    const dump = client.dump().types.find((t) => t.typeUrl === AUTHORIZATION_TYPE)!;
    expect(dump.rejected.map((r) => [r.name, r.outcome])).toEqual([
      ['data/only-app', 'fail-closed'],
      ['default/deny-evil', 'kept-previous'],
      ['default/garbage', 'fail-closed'],
    ]);
    expect(dump.resources.filter((r) => r.failClosed).map((r) => r.name)).toEqual(['data/only-app', 'default/garbage']);
    const metrics = await registry.metrics();
    expect(metrics).toContain(`weir_xds_rejected_resources_total{type_url="${AUTHORIZATION_TYPE}"} 4`);
    expect(metrics).toContain(`weir_xds_rejected_resources{type_url="${AUTHORIZATION_TYPE}",outcome="fail-closed"} 2`);
    expect(metrics).toContain(`weir_xds_rejected_resources{type_url="${AUTHORIZATION_TYPE}",outcome="kept-previous"} 1`);

    // Removing a policy always applies, stand-in or not.
    cp.removePolicy('default/garbage');
    await waitFor('removal', () => allowed(w, 'good'));
  });

  it('a policy response with only unconvertible resources still counts toward readiness (their stand-ins are applied)', async () => {
    cp.setWorkload(web('10.0.0.5'));
    cp.setPolicy({ name: 'bad', namespace: 'default', scope: Scope.NAMESPACE, action: Action.DENY, rules: [{ clauses: [{ matches: [{ destinationPorts: [0] }] }] }] });
    startClient();
    await client.ready();
    const w = store.workloadByIp('10.0.0.5')!;
    expect(evaluatePolicies(store.policiesFor(w), { sourceIp: '10.0.0.7', destinationIp: '10.0.0.5', destinationPort: 80 })).toMatchObject({
      allowed: false,
      policy: 'default/bad',
    });
  });

  it('keeps its state while istiod is away and resumes with the right initial versions', async () => {
    cp.setWorkload(web('10.0.0.5'));
    cp.setWorkload({ uid: 'u-db', name: 'db-0', namespace: 'data', addresses: [ipBytes('10.0.0.20')] });
    cp.setPolicy({ name: 'p', namespace: 'default', action: Action.ALLOW, rules: [] });
    startClient();
    await client.ready();
    const held = { address: cp.versions(ADDRESS_TYPE), authz: cp.versions(AUTHORIZATION_TYPE) };

    await cp.stop();
    await waitFor('disconnect seen', () => !client.dump().connected);
    // While away, nothing is lost from routing.
    await new Promise((r) => setTimeout(r, 100));
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0');
    expect(store.workloadByIp('10.0.0.20')?.name).toBe('db-0');
    expect(client.isReady).toBe(true);

    // The world moves on while the stream is down: db removed, a new workload, web unchanged.
    cp.removeWorkload('u-db');
    cp.setWorkload({ uid: 'u-new', name: 'new-0', namespace: 'default', addresses: [ipBytes('10.0.0.30')] });
    const before = cp.requests.length;
    await cp.restart();
    await waitFor('resubscribed and applied', () => store.workloadByIp('10.0.0.30'), 5000);
    expect(store.workloadByIp('10.0.0.20')).toBeUndefined();
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0');

    const again = cp.requests.slice(before).filter((r) => r.request.responseNonce === '');
    const addrReq = again.find((r) => r.request.typeUrl === ADDRESS_TYPE)!;
    const authzReq = again.find((r) => r.request.typeUrl === AUTHORIZATION_TYPE)!;
    expect(addrReq.request.initialResourceVersions).toEqual(held.address);
    expect(authzReq.request.initialResourceVersions).toEqual(held.authz);
    expect(client.dump().connections).toBeGreaterThanOrEqual(2);
    expect(lines.some((l) => l.level === 'warn' && l.msg === 'XDS client connection error, retrying')).toBe(true);
  });

  it('one model, two sources: a local YAML served over xDS arrives in the store exactly as parsed', async () => {
    const yaml = `
workloads:
${WEB_0_YAML}  - uid: Kubernetes//Pod/data/db-0
    name: db-0
    namespace: data
    workloadIps: [10.0.0.20]
    status: Unhealthy
    networkMode: HostNetwork
services:
  - name: web
    namespace: default
    hostname: web.default.svc.cluster.local
    vips: [/10.96.0.10, "net1/fd00::10"]
    ports: {80: 8080}
    subjectAltNames: [spiffe://cluster.local/ns/default/sa/web]
    ipFamilies: Dual
policies:
  - name: only-frontend
    namespace: default
    scope: WorkloadSelector
    action: Allow
    rules:
      - - - namespaces: [default, {prefix: front}]
            serviceAccounts: [{namespace: default, serviceAccount: frontend}, frontend2]
            principals: [{suffix: /sa/frontend}, {presence: {}}]
            notSourceIps: [10.9.0.0/16, "fd00:9::/32"]
          - destinationPorts: [8080]
            notDestinationIps: [10.0.0.99/32]
  - name: deny-all-dry
    namespace: ""
    scope: Global
    action: Deny
    dryRun: true
    rules: [[[{notNamespaces: [{exact: istio-system}]}]]]
`;
    const parsed = parseLocalConfig(yaml);
    cp.loadLocalConfig(parsed);
    startClient();
    await client.ready();
    const sorted = (c: LocalConfig): LocalConfig => ({
      workloads: [...c.workloads].sort((a, b) => a.uid.localeCompare(b.uid)),
      services: [...c.services].sort((a, b) => a.hostname.localeCompare(b.hostname)),
      policies: [...c.policies].sort((a, b) => a.name.localeCompare(b.name)),
    });
    expect(sorted(store.config)).toEqual(sorted(parsed));

    // Loading a smaller config removes what it no longer names.
    cp.loadLocalConfig({ ...parsed, workloads: parsed.workloads.slice(0, 1), policies: [] });
    await waitFor('removals', () => store.config.workloads.length === 1 && store.config.policies.length === 0);
    expect(store.workloadByIp('10.0.0.20')).toBeUndefined();
    expect(store.config.services).toEqual(parsed.services);
  });

  it('backs off exponentially up to the cap while istiod is down, and close() ends the wait at once', async () => {
    startClient({ backoff: { initialMs: 20, maxMs: 160 } });
    await client.ready();
    await cp.stop();
    await waitFor('six failed attempts', () => lines.filter((l) => l.msg === 'XDS client connection error, retrying').length >= 6, 5000);
    const delays = lines.filter((l) => l.msg === 'XDS client connection error, retrying').map((l) => l.obj.backoff_ms as number);
    // The stream that had delivered data restarts the backoff; each failed connect doubles it.
    expect(delays.slice(0, 6)).toEqual([20, 40, 80, 160, 160, 160]);
  });

  it('close() ends a backoff wait at once', async () => {
    // A 60 s wait, so "at once" is told apart from "waited for the timer" whatever the load.
    startClient({ backoff: { initialMs: 60_000, maxMs: 60_000 } });
    await client.ready();
    await cp.stop();
    const retrying = () => lines.filter((l) => l.msg === 'XDS client connection error, retrying');
    await waitFor('a failed attempt', () => retrying().length === 1);
    expect(retrying()[0]?.obj.backoff_ms).toBe(60_000);
    const t0 = Date.now();
    await client.close();
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(retrying()).toHaveLength(1);
  });

  it('is never ready with a bad token, and says why', async () => {
    startClient({ token: () => 'wrong', backoff: { initialMs: 10, maxMs: 50 } });
    await waitFor('a refused connection', () => lines.find((l) => /UNAUTHENTICATED/.test(String(l.obj.error))), 3000);
    expect(client.isReady).toBe(false);
    expect(client.dump().lastError).toMatch(/UNAUTHENTICATED: bad or missing bearer token/);
  });

  it('refuses a server whose certificate does not chain to XDS_ROOT_CA', async () => {
    const other = await TestControlPlane.start();
    try {
      startClient({ rootCaPem: other.rootCaPem, backoff: { initialMs: 10, maxMs: 50 } });
      await waitFor('TLS failure', () => client.dump().lastError, 3000);
      expect(client.isReady).toBe(false);
      expect(cp.requests).toHaveLength(0);
    } finally {
      await other.close();
    }
  });
});
