// How the xDS and CA clients reach the control plane (review 6 #7): TLS unless the address says
// http://; an address without a scheme is TLS and needs the root; http:// is plaintext only because it
// was asked for, warns once, and never carries the bearer token. Real gRPC against TestControlPlane.
import { afterEach, describe, expect, it } from 'vitest';
import { CaClient } from '../src/ca-client/ca-client.js';
import { XdsClient } from '../src/xds/client.js';
import { WorkloadStore } from '../src/workload-store.js';
import { TestControlPlane, ipBytes, recordingLogger, waitFor, type LogLine } from './support-control-plane.js';

const A = 'spiffe://cluster.local/ns/default/sa/web';
const PLAINTEXT_WARNING = /^control plane over plaintext \(http:\/\/\)/;

let cp: TestControlPlane | undefined;
let xds: XdsClient | undefined;
let ca: CaClient | undefined;

afterEach(async () => {
  await xds?.close();
  ca?.close();
  await cp?.close();
  xds = undefined;
  ca = undefined;
  cp = undefined;
});

describe('XdsClient transport', () => {
  it('refuses an address without a scheme and without a root instead of dialling it in plaintext', () => {
    expect(() => new XdsClient({ address: '127.0.0.1:15012', token: () => 'tok', store: new WorkloadStore() })).toThrow(
      expect.objectContaining({
        code: 'ERR_ZTUNNEL_CONFIG',
        message: "127.0.0.1:15012: TLS needs the server's root certificate (rootCaPem); only an explicit http:// address is dialled without TLS",
      }),
    );
    expect(() => new XdsClient({ address: 'https://127.0.0.1:15012', store: new WorkloadStore() })).toThrow(/TLS needs the server's root/);
  });

  it('dials an address without a scheme over TLS, with the token', async () => {
    cp = await TestControlPlane.start();
    cp.setWorkload({ uid: 'u1', name: 'web-0', namespace: 'default', addresses: [ipBytes('10.0.0.5')] });
    const store = new WorkloadStore();
    xds = new XdsClient({ address: cp.address, rootCaPem: cp.rootCaPem, token: () => cp?.token ?? undefined, store });
    xds.start();
    await xds.ready();
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0');
    expect(cp.requests[0]!.headers.authorization).toBe(`Bearer ${cp.token}`);
  });

  it('over explicit http:// sends no bearer token and warns once, across reconnects', async () => {
    // A plaintext control plane that (wrongly) wants a token: it never gets one.
    cp = await TestControlPlane.start({ tls: false, token: 'secret-token' });
    const lines: LogLine[] = [];
    xds = new XdsClient({
      address: `http://${cp.address}`,
      token: () => 'secret-token',
      store: new WorkloadStore(),
      backoff: { initialMs: 10, maxMs: 20 },
      logger: recordingLogger(lines),
    });
    xds.start();
    await waitFor('three refused streams', () => lines.filter((l) => /UNAUTHENTICATED: bad or missing bearer token \(got none\)/.test(String(l.obj.error))).length >= 3, 5000);
    expect(xds.isReady).toBe(false);
    expect(lines.filter((l) => l.level === 'warn' && PLAINTEXT_WARNING.test(l.msg))).toHaveLength(1);
    expect(lines.find((l) => PLAINTEXT_WARNING.test(l.msg))?.obj.address).toBe(`http://${cp.address}`);
  });

  it('over http:// works against a plaintext control plane that asks for no token (istiod 15010)', async () => {
    cp = await TestControlPlane.start({ tls: false });
    expect(cp.token).toBeNull();
    cp.setWorkload({ uid: 'u1', name: 'web-0', namespace: 'default', addresses: [ipBytes('10.0.0.5')] });
    const store = new WorkloadStore();
    xds = new XdsClient({ address: `http://${cp.address}`, token: () => 'secret-token', store });
    xds.start();
    await xds.ready();
    expect(store.workloadByIp('10.0.0.5')?.name).toBe('web-0');
    expect(cp.requests.every((r) => r.headers.authorization === undefined)).toBe(true);
  });
});

describe('CaClient transport (it shares the channel rules)', () => {
  const caClient = (address: string, lines: LogLine[], rootCaPem?: string): CaClient =>
    new CaClient({
      address,
      ...(rootCaPem !== undefined ? { rootCaPem } : {}),
      trustBundlePem: 'unset\n',
      token: () => 'secret-token',
      retry: { attempts: 2, initialMs: 10, maxMs: 10 },
      logger: recordingLogger(lines),
    });

  it('over explicit http:// never sends the bearer token, and warns once', async () => {
    cp = await TestControlPlane.start({ tls: false, token: 'secret-token' });
    const lines: LogLine[] = [];
    ca = caClient(`http://${cp.address}`, lines);
    await expect(ca.issueWorkloadCertificate({ identity: A })).rejects.toThrow(/UNAUTHENTICATED: bad or missing bearer token \(got none\)/);
    expect(cp.issued).toHaveLength(0);
    expect(lines.filter((l) => l.level === 'warn' && PLAINTEXT_WARNING.test(l.msg))).toHaveLength(1);
  });

  it('refuses an address without a scheme and without a root', async () => {
    cp = await TestControlPlane.start({ tls: false, token: null });
    ca = caClient(cp.address, []);
    await expect(ca.issueWorkloadCertificate({ identity: A })).rejects.toThrow(/TLS needs the server's root certificate/);
    expect(cp.issued).toHaveLength(0);
  });

  it('dials an address without a scheme over TLS', async () => {
    cp = await TestControlPlane.start();
    const lines: LogLine[] = [];
    ca = new CaClient({ address: cp.address, rootCaPem: cp.rootCaPem, trustBundlePem: cp.rootCaPem, token: () => cp?.token ?? undefined, logger: recordingLogger(lines) });
    const cert = await ca.issueWorkloadCertificate({ identity: A });
    expect(cert.identity).toBe(A);
    expect(lines.some((l) => PLAINTEXT_WARNING.test(l.msg))).toBe(false);
  });
});
