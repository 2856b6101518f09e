// A pod's listeners come first, its certificate after: ZDS Adds are acked once the proxy listens, with
// the certificate fetched in the background (as ztunnel prefetches it). mTLS connections that come
// before it wait for it and are served once it arrives, or fail closed when the CA keeps failing.
// Real pods (topology), in-pod rules, ZDS over a unix seqpacket socket, TLS.
import * as tls from 'node:tls';
import { connectTcp } from '@weir/netns';
import type { LocalCa } from '@weir/pki';
import type { TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CertificateSource, WorkloadCertificate } from '../src/identity.js';
import { CertWorld } from './cert-support.js';
import { type EchoApp, podListeners, tryConnect, waitFor, zdsAddPod } from './support.js';

/** Bounds a connection's wait for its pod's first certificate (the proxies' connect timeout). */
const CONNECT_TIMEOUT_MS = 5000;

/**
 * The test CA, except that `sa-slow` is issued only once open() is called (istiod slow to sign) and
 * `sa-fail` never (istiod refusing or unreachable); every ask is counted per service account.
 */
class ScriptedCa implements CertificateSource {
  readonly asks = new Map<string, number>();
  open!: () => void;
  readonly #gate = new Promise<void>((r) => (this.open = r));
  constructor(readonly ca: LocalCa) {}

  async issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    const sa = o.identity.slice(o.identity.lastIndexOf('/') + 1);
    this.asks.set(sa, (this.asks.get(sa) ?? 0) + 1);
    if (sa === 'sa-fail') throw new Error('UNAVAILABLE: istiod CA is unreachable');
    if (sa === 'sa-slow') await this.#gate;
    return this.ca.issueWorkloadCertificate(o);
  }
}

describe('pod certificates fetched in the background (real pods, ZDS, TLS)', () => {
  const world = new CertWorld({
    tag: 'c',
    // raw is not in the mesh: a raw TLS client from there reaches a pod's 15008 as another node's ztunnel would.
    pods: { a: 'sa-a', b: 'sa-b', slow: 'sa-slow', fail: 'sa-fail', raw: null },
    ca: (local) => new ScriptedCa(local),
    proxy: { connectTimeoutMs: CONNECT_TIMEOUT_MS, certificateRetry: { initialMs: 100, maxMs: 400 } },
  });
  const { log } = world;
  let a: TopologyPod, b: TopologyPod, slow: TopologyPod, fail: TopologyPod, raw: TopologyPod;
  let appB: EchoApp, appSlow: EchoApp, appFail: EchoApp;

  beforeAll(async () => {
    await world.start();
    ({ a, b, slow, fail, raw } = world.pods);
    appB = await world.echo(b, 8080);
    appSlow = await world.echo(slow, 8080);
    appFail = await world.echo(fail, 8080);
  }, 180_000);

  afterAll(async () => {
    world.ca?.open();
    await world.close();
  }, 60_000);

  it('acks every Add once its listeners are up, also while the CA is slow or failing', async () => {
    const acked: Record<string, number> = {};
    await Promise.all(
      (
        [
          [a, 'sa-a'],
          [b, 'sa-b'],
          [slow, 'sa-slow'],
          [fail, 'sa-fail'],
        ] as const
      ).map(async ([pod, sa]) => {
        const t0 = Date.now();
        await zdsAddPod(world.zds, pod, sa);
        acked[pod.name] = Date.now() - t0;
        // Acked: the pod's traffic is captured by listeners at this moment.
        const listeners = await podListeners(pod);
        for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `${pod.name}:${port}`).toContain(process.pid);
      }),
    );
    // Not waiting for a CA that never answers: within ztunnel's record timeout (4 s), under the node agent's 5 s ack deadline.
    expect(acked.slow).toBeLessThan(4000);
    expect(acked.fail).toBeLessThan(4000);
    expect(world.m.pods().map((p) => [p.uid, p.state]).sort()).toEqual([a, b, slow, fail].map((p) => [p.uid, 'Up']).sort());
    expect(world.m.pending()).toEqual([]);
    await waitFor('the healthy pods certified', async () => world.certOf('sa-a')?.state === 'Available' && world.certOf('sa-b')?.state === 'Available');
    expect(world.certOf('sa-slow')?.state).toBe('Initializing');
    // The failing fetch is retried in the background, with a growing delay, and logged.
    await waitFor('sa-fail asked three times', async () => (world.ca.asks.get('sa-fail') ?? 0) >= 3);
    const retries = log.filter((r) => r.msg === 'failed to fetch certificate, retrying' && r.uid === fail.uid);
    expect(retries.length).toBeGreaterThanOrEqual(2);
    expect(retries[0]).toMatchObject({ identity: 'spiffe://cluster.local/ns/ns1/sa/sa-fail' });
    expect(Number(retries[1]!.retry_ms)).toBeGreaterThanOrEqual(100);
  });

  it('a connection made before the certificate arrives waits for it and is served once it does, inbound and outbound', async () => {
    expect(world.certOf('sa-slow')?.state).toBe('Initializing');
    const t0 = Date.now();
    // a → slow: a's tunnel reaches slow's 15008, whose handshake waits for slow's certificate.
    const inbound = tryConnect(world.ns(a), slow.ip, 8080, 10_000);
    // slow → b: slow's outbound tunnel needs slow's certificate to dial.
    const outbound = tryConnect(world.ns(slow), b.ip, 8080, 10_000);
    await waitFor('the inbound tunnel at slow', async () => log.some((r) => r.msg === 'inbound HBONE connection' && r.uid === slow.uid));
    await new Promise((r) => setTimeout(r, 500));
    expect(appSlow.clients).toEqual([]);
    expect(appB.clients).not.toContain(slow.ip);
    world.ca.open();
    expect(await inbound).toBe('ok');
    expect(await outbound).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(CONNECT_TIMEOUT_MS);
    expect(appSlow.clients).toEqual([a.ip]);
    expect(appB.clients).toContain(slow.ip);
    expect(world.certOf('sa-slow')?.state).toBe('Available');
    // Over mTLS: slow's side knows the caller by its certificate.
    const served = await waitFor('the inbound connection logged at slow', async () =>
      log.find((r) => r.msg === 'connection complete' && r.direction === 'inbound' && r['dst.workload'] === 'slow'),
    );
    expect(served['src.identity']).toBe('spiffe://cluster.local/ns/ns1/sa/sa-a');
  });

  it('fails closed when the CA keeps failing: no tunnel either way, no plaintext, nothing around the proxy', async () => {
    expect(world.certOf('sa-fail')?.state).not.toBe('Available');
    // Outbound: the tunnel waits for the certificate up to the connect timeout, then the connection is closed.
    const t0 = Date.now();
    expect(await tryConnect(world.ns(fail), b.ip, 8080, 10_000)).not.toBe('ok');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    expect(appB.clients).not.toContain(fail.ip);
    const failed = await waitFor('the outbound failure logged', async () =>
      log.find((r) => r.msg === 'connection failed' && r.direction === 'outbound' && r['src.workload'] === 'fail'),
    );
    expect(failed.error).toContain(`no certificate for spiffe://cluster.local/ns/ns1/sa/sa-fail within ${CONNECT_TIMEOUT_MS} ms (`);
    expect(failed.error).toMatch(/UNAVAILABLE: istiod CA is unreachable\)/);

    // Inbound HBONE, from a TLS client that would be accepted: no handshake, the connection is closed.
    const peer = await world.ca.ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/ns1/sa/sa-a' });
    const socket = await connectTcp({ netns: world.ns(raw), family: 4, host: fail.ip, port: 15008, timeoutMs: 2000 });
    const t1 = Date.now();
    const outcome = await new Promise<string>((resolve) => {
      const t = tls.connect({ socket, key: peer.keyPem, cert: peer.chainPem, ca: world.ca.ca.rootPem, ALPNProtocols: ['h2'], servername: 'fail', checkServerIdentity: () => undefined });
      t.once('secureConnect', () => resolve('handshake completed'));
      t.once('error', (err) => resolve(`error: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
      t.once('close', () => resolve('closed'));
    });
    expect(outcome).not.toBe('handshake completed');
    expect(Date.now() - t1).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS - 100);
    await waitFor('the inbound refusal logged', async () => log.some((r) => r.msg === 'inbound HBONE connection closed: no certificate for this pod' && r.uid === fail.uid));
    expect(appFail.clients).toEqual([]);
    // The pod stays enrolled, its listeners up: its traffic never goes around the proxy.
    expect(world.state(fail)?.state).toBe('Up');
  });

  it('a Del while the certificate is still failing stops the retries and holds nothing for the pod', async () => {
    await world.zds.removeWorkload(fail.uid);
    expect(world.state(fail)).toBeUndefined();
    const asks = world.ca.asks.get('sa-fail') ?? 0;
    await new Promise((r) => setTimeout(r, 1000));
    expect(world.ca.asks.get('sa-fail') ?? 0).toBe(asks);
    expect(world.certOf('sa-fail')).toBeUndefined();
    const listeners = await podListeners(fail);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `fail:${port}`).toBeUndefined();
  });
});
