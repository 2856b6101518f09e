import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HboneClient, createHboneServer, type HboneServer } from '../src/index.js';
import { SERVER_ID, type Pki, type TcpServer, dial, echoServer, makePki, roundTrip, tlsOf } from './helpers.js';

// A connection accepted just before close() (SIGTERM) whose TLS handshake is still in progress.

let pki: Pki;
let echo: TcpServer;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await echo.close();
});

async function listening(): Promise<{ server: HboneServer; port: number; opened: () => number }> {
  let opened = 0;
  const server = createHboneServer({
    tls: tlsOf(pki.server),
    connect: async (t) => {
      opened++;
      return dial(t.port, t.host);
    },
  });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  cleanups.push(() => server.close({ deadlineMs: 200 }));
  return { server, port, opened: () => opened };
}

function tcp(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

describe('HboneServer.close() and handshakes in progress', () => {
  it('lets an accepted connection finish its handshake during the drain and sends it GOAWAY with last-stream-id 0', async () => {
    const { server, port, opened } = await listening();
    const raw = await tcp(port);
    // The server has accepted it (its 'connection' ran) before close() starts.
    await new Promise((r) => setTimeout(r, 50));
    const started = performance.now();
    const closing = server.close({ deadlineMs: 10_000 });
    await new Promise((r) => setTimeout(r, 100));
    const session = http2.connect(`https://127.0.0.1:${port}`, {
      createConnection: () =>
        tls.connect({ socket: raw, key: pki.client.keyPem, cert: pki.client.chainPem, ca: pki.ca.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }),
    });
    session.on('error', () => {});
    const goaway = new Promise<{ code: number; lastStreamId: number }>((resolve, reject) => {
      session.once('goaway', (code, lastStreamId) => resolve({ code, lastStreamId }));
      session.once('close', () => reject(new Error('session closed without GOAWAY')));
    });
    const req = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` }, { endStream: false });
    req.on('error', () => {});
    const reqClosed = new Promise<number>((r) => req.once('close', () => r(req.rstCode ?? -1)));
    expect(await goaway).toEqual({ code: http2.constants.NGHTTP2_NO_ERROR, lastStreamId: 0 });
    // The stream was not processed: refused, so a client may send it again elsewhere.
    expect(await reqClosed).toBe(http2.constants.NGHTTP2_REFUSED_STREAM);
    expect(opened()).toBe(0);
    await closing;
    // Drained as soon as that session closed, not at the (10 s) deadline.
    expect(performance.now() - started).toBeLessThan(5000);
    session.destroy();
  });

  it('resets a handshake still unfinished at the drain deadline', async () => {
    const { server, port } = await listening();
    const raw = await tcp(port);
    await new Promise((r) => setTimeout(r, 50));
    const closedAt = new Promise<number>((r) => raw.once('close', () => r(performance.now())));
    raw.on('error', () => {});
    const started = performance.now();
    const closing = server.close({ deadlineMs: 600 });
    // Another close (ztunnel's pod delete and its shutdown) waits for the same drain.
    expect(server.close({ deadlineMs: 0 })).toBe(closing);
    await closing;
    expect((await closedAt) - started).toBeGreaterThan(500);
  });

  it('HboneClient opens a tunnel refused by such a GOAWAY on a new session (here: the server that replaced it)', async () => {
    const old = await listening();
    const fresh = await listening();
    let dials = 0;
    let closing: Promise<void> | undefined;
    const c = new HboneClient({
      tls: tlsOf(pki.client),
      // The first connection is accepted by the old server, which then starts its shutdown before the
      // TLS handshake; later ones reach the new server (a restarted ztunnel on the same port).
      socketFactory: async () => {
        if (dials++ > 0) return tcp(fresh.port);
        const s = await tcp(old.port);
        await new Promise((r) => setTimeout(r, 50));
        closing = old.server.close({ deadlineMs: 4000 });
        return s;
      },
    });
    cleanups.push(() => c.close({ deadlineMs: 200 }));
    const t = await c.connect({ peer: { host: '127.0.0.1', port: old.port }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] });
    expect((await roundTrip(t, Buffer.from('retried'))).toString()).toBe('retried');
    expect(dials).toBe(2);
    expect(old.opened()).toBe(0);
    expect(fresh.opened()).toBe(1);
    await closing;
  });

  it('HboneClient: opens racing the GOAWAY of a pooled session all succeed, on the old server or retried on the new one', async () => {
    const old = await listening();
    const fresh = await listening();
    let closing: Promise<void> | undefined;
    const c = new HboneClient({ tls: tlsOf(pki.client), socketFactory: () => tcp(closing === undefined ? old.port : fresh.port) });
    cleanups.push(() => c.close({ deadlineMs: 200 }));
    const o = { peer: { host: '127.0.0.1', port: old.port }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] };
    const first = await c.connect(o);
    const opens = [];
    for (let i = 0; i < 40; i++) {
      opens.push(c.connect(o));
      if (i === 10) closing = old.server.close({ deadlineMs: 4000 });
      if (i % 5 === 0) await new Promise((r) => setImmediate(r));
    }
    const tunnels = await Promise.all(opens);
    const echoed = await Promise.all(tunnels.map((t, i) => roundTrip(t, Buffer.from(`t${i}`))));
    expect(echoed.map(String)).toEqual(tunnels.map((_, i) => `t${i}`));
    expect(old.opened() + fresh.opened()).toBe(41);
    first.destroy();
    await closing;
  });

  it('HboneClient: a session whose SETTINGS and GOAWAY (last-stream-id 0) arrive together is retried, not failed', async () => {
    const fresh = await listening();
    // A peer that answers the handshake with its SETTINGS and a GOAWAY in one write, as a server
    // shutting down as the handshake finishes does; it reads and ignores the client's frames.
    const settingsAndGoaway = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const draining = tls.createServer({ key: pki.server.keyPem, cert: pki.server.chainPem, ca: pki.ca.rootPem, requestCert: true, ALPNProtocols: ['h2'] }, (s) => {
      s.on('error', () => {});
      s.resume();
      s.write(settingsAndGoaway);
    });
    await new Promise<void>((r) => draining.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => draining.close(() => r())));
    const drainingPort = (draining.address() as net.AddressInfo).port;
    let dials = 0;
    const c = new HboneClient({ tls: tlsOf(pki.client), socketFactory: () => tcp(dials++ === 0 ? drainingPort : fresh.port) });
    cleanups.push(() => c.close({ deadlineMs: 200 }));
    const t = await c.connect({ peer: { host: '127.0.0.1', port: drainingPort }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] });
    expect((await roundTrip(t, Buffer.from('second session'))).toString()).toBe('second session');
    expect(dials).toBe(2);
  });

  it('HboneClient: with several pooled sessions to a closing server, a refused open is retried on a session opened after the GOAWAY', async () => {
    const old = await listening();
    const fresh = await listening();
    let replaced = false;
    const c = new HboneClient({ tls: tlsOf(pki.client), maxStreamsPerSession: 2, socketFactory: () => tcp(replaced ? fresh.port : old.port) });
    cleanups.push(() => c.close({ deadlineMs: 200 }));
    const o = { peer: { host: '127.0.0.1', port: old.port }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] };
    // Five sessions with one free stream each.
    const held = await Promise.all([1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map(() => c.connect(o)));
    for (const t of held.filter((_, i) => i % 2 === 0)) t.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(c.stats()).toEqual({ sessions: 5, streams: 5 });
    replaced = true;
    const closing = old.server.close({ deadlineMs: 4000 });
    const t = await c.connect(o);
    expect((await roundTrip(t, Buffer.from('fresh'))).toString()).toBe('fresh');
    for (const h of held) h.destroy();
    await closing;
  });
});
