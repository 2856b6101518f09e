// DnsProxy.stop() while its own start() is still binding: the stop wins, start() fails with
// ERR_ZTUNNEL_PROXY_STOPPED, and nothing stays bound on the pod's 15053 (a leftover would keep
// answering the pod's captured DNS after its proxy is gone, and block the next one's bind).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsProxy } from '../src/dns/dns-proxy.js';
import type { UdpSocketFactory } from '../src/dns/udp-socket.js';
import { ZtunnelError } from '../src/errors.js';
import { parseLocalConfig } from '../src/local-config.js';
import { WorkloadStore } from '../src/workload-store.js';
import { PEER_IP, PodPair, podUdpSockets, requireDnsTools } from './support-dns.js';

const PORT = 15053;

describe('DNS proxy stopped while it is starting, in a pod netns', () => {
  let pair: PodPair;
  const store = new WorkloadStore({ config: parseLocalConfig('workloads: []\n') });
  const started: DnsProxy[] = [];

  const proxy = (o: { reusePort?: boolean; udpSockets?: UdpSocketFactory } = {}): DnsProxy => {
    const p = new DnsProxy({ netns: pair.netns, mark: 0x539, store, udpSockets: podUdpSockets(pair.netns), upstreams: [{ address: PEER_IP, port: 53 }], ...o });
    started.push(p);
    return p;
  };

  /** Every UDP and TCP socket listening on 15053 in the pod netns, as `ss` lists them. */
  const bound = async (): Promise<string[]> => {
    const out: string[] = [];
    for (const proto of ['-Hlnu', '-Hlnt']) {
      const r = await pair.exec('ss', [proto]);
      if (r.code !== 0) throw new Error(`ss ${proto} in netns ${pair.pod} failed: ${r.stderr}`);
      out.push(...r.stdout.split('\n').filter((l) => new RegExp(`:${PORT}\\s`).test(l)));
    }
    return out;
  };

  beforeAll(async () => {
    requireDnsTools();
    pair = await PodPair.create('sr');
  }, 60_000);

  afterAll(async () => {
    for (const p of started) await p.stop();
    await pair?.destroy();
  });

  it('stop() right after start(): start() rejects with ERR_ZTUNNEL_PROXY_STOPPED and nothing is left on 15053', async () => {
    const p = proxy();
    const starting = p.start();
    await p.stop();
    // Once stop() has resolved, not only once start() has given up.
    expect(await bound()).toEqual([]);
    const err = await starting.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ZtunnelError);
    expect(err).toMatchObject({ code: 'ERR_ZTUNNEL_PROXY_STOPPED' });
    expect(p.listeners).toEqual([]);
    expect(await bound()).toEqual([]);
    // The port is free: a proxy that will not share it (no SO_REUSEPORT) binds it.
    const next = proxy({ reusePort: false });
    await next.start();
    expect(next.listeners.sort()).toEqual(['tcp 127.0.0.1:15053', 'tcp [::1]:15053', 'udp 127.0.0.1:15053', 'udp [::1]:15053']);
    await next.stop();
    expect(await bound()).toEqual([]);
  });

  it('stop() at any point of the binding: start() either finished first or rejects as stopped, and nothing is left', async () => {
    const outcomes = new Set<string>();
    // One more tick before stop() each round (the UDP bind, the TCP listen, 127.0.0.1 then ::1)
    // until start() gets to finish first.
    for (let turns = 0; !outcomes.has('started'); turns++) {
      if (turns > 200) throw new Error(`start() never finished before a stop() ${turns} event-loop turns later`);
      const p = proxy();
      const starting = p.start().then(
        () => 'started',
        (e: unknown) => (e instanceof ZtunnelError ? e.code : String(e)),
      );
      for (let i = 0; i < turns; i++) await new Promise((r) => process.nextTick(r));
      await p.stop();
      expect(await bound(), `stop after ${turns} turns`).toEqual([]);
      const outcome = await starting;
      expect(['started', 'ERR_ZTUNNEL_PROXY_STOPPED'], `stop after ${turns} turns`).toContain(outcome);
      outcomes.add(outcome);
      expect(p.listeners).toEqual([]);
    }
    // Stops during the binding came first.
    expect(outcomes.has('ERR_ZTUNNEL_PROXY_STOPPED')).toBe(true);
  });

  it('stop() while the UDP socket of 127.0.0.1, then of ::1, is bound but its TCP listener is not yet: nothing is left', async () => {
    for (const n of [1, 2]) {
      const real = podUdpSockets(pair.netns);
      let calls = 0;
      let stopping: Promise<void> | undefined;
      const p: DnsProxy = proxy({
        udpSockets: async (spec) => {
          const socket = await real(spec);
          if (++calls === n) stopping = p.stop();
          return socket;
        },
      });
      await expect(p.start(), `stop in UDP bind #${n}`).rejects.toMatchObject({ code: 'ERR_ZTUNNEL_PROXY_STOPPED' });
      await stopping;
      // Nothing more was bound after the stop, and what was is closed.
      expect(calls).toBe(n);
      expect(await bound(), `stop in UDP bind #${n}`).toEqual([]);
    }
  });

  it('start() after stop() rejects as stopped and binds nothing', async () => {
    const p = proxy();
    await p.stop();
    await expect(p.start()).rejects.toMatchObject({ code: 'ERR_ZTUNNEL_PROXY_STOPPED' });
    expect(await bound()).toEqual([]);
  });
});
