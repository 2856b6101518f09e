import * as http2 from 'node:http2';
import type * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HboneClient, HboneError, bridge, createHboneServer, type HboneServer, type HboneRequestHeaders, type HbonePeer, type HboneTunnelClosed } from '../src/index.js';
import { CLIENT_ID, SERVER_ID, type Pki, type TcpServer, dial, echoServer, makePki, random, roundTrip, sha256, tcpServer, tlsOf } from './helpers.js';

let pki: Pki;
let echo: TcpServer;
let server: HboneServer;
let port: number;
const seen: { peer: HbonePeer; headers: HboneRequestHeaders }[] = [];
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  server = createHboneServer({
    tls: tlsOf(pki.server),
    authorize: (peer, target, headers) => {
      seen.push({ peer, headers });
      return headers.raw['x-deny'] === undefined && target.port !== 9;
    },
    connect: (target) => dial(target.port, target.host),
  });
  port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await server.close({ deadlineMs: 500 });
  await echo.close();
});

function client(extra: Partial<ConstructorParameters<typeof HboneClient>[0]> = {}): HboneClient {
  const c = new HboneClient({ tls: tlsOf(pki.client), ...extra });
  cleanups.push(() => c.close({ deadlineMs: 200 }));
  return c;
}

const peer = (): { host: string; port: number } => ({ host: '127.0.0.1', port });

describe('HBONE client ↔ server over loopback', () => {
  it('carries data both ways through a tunnel and propagates the half-close', async () => {
    const c = client();
    const t = await c.connect({ peer: peer(), target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] });
    const data = random(3 * 1024 * 1024 + 17);
    const back = await roundTrip(t, data);
    expect(sha256(back)).toBe(sha256(data));
    const last = seen.at(-1)!;
    expect(last.peer.identity?.toString()).toBe(CLIENT_ID);
    expect(last.peer.remoteAddress).toBe('127.0.0.1');
  });

  it('answers an admitted CONNECT with :status 200 only, as ztunnel does (no date header)', async () => {
    const session = http2.connect(`https://127.0.0.1:${port}`, { key: pki.client.keyPem, cert: pki.client.chainPem, ca: pki.ca.rootPem, checkServerIdentity: () => undefined });
    try {
      const req = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` }, { endStream: false });
      const headers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
        req.once('response', resolve);
        req.once('error', reject);
      });
      expect(Object.keys(headers)).toEqual([':status']);
      expect(headers[':status']).toBe(200);
      expect((await roundTrip(req, Buffer.from('raw'))).toString()).toBe('raw');
    } finally {
      session.destroy();
    }
  });

  it('keeps half-closes with upstream sockets made with default options (allowHalfOpen false)', async () => {
    const { connect } = await import('node:net');
    const s = createHboneServer({
      tls: tlsOf(pki.server),
      connect: (t) => new Promise((ok, fail) => {
        const up = connect(t.port, t.host, () => ok(up));
        up.once('error', fail);
      }),
    });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    cleanups.push(() => s.close({ deadlineMs: 200 }));
    // The app says goodbye and half-closes first, then still receives everything we send.
    let received: Promise<Buffer> | undefined;
    const app = await tcpServer((sock) => {
      const chunks: Buffer[] = [];
      received = new Promise((r) => sock.on('end', () => r(Buffer.concat(chunks))));
      sock.on('data', (d: Buffer) => chunks.push(d));
      sock.end('bye');
    });
    cleanups.push(() => app.close());
    const c = client();
    const t = await c.connect({ peer: { host: '127.0.0.1', port: p }, target: { host: '127.0.0.1', port: app.port }, expectedIdentities: [SERVER_ID] });
    const hello: Buffer[] = [];
    t.on('data', (d: Buffer) => hello.push(d));
    await new Promise<void>((r) => t.once('end', () => r()));
    expect(Buffer.concat(hello).toString()).toBe('bye');
    await new Promise((r) => setTimeout(r, 100));
    const data = random(300_000);
    t.end(data);
    expect(sha256(await received!)).toBe(sha256(data));
  });

  it('passes baggage, forwarded and traceparent to authorize, parsed', async () => {
    const c = client();
    const t = await c.connect({
      peer: peer(),
      target: { host: '127.0.0.1', port: echo.port },
      expectedIdentities: [SERVER_ID],
      headers: {
        baggage: 'k8s.cluster.name=Kubernetes,k8s.namespace.name=client-ns,service.name=web%20app',
        forwarded: 'for="10.0.0.1:4321";proto=http',
        traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      },
    });
    t.destroy();
    const h = seen.at(-1)!.headers;
    expect(h.baggage).toMatchObject({ 'k8s.namespace.name': 'client-ns', 'service.name': 'web app' });
    expect(h.forwarded).toEqual([{ for: '10.0.0.1:4321', proto: 'http' }]);
    expect(h.traceparent).toEqual({ version: '00', traceId: '0af7651916cd43dd8448eb211c80319c', parentId: 'b7ad6b7169203331', flags: '01' });
  });

  it('reports a finished tunnel to onTunnelClosed with its bytes, peer, target and headers', async () => {
    const closed: HboneTunnelClosed[] = [];
    const s = createHboneServer({ tls: tlsOf(pki.server), connect: (target) => dial(target.port, target.host), onTunnelClosed: (ev) => closed.push(ev) });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    cleanups.push(() => s.close({ deadlineMs: 200 }));
    const c = client();
    const t = await c.connect({
      peer: { host: '127.0.0.1', port: p },
      target: { host: '127.0.0.1', port: echo.port },
      expectedIdentities: [SERVER_ID],
      headers: { baggage: 'service.name=web', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
    });
    const data = random(100_000);
    expect(sha256(await roundTrip(t, data))).toBe(sha256(data));
    const until = Date.now() + 5000;
    while (closed.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    expect(closed).toHaveLength(1);
    const ev = closed[0]!;
    expect(ev).toMatchObject({ tunnelToSocket: data.length, socketToTunnel: data.length, reset: false, target: { host: '127.0.0.1', port: echo.port } });
    expect(ev.peer.identity?.toString()).toBe(CLIENT_ID);
    expect(ev.headers.raw[':authority']).toBe(`127.0.0.1:${echo.port}`);
    expect(ev.headers.baggage).toEqual({ 'service.name': 'web' });
    expect(ev.headers.forwarded).toBeUndefined();
    expect(ev.durationMs).toBeGreaterThan(0);
    // Parsed lazily, but a logger serialising the headers still sees the parsed fields.
    expect(JSON.parse(JSON.stringify(ev.headers))).toMatchObject({ baggage: { 'service.name': 'web' }, traceparent: { traceId: '0af7651916cd43dd8448eb211c80319c' } });
    expect(s.stats().tunnels).toBe(0);
  });

  it('rejects with ERR_HBONE_STATUS 401 on deny and 503 when the upstream is down', async () => {
    const c = client();
    await expect(
      c.connect({ peer: peer(), target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID], headers: { 'x-deny': '1' } }),
    ).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 401 });
    const dead = await tcpServer(() => {});
    const deadPort = dead.port;
    await dead.close();
    await expect(c.connect({ peer: peer(), target: { host: '127.0.0.1', port: deadPort }, expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({
      code: 'ERR_HBONE_STATUS',
      status: 503,
    });
    // The session survives refusals.
    const t = await c.connect({ peer: peer(), target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] });
    expect(sha256(await roundTrip(t, Buffer.from('still ok')))).toBe(sha256(Buffer.from('still ok')));
    expect(c.stats().sessions).toBe(1);
  });

  it('refuses a server whose identity is not expected, with ERR_HBONE_IDENTITY_MISMATCH', async () => {
    const c = client();
    const err = await c
      .connect({ peer: peer(), target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: ['spiffe://cluster.local/ns/other/sa/x'] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    expect(err).toMatchObject({ code: 'ERR_HBONE_IDENTITY_MISMATCH' });
    expect((err as Error).message).toContain(SERVER_ID);
  });

  it('pools: 4 tunnels share one session; maxStreamsPerSession 2 opens a second', async () => {
    const c = client();
    const target = { host: '127.0.0.1', port: echo.port };
    const ts = await Promise.all([1, 2, 3, 4].map(() => c.connect({ peer: peer(), target, expectedIdentities: [SERVER_ID] })));
    expect(c.stats()).toEqual({ sessions: 1, streams: 4 });
    const outs = await Promise.all(ts.map((t, i) => roundTrip(t, Buffer.alloc(100_000 + i, i))));
    outs.forEach((o, i) => expect(o.equals(Buffer.alloc(100_000 + i, i))).toBe(true));
    const c2 = client({ maxStreamsPerSession: 2 });
    const ts2 = await Promise.all([1, 2, 3, 4, 5].map(() => c2.connect({ peer: peer(), target, expectedIdentities: [SERVER_ID] })));
    expect(c2.stats()).toEqual({ sessions: 3, streams: 5 });
    for (const t of ts2) t.destroy();
  });

  it('caps streams per session by the peer SETTINGS_MAX_CONCURRENT_STREAMS', async () => {
    const s = createHboneServer({ tls: tlsOf(pki.server), maxConcurrentStreams: 3, connect: (t) => dial(t.port, t.host) });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    cleanups.push(() => s.close({ deadlineMs: 200 }));
    const c = client();
    const first = await c.connect({ peer: { host: '127.0.0.1', port: p }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] });
    const more = await Promise.all(
      [1, 2, 3, 4, 5].map(() => c.connect({ peer: { host: '127.0.0.1', port: p }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] })),
    );
    expect(c.stats()).toEqual({ sessions: 2, streams: 6 });
    for (const t of [first, ...more]) t.destroy();
  });

  it('propagates an upstream TCP reset as RST_STREAM and a client stream reset as TCP reset', async () => {
    let upstreamSocket: net.Socket | undefined;
    const resetter = await tcpServer((s) => (upstreamSocket = s));
    cleanups.push(() => resetter.close());
    const c = client();
    const t = await c.connect({ peer: peer(), target: { host: '127.0.0.1', port: resetter.port }, expectedIdentities: [SERVER_ID] });
    await waitFor(() => upstreamSocket !== undefined);
    const closed = new Promise<number>((r) => t.once('close', () => r(t.rstCode!)));
    upstreamSocket!.resetAndDestroy();
    expect(await closed).toBe(http2.constants.NGHTTP2_CONNECT_ERROR);

    upstreamSocket = undefined;
    const t2 = await c.connect({ peer: peer(), target: { host: '127.0.0.1', port: resetter.port }, expectedIdentities: [SERVER_ID] });
    await waitFor(() => upstreamSocket !== undefined);
    const up = upstreamSocket!;
    const upErr = new Promise<string>((r) => {
      up.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
      up.once('close', () => r('closed'));
    });
    t2.close(http2.constants.NGHTTP2_CONNECT_ERROR);
    expect(await upErr).toBe('ECONNRESET');
  });

  it('retires a session on GOAWAY and opens new tunnels on a new session without failing', async () => {
    const { createServer } = await import('node:net');
    let current = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
    const front = createServer((s) => current.handleConnection(s));
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    const fp = (front.address() as net.AddressInfo).port;
    const c = client();
    const target = { host: '127.0.0.1', port: echo.port };
    const old = await c.connect({ peer: { host: '127.0.0.1', port: fp }, target, expectedIdentities: [SERVER_ID] });
    const oldServer = current;
    current = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
    const closing = oldServer.close({ deadlineMs: 5000 });
    await new Promise((r) => setTimeout(r, 100));
    const fresh = await c.connect({ peer: { host: '127.0.0.1', port: fp }, target, expectedIdentities: [SERVER_ID] });
    expect(sha256(await roundTrip(fresh, Buffer.from('new')))).toBe(sha256(Buffer.from('new')));
    // The old tunnel still finishes its work on the draining session.
    expect((await roundTrip(old, Buffer.from('old'))).toString()).toBe('old');
    await closing;
    await current.close({ deadlineMs: 200 });
    await new Promise<void>((r) => front.close(() => r()));
  });

  it('retries a CONNECT the peer refused with RST_STREAM(REFUSED_STREAM), once, and then reports it', async () => {
    const tls = tlsOf(pki.server);
    let streams = 0;
    let refuse = 1;
    const raw = http2.createSecureServer({ key: tls.key, cert: tls.cert, ca: tls.ca, requestCert: true, ALPNProtocols: ['h2'] });
    raw.on('stream', (stream) => {
      streams++;
      stream.on('error', () => {});
      if (refuse-- > 0) return stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      stream.respond({ ':status': 200 });
      stream.on('data', (d: Buffer) => stream.write(d));
      stream.on('end', () => stream.end());
    });
    await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => raw.close(() => r())));
    const rp = (raw.address() as net.AddressInfo).port;
    const c = client();
    const o = { peer: { host: '127.0.0.1', port: rp }, target: { host: '127.0.0.1', port: 80 }, expectedIdentities: [SERVER_ID] };
    const t = await c.connect(o);
    expect(streams).toBe(2);
    expect((await roundTrip(t, Buffer.from('again'))).toString()).toBe('again');
    // Refused on every attempt: the third refusal is the caller's error.
    refuse = 3;
    streams = 0;
    await expect(c.connect(o)).rejects.toMatchObject({ code: 'ERR_HBONE_SESSION', message: expect.stringContaining('before answering') });
    expect(streams).toBe(3);
  });

  it('graceful close lets open tunnels finish within the deadline, then resets the rest', async () => {
    const s = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    const c = client();
    const target = { host: '127.0.0.1', port: echo.port };
    const t = await c.connect({ peer: { host: '127.0.0.1', port: p }, target, expectedIdentities: [SERVER_ID] });
    const t2 = await c.connect({ peer: { host: '127.0.0.1', port: p }, target, expectedIdentities: [SERVER_ID] });
    // Timed from close(): the idle t2 is kept until the 1.5 s deadline however long the round trip
    // below takes on a loaded machine (timers never fire early).
    const started = Date.now();
    const closing = s.close({ deadlineMs: 1500 });
    const t2closed = new Promise<void>((r) => t2.once('close', () => r()));
    expect((await roundTrip(t, Buffer.from('finishing'))).toString()).toBe('finishing');
    await closing;
    await t2closed;
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    await expect(c.connect({ peer: { host: '127.0.0.1', port: p }, target, expectedIdentities: [SERVER_ID] })).rejects.toBeInstanceOf(HboneError);
  });

  it('rotates the server certificate without dropping tunnels', async () => {
    const s = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    cleanups.push(() => s.close({ deadlineMs: 200 }));
    const target = { host: '127.0.0.1', port: echo.port };
    const c = client();
    const t = await c.connect({ peer: { host: '127.0.0.1', port: p }, target, expectedIdentities: [SERVER_ID] });
    const rotated = await pki.ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/server-ns/sa/rotated' });
    s.setTls(tlsOf(rotated));
    const c2 = client();
    const t2 = await c2.connect({ peer: { host: '127.0.0.1', port: p }, target, expectedIdentities: [rotated.identity] });
    expect((await roundTrip(t2, Buffer.from('new cert'))).toString()).toBe('new cert');
    expect((await roundTrip(t, Buffer.from('old cert'))).toString()).toBe('old cert');
  });

  it('aborts a pending connect through its AbortSignal, and the server hook sees the abort', async () => {
    let serverAbort: (reason: unknown) => void = () => {};
    const serverAborted = new Promise((r) => (serverAbort = r));
    let lateSignal: AbortSignal | undefined;
    const slow = createHboneServer({
      tls: tlsOf(pki.server),
      connect: async (t, ctx) => {
        if (t.port === 1235) {
          // Reads the signal only after the client is gone: it must come back already aborted.
          await new Promise((r) => setTimeout(r, 600));
          lateSignal = ctx.signal;
          throw new Error('gone');
        }
        return new Promise((_, reject) =>
          ctx.signal.addEventListener('abort', () => {
            serverAbort(ctx.signal.reason);
            reject(new Error('aborted'));
          }),
        );
      },
    });
    const p = (await slow.listen({ host: '127.0.0.1', port: 0 })).port;
    cleanups.push(() => slow.close({ deadlineMs: 200 }));
    const c = client();
    const ac = new AbortController();
    const pending = c.connect({ peer: { host: '127.0.0.1', port: p }, target: { host: '127.0.0.1', port: 1234 }, expectedIdentities: [SERVER_ID], signal: ac.signal });
    setTimeout(() => ac.abort(), 200);
    await expect(pending).rejects.toMatchObject({ code: 'ERR_HBONE_ABORTED' });
    await expect(serverAborted).resolves.toMatchObject({ code: 'ERR_HBONE_ABORTED' });

    const ac2 = new AbortController();
    const late = c.connect({ peer: { host: '127.0.0.1', port: p }, target: { host: '127.0.0.1', port: 1235 }, expectedIdentities: [SERVER_ID], signal: ac2.signal });
    setTimeout(() => ac2.abort(), 100);
    await expect(late).rejects.toMatchObject({ code: 'ERR_HBONE_ABORTED' });
    await expect.poll(() => lateSignal?.aborted, { timeout: 3000 }).toBe(true);
  });

  it('bridges a client-side TCP socket into a tunnel (the embedding pattern)', async () => {
    const c = client();
    const front = await tcpServer((sock) => {
      void c
        .connect({ peer: peer(), target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] })
        .then((t) => bridge(t, sock), () => sock.destroy());
    });
    cleanups.push(() => front.close());
    const s = await dial(front.port);
    const data = random(2 * 1024 * 1024);
    expect(sha256(await roundTrip(s, data))).toBe(sha256(data));
  });
});

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
