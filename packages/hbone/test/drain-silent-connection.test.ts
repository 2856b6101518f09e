import * as net from 'node:net';
import * as tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createHboneServer } from '../src/index.js';
import { type Pki, type TcpServer, dial, echoServer, makePki, tlsOf } from './helpers.js';

// A TCP connection that never sends a ClientHello (a port scan, a TCP health check) does not hold a
// graceful close up to its deadline; one whose handshake is under way still finishes it.

let pki: Pki;
let echo: TcpServer;

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
});

afterAll(async () => {
  await echo.close();
});

function tcp(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

it('close() closes a connection that has sent nothing after a grace of a second (not at the handshake timeout or the deadline), and lets a started handshake finish', async () => {
  const server = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  const silent = await tcp(port);
  silent.on('error', () => {});
  const silentClosed = new Promise<void>((r) => silent.once('close', () => r()));
  // A client whose handshake is under way when close() is called: it completes (and then gets GOAWAY).
  const raw = await tcp(port);
  await new Promise((r) => setTimeout(r, 100));
  const t0 = Date.now();
  const closing = server.close({ deadlineMs: 20_000 });
  const handshake = new Promise<string>((resolve) => {
    const t = tls.connect({ socket: raw, ...tlsOf(pki.client), ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
    t.once('secureConnect', () => {
      resolve('handshake completed');
      t.destroy();
    });
    t.once('error', (err) => resolve(`error: ${err.message}`));
  });
  expect(await handshake).toBe('handshake completed');
  await silentClosed;
  const silentMs = Date.now() - t0;
  await closing;
  expect(silentMs).toBeGreaterThanOrEqual(900);
  // The grace is a second: well before the handshake timeout (10 s), which used to end the drain.
  expect(Date.now() - t0).toBeLessThan(6000);
});
