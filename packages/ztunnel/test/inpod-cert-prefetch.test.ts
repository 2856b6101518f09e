// Enrollment acks come before certificate prefetches: in a burst of ZDS Adds the pods' certificate
// fetches (key generation, signing or CSR + CA call) wait until the Adds have been quiet for
// prefetchQuietMs (none arrived, none being worked on; at most prefetchMaxDelayMs, 1 s by default),
// so they do not take CPU from the next pods' acks, which the node agent's CNI ADDs wait for. A
// connection that needs a certificate before its prefetch ran starts the fetch itself; a proxy
// stopped before it ran fetches nothing.
// Real pods (topology), in-pod rules, ZDS over a unix seqpacket socket, TLS.
import type { LocalCa } from '@weir/pki';
import type { TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CertificateSource, WorkloadCertificate } from '../src/identity.js';
import { InpodProxy } from '../src/inpod-proxy.js';
import { CertWorld } from './cert-support.js';
import { type EchoApp, podListeners, tryConnect, waitFor, zdsAddPod } from './support.js';

/** The test CA, noting every ask (by service account) in the shared event list, in order. */
class RecordingCa implements CertificateSource {
  /** How many ZDS Adds were being worked on at each ask. */
  readonly addsInFlightAtAsk: number[] = [];
  constructor(
    readonly ca: LocalCa,
    readonly events: string[],
    readonly addsInFlight: () => number,
  ) {}

  asks(sa: string): number {
    return this.events.filter((e) => e === `ca:${sa}`).length;
  }

  /** When each service account was first asked for (Date.now()). */
  readonly askedAt = new Map<string, number>();

  issueWorkloadCertificate(o: { identity: string; ttlSeconds?: number }): Promise<WorkloadCertificate> {
    const sa = o.identity.slice(o.identity.lastIndexOf('/') + 1);
    this.events.push(`ca:${sa}`);
    if (!this.askedAt.has(sa)) this.askedAt.set(sa, Date.now());
    this.addsInFlightAtAsk.push(this.addsInFlight());
    return this.ca.issueWorkloadCertificate(o);
  }
}

const QUIET_MS = 2500;

describe('certificate prefetches wait for the ZDS acks (real pods, ZDS, TLS)', () => {
  const events: string[] = [];
  let addsInFlight = 0;
  /** When each Add's answer was given (the ack goes out in the microtasks right after). */
  const ackedAt = new Map<string, number>();
  const world = new CertWorld({
    tag: 'f',
    pods: { p1: 'sa-p1', p2: 'sa-p2', p3: 'sa-p3', p4: 'sa-p4', p5: 'sa-p5', early: 'sa-early', stopped: 'sa-stopped', s1: 'sa-s1', s2: 'sa-s2', s3: 'sa-s3', s4: 'sa-s4' },
    ca: (local) => new RecordingCa(local, events, () => addsInFlight),
    log: false,
    // Far beyond how long a burst of Adds takes even on a loaded machine: a prefetch runs because the
    // Adds went quiet, never because this deadline passed. The quiet window is far longer than the
    // gaps between the Adds the tests send one after another.
    manager: { prefetchMaxDelayMs: 10_000, prefetchQuietMs: QUIET_MS },
    // The manager, noting when it answered each Add and how many were being worked on.
    handler: (m) => ({
      onConnected: () => m.onConnected(),
      onDisconnected: (err) => m.onDisconnected(err),
      onAdd: (ev) => {
        addsInFlight++;
        return m.onAdd(ev).then(
          () => {
            addsInFlight--;
            events.push(`ack:${ev.uid}`);
            ackedAt.set(ev.uid, Date.now());
          },
          (err: unknown) => {
            addsInFlight--;
            throw err;
          },
        );
      },
      onKeep: (uid) => m.onKeep(uid),
      onDel: (uid) => m.onDel(uid),
      onSnapshotSent: () => m.onSnapshotSent(),
    }),
  });
  let burst: TopologyPod[];
  let early: TopologyPod, stopped: TopologyPod;
  let appEarly: EchoApp;
  const proxies: InpodProxy[] = [];

  /** A pod proxy outside the manager whose prefetch runs only when the test says. */
  const heldProxy = (pod: TopologyPod, sa: string): { proxy: InpodProxy; held: (() => void)[] } => {
    const held: (() => void)[] = [];
    const proxy = new InpodProxy({
      ...world.proxy,
      uid: pod.uid,
      workloadInfo: { name: pod.name, namespace: pod.namespace, serviceAccount: sa },
      netns: world.ns(pod),
      connectTimeoutMs: 5000,
      metrics: world.metrics,
      logger: world.logger,
      prefetch: (fetch) => held.push(fetch),
    });
    proxies.push(proxy);
    return { proxy, held };
  };

  beforeAll(async () => {
    await world.start();
    const { p1, p2, p3, p4, p5 } = world.pods;
    burst = [p1, p2, p3, p4, p5];
    ({ early, stopped } = world.pods);
    appEarly = await world.echo(early, 8080);
    await world.echo(p2, 8080);
  }, 180_000);

  afterAll(async () => {
    for (const p of proxies) await p.stop({ deadlineMs: 0 });
    await world.close();
  }, 60_000);

  it('pipelined Adds: no CA request while an Add is worked on, and the certificates follow once the Adds are answered', async () => {
    const added = Promise.all(burst.map((pod) => zdsAddPod(world.zds, pod, `sa-${pod.name}`)));
    await added;
    expect(world.m.pods().filter((p) => p.state === 'Up')).toHaveLength(burst.length);
    const acks = burst.map((pod) => events.indexOf(`ack:${pod.uid}`));
    expect(acks.every((i) => i >= 0)).toBe(true);
    const lastAck = Math.max(...burst.map((pod) => ackedAt.get(pod.uid)!));
    await waitFor('every burst pod certified', async () => burst.every((pod) => world.certOf(`sa-${pod.name}`)?.state === 'Available'), 8000);
    // Well before the 10 s deadline: the fetches ran because the Adds went quiet.
    expect(Date.now() - lastAck).toBeLessThan(8000);
    // Each pod's certificate is asked for only after its Add was answered, and never while another was worked on.
    for (const pod of burst) expect(events.indexOf(`ca:sa-${pod.name}`), events.join(' ')).toBeGreaterThan(events.indexOf(`ack:${pod.uid}`));
    expect(world.ca.addsInFlightAtAsk, events.join(' ')).toEqual(burst.map(() => 0));
    for (const pod of burst) expect(world.ca.asks(`sa-${pod.name}`), pod.name).toBe(1);
    // And they work: p1 → p2 over mTLS.
    expect(await tryConnect(world.ns(burst[0]!), burst[1]!.ip, 8080, 10_000)).toBe('ok');
  });

  it('Adds one after another (none in flight between them): no CA request until they have been quiet for prefetchQuietMs', async () => {
    const { s1, s2, s3, s4 } = world.pods;
    const seq = [s1, s2, s3, s4];
    const before = events.length;
    let lastSent = 0;
    for (const pod of seq) {
      // Each Add answered before the next is sent, 100 ms apart: a gap in the burst, not its end.
      if (lastSent > 0) await new Promise((r) => setTimeout(r, 100));
      lastSent = Date.now();
      await zdsAddPod(world.zds, pod, `sa-${pod.name}`);
    }
    await waitFor('every pod of the sequence certified', async () => seq.every((pod) => world.certOf(`sa-${pod.name}`)?.state === 'Available'), QUIET_MS + 8000);
    const mine = events.slice(before);
    const lastAck = mine.indexOf(`ack:${s4.uid}`);
    for (const pod of seq) expect(mine.indexOf(`ca:sa-${pod.name}`), mine.join(' ')).toBeGreaterThan(lastAck);
    // Not before the window after the last Add (it arrived after lastSent; timers may run a ms early).
    const firstAsk = Math.min(...seq.map((pod) => world.ca.askedAt.get(`sa-${pod.name}`)!));
    expect(firstAsk - lastSent).toBeGreaterThanOrEqual(QUIET_MS - 5);
  });

  it('a connection that comes before the prefetch ran starts the fetch at once and is served', async () => {
    const { proxy, held } = heldProxy(early, 'sa-early');
    await proxy.start();
    expect(held).toHaveLength(1);
    expect(world.ca.asks('sa-early')).toBe(0);
    // p1 → early: p1's tunnel reaches early's 15008, whose handshake needs early's certificate.
    const t0 = Date.now();
    expect(await tryConnect(world.ns(burst[0]!), early.ip, 8080, 10_000)).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(world.ca.asks('sa-early')).toBe(1);
    expect(appEarly.clients).toContain(burst[0]!.ip);
    // The scheduler runs the prefetch late: nothing more is asked.
    held[0]!();
    await new Promise((r) => setTimeout(r, 200));
    expect(world.ca.asks('sa-early')).toBe(1);
    expect(world.certOf('sa-early')?.state).toBe('Available');
  });

  it('a proxy stopped before its prefetch ran asks the CA for nothing and holds nothing', async () => {
    const { proxy, held } = heldProxy(stopped, 'sa-stopped');
    await proxy.start();
    expect(held).toHaveLength(1);
    await proxy.stop({ deadlineMs: 0 });
    held[0]!();
    await new Promise((r) => setTimeout(r, 300));
    expect(world.ca.asks('sa-stopped')).toBe(0);
    expect(world.certOf('sa-stopped')).toBeUndefined();
    const listeners = await podListeners(stopped);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `stopped:${port}`).toBeUndefined();
  });

  it('a Del pipelined behind the Adds: the removed pod is never asked for, the others are', async () => {
    const [p3, p4] = [burst[2]!, burst[3]!];
    await Promise.all([world.zds.removeWorkload(p3.uid), world.zds.removeWorkload(p4.uid)]);
    await waitFor('p3, p4 certificates released', async () => world.certOf('sa-p3') === undefined && world.certOf('sa-p4') === undefined);
    const before = events.length;
    // Added again and removed at once: the Del reaches ztunnel while (or right after) the Add is worked on.
    const added = zdsAddPod(world.zds, p3, 'sa-p3').then(
      () => 'acked',
      () => 'nacked',
    );
    const readded = zdsAddPod(world.zds, p4, 'sa-p4');
    const removed = world.zds.removeWorkload(p3.uid);
    await Promise.all([added, readded, removed]);
    await waitFor('p4 certified again', async () => world.certOf('sa-p4')?.state === 'Available', 10_000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(events.slice(before).filter((e) => e.startsWith('ca:'))).toEqual(['ca:sa-p4']);
    expect(world.certOf('sa-p3')).toBeUndefined();
    expect(world.m.pods().find((p) => p.uid === p3.uid)).toBeUndefined();
    const listeners = await podListeners(p3);
    for (const port of [15001, 15006, 15008]) expect(listeners.get(port), `p3:${port}`).toBeUndefined();
  });
});
