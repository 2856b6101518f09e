import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HboneClient, createHboneServer, type HboneServer, type HboneTunnel } from '../src/index.js';
import { FrameType, encodeHeaders, encodeSettings, encodeWindowUpdate } from '../src/h2/frames.js';
import { RawPeer } from './h2-peer.js';
import { SERVER_ID, type Pki, type TcpServer, dial, echoServer, makePki, roundTrip, tcpServer, tlsOf } from './helpers.js';

let pki: Pki;
let echo: TcpServer;
let server: HboneServer;
let port: number;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  server = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
  port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await server.close({ deadlineMs: 500 });
  await echo.close();
});

const target = (): { host: string; port: number } => ({ host: '127.0.0.1', port: echo.port });

function client(extra: Partial<ConstructorParameters<typeof HboneClient>[0]> = {}): HboneClient {
  const c = new HboneClient({ tls: tlsOf(pki.client), ...extra });
  cleanups.push(() => c.close({ deadlineMs: 200 }));
  return c;
}

/** A TCP relay we can freeze, to play a peer that stops answering (e.g. a dead node). */
async function freezableRelay(to: number): Promise<{ port: number; freeze(): void }> {
  let frozen = false;
  const pairs: net.Socket[][] = [];
  const relay = await tcpServer((a) => {
    const b = net.connect(to, '127.0.0.1');
    b.on('error', () => a.destroy());
    a.on('data', (d) => !frozen && b.write(d));
    b.on('data', (d) => !frozen && a.write(d));
    pairs.push([a, b]);
  });
  cleanups.push(async () => {
    for (const p of pairs) for (const s of p) s.destroy();
    await relay.close();
  });
  return { port: relay.port, freeze: () => (frozen = true) };
}

describe('HboneClient session pool', () => {
  it('makes its TCP connections with the injected socket factory', async () => {
    const made: string[] = [];
    const c = client({
      socketFactory: (p) =>
        new Promise((resolve, reject) => {
          made.push(`${p.host}:${p.port}`);
          const s = net.connect(p.port, p.host, () => resolve(s));
          s.once('error', reject);
        }),
    });
    const t = await c.connect({ peer: { host: '127.0.0.1', port }, target: target(), expectedIdentities: [SERVER_ID] });
    expect((await roundTrip(t, Buffer.from('via factory'))).toString()).toBe('via factory');
    expect(made).toEqual([`127.0.0.1:${port}`]);
    const failing = client({ socketFactory: () => Promise.reject(new Error('netns gone')) });
    await expect(failing.connect({ peer: { host: '127.0.0.1', port }, target: target(), expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({
      code: 'ERR_HBONE_CONNECT',
      message: expect.stringContaining('netns gone'),
    });
  });

  it('closes idle sessions after idleTimeoutMs', async () => {
    // 2 s: a starved loop must not let the session go idle-closed before the check that it is still there.
    const c = client({ idleTimeoutMs: 2000 });
    const t = await c.connect({ peer: { host: '127.0.0.1', port }, target: target(), expectedIdentities: [SERVER_ID] });
    await roundTrip(t, Buffer.from('x'));
    await waitFor(() => c.stats().streams === 0);
    expect(c.stats().sessions).toBe(1);
    await waitFor(() => c.stats().sessions === 0, 10_000);
  });

  it('counts idleness from the last tunnel: a timer firing while a tunnel is open, or a reuse, keeps the session', async () => {
    const c = client({ idleTimeoutMs: 400 });
    const open = (): Promise<HboneTunnel> => c.connect({ peer: { host: '127.0.0.1', port }, target: target(), expectedIdentities: [SERVER_ID] });
    const sleep = (ms: number): Promise<unknown> => new Promise((r) => setTimeout(r, ms));
    await roundTrip(await open(), Buffer.from('a'));
    await waitFor(() => c.stats().streams === 0);
    await sleep(250);
    // Busy across the first idle deadline.
    const t = await open();
    await sleep(400);
    expect(c.stats()).toEqual({ sessions: 1, streams: 1 });
    // Idle from the tunnel's close (when the client arms its timer), not from a poll that a loaded
    // machine may run late: the session goes no sooner than 400 ms after it (timers never fire early).
    const idleSince = new Promise<number>((r) => t.once('close', () => r(Date.now())));
    await roundTrip(t, Buffer.from('b'));
    await waitFor(() => c.stats().sessions === 0, 10_000);
    expect(Date.now() - (await idleSince)).toBeGreaterThanOrEqual(390);
  });

  it('keeps a healthy session with PINGs and drops one whose peer stops answering', async () => {
    const relay = await freezableRelay(port);
    // A 2.5 s PING timeout: a loop starved for a second must not look like a silent peer.
    const c = client({ pingIntervalMs: 100, pingTimeoutMs: 2500 });
    const t = await c.connect({ peer: { host: '127.0.0.1', port: relay.port }, target: target(), expectedIdentities: [SERVER_ID] });
    // Several PING round trips happen here; the session must survive them.
    await new Promise((r) => setTimeout(r, 1500));
    expect(c.stats().sessions).toBe(1);
    const closed = new Promise<void>((r) => t.once('close', () => r()));
    relay.freeze();
    await closed;
    await waitFor(() => c.stats().sessions === 0, 10_000);
  });

  it('times out a peer that accepts TCP but never answers, naming the likely NetworkPolicy', async () => {
    const silent = await tcpServer(() => {});
    cleanups.push(() => silent.close());
    const c = client({ connectTimeoutMs: 300 });
    await expect(c.connect({ peer: { host: '127.0.0.1', port: silent.port }, target: target(), expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({
      code: 'ERR_HBONE_TIMEOUT',
      message: expect.stringContaining('NetworkPolicy'),
    });
    expect(c.stats().sessions).toBe(0);
  });

  it('closes a connection its socket factory makes after connectTimeoutMs (nobody would own it)', async () => {
    const silent = await tcpServer(() => {});
    cleanups.push(() => silent.close());
    let late: net.Socket | undefined;
    const c = client({
      connectTimeoutMs: 100,
      socketFactory: async (p) => {
        await new Promise((r) => setTimeout(r, 300));
        const s = net.connect(p.port, p.host);
        await new Promise((r) => s.once('connect', r));
        late = s;
        return s;
      },
    });
    await expect(c.connect({ peer: { host: '127.0.0.1', port: silent.port }, target: target(), expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({ code: 'ERR_HBONE_TIMEOUT' });
    await new Promise((r) => setTimeout(r, 400));
    expect(late).toBeDefined();
    expect(late?.destroyed).toBe(true);
  });

  it('opens a new session for a tunnel asked for right after its session failed (before the failed socket closed)', async () => {
    // A hand-driven server: on the first connection, a WINDOW_UPDATE on a stream never opened after the
    // 200 — a connection error: our session sends GOAWAY and ends, its socket closes up to 1 s later.
    let connections = 0;
    const raw = tls.createServer({ key: pki.server.keyPem, cert: pki.server.chainPem, ca: pki.ca.rootPem, requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'] }, (s) => {
      const n = ++connections;
      const peer = new RawPeer(s, { expectPreface: true, ackSettings: true, answerPings: true });
      s.write(encodeSettings({}));
      void peer.next((f) => f.type === FrameType.HEADERS).then((f) => {
        s.write(encodeHeaders(f.streamId, peer.encoder.encode([':status', '200']), false));
        if (n === 1) setTimeout(() => s.write(encodeWindowUpdate(99, 1)), 50);
      });
    });
    await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => raw.close(() => r())));
    const c = client();
    const o = { peer: { host: '127.0.0.1', port: (raw.address() as net.AddressInfo).port }, target: target(), expectedIdentities: [SERVER_ID] };
    const first = await c.connect(o);
    first.on('error', () => {});
    await new Promise((r) => first.once('close', r));
    const second = await c.connect(o);
    second.destroy();
    expect(connections).toBe(2);
  });

  it('refuses new tunnels once closed, including callers that were waiting for a session', async () => {
    const c = new HboneClient({ tls: tlsOf(pki.client) });
    const waiting = c.connect({ peer: { host: '127.0.0.1', port }, target: target(), expectedIdentities: [SERVER_ID] });
    const closing = c.close({ deadlineMs: 200 });
    const outcome = await waiting.then(
      (t) => {
        t.destroy();
        return 'connected';
      },
      (e: unknown) => e,
    );
    await closing;
    expect(outcome === 'connected' || (outcome as { code?: string }).code === 'ERR_HBONE_CLOSED').toBe(true);
    await expect(c.connect({ peer: { host: '127.0.0.1', port }, target: target(), expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({
      code: 'ERR_HBONE_CLOSED',
    });
    expect(c.stats().sessions).toBe(0);
  });

  it('sends no SNI and never resumes a TLS session', async () => {
    const seen: { servername: string | false | null; reused: boolean }[] = [];
    const h2 = http2.createSecureServer({ key: pki.server.keyPem, cert: pki.server.chainPem, ca: pki.ca.rootPem, requestCert: true, rejectUnauthorized: true });
    h2.on('secureConnection', (s: tls.TLSSocket) => seen.push({ servername: s.servername, reused: s.isSessionReused() }));
    h2.on('stream', (stream) => stream.respond({ ':status': 200 }));
    await new Promise<void>((r) => h2.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => h2.close(() => r())));
    const p = (h2.address() as net.AddressInfo).port;
    for (let i = 0; i < 2; i++) {
      const c = new HboneClient({ tls: tlsOf(pki.client) });
      const t = await c.connect({ peer: { host: '127.0.0.1', port: p }, target: target(), expectedIdentities: [SERVER_ID] });
      t.destroy();
      await c.close({ deadlineMs: 100 });
    }
    expect(seen).toEqual([
      { servername: false, reused: false },
      { servername: false, reused: false },
    ]);
  });

  it('applies backpressure when the application does not read the tunnel', async () => {
    let written = 0;
    const firehose = await tcpServer((s) => {
      const chunk = Buffer.alloc(64 * 1024, 1);
      const pump = (): void => {
        while (!s.destroyed && written < 1024 * 1024 * 1024) {
          written += chunk.length;
          if (!s.write(chunk)) {
            s.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    cleanups.push(() => firehose.close());
    const c = client();
    const t = await c.connect({ peer: { host: '127.0.0.1', port }, target: { host: '127.0.0.1', port: firehose.port }, expectedIdentities: [SERVER_ID] });
    let last = -1;
    for (let i = 0; i < 40 && written !== last; i++) {
      last = written;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(written).toBe(last);
    // Stream window (4 MiB) plus bounded buffers on each hop and the kernel's socket buffers.
    expect(written).toBeLessThan(48 * 1024 * 1024);
    // Reading again resumes the flow.
    let got = 0;
    t.on('data', (d: Buffer) => (got += d.length));
    await waitFor(() => got > last);
    t.destroy();
  });
});

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
