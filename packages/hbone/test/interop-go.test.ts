import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HboneClient, createHboneServer, type HboneServer } from '../src/index.js';
import { CLIENT_ID, SERVER_ID, type Pki, type TcpServer, dial, echoServer, makePki, random, roundTrip, sha256, tlsOf } from './helpers.js';
import { buildGoPeer, listeningPort } from './go-peer.js';
import { Peers } from './peers.js';

// Go's standard library (net/http's bundled HTTP/2, CONNECT with an io.Pipe body) on the other side.
const peers = new Peers();
let pki: Pki;
let echo: TcpServer;
let bin: string;
let files: Record<string, string>;

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  bin = await buildGoPeer(peers);
  const dir = await peers.tmp('go-certs');
  files = await peers.files(dir, {
    'server.key': pki.server.keyPem,
    'server.crt': pki.server.chainPem,
    'client.key': pki.client.keyPem,
    'client.crt': pki.client.chainPem,
    'root.crt': pki.ca.rootPem,
  });
}, 200_000);

afterAll(async () => {
  await peers.stopAll();
  await echo?.close();
});

describe('interop with Go net/http', () => {
  it('Go client → Weir server: 4 concurrent tunnels, data both ways, half-close, checksums equal', async () => {
    const identities: string[] = [];
    const server: HboneServer = createHboneServer({
      tls: tlsOf(pki.server),
      authorize: (peer) => {
        identities.push(String(peer.identity));
        return true;
      },
      connect: (t) => dial(t.port, t.host),
    });
    try {
      const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
      const r = await peers.run(bin, [
        '-mode', 'client-check', '-peer', `127.0.0.1:${port}`, '-target', `127.0.0.1:${echo.port}`,
        '-cert', files['client.crt']!, '-key', files['client.key']!, '-ca', files['root.crt']!, '-expect', SERVER_ID,
        '-streams', '4', '-bytes', String(1024 * 1024 + 3),
      ]);
      expect(r.out).toContain('"ok":true');
      expect(r.code).toBe(0);
      expect(identities).toEqual([CLIENT_ID, CLIENT_ID, CLIENT_ID, CLIENT_ID]);
    } finally {
      await server.close({ deadlineMs: 500 });
    }
  });

  it('Go client expecting another identity refuses the Weir server', async () => {
    const server = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
    try {
      const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
      const r = await peers.run(bin, [
        '-mode', 'client-check', '-peer', `127.0.0.1:${port}`, '-target', `127.0.0.1:${echo.port}`,
        '-cert', files['client.crt']!, '-key', files['client.key']!, '-ca', files['root.crt']!, '-expect', 'spiffe://cluster.local/ns/x/sa/y',
        '-streams', '1', '-bytes', '10',
      ]);
      expect(r.out).toContain('"ok":false');
      expect(r.out).toContain('is not spiffe://cluster.local/ns/x/sa/y');
    } finally {
      await server.close({ deadlineMs: 500 });
    }
  });

  it('Weir client → Go server: 4 tunnels on one session, data both ways, half-close, checksums equal', async () => {
    const p = peers.spawn(bin, ['-mode', 'server', '-cert', files['server.crt']!, '-key', files['server.key']!, '-ca', files['root.crt']!]);
    const port = await listeningPort(p, peers);
    const c = new HboneClient({ tls: tlsOf(pki.client) });
    try {
      const target = { host: '127.0.0.1', port: echo.port };
      const tunnels = await Promise.all([0, 1, 2, 3].map(() => c.connect({ peer: { host: '127.0.0.1', port }, target, expectedIdentities: [SERVER_ID] })));
      expect(c.stats()).toEqual({ sessions: 1, streams: 4 });
      const inputs = tunnels.map((_, i) => random(1024 * 1024 + i * 7919));
      const outputs = await Promise.all(tunnels.map((t, i) => roundTrip(t, inputs[i]!)));
      outputs.forEach((o, i) => expect(sha256(o)).toBe(sha256(inputs[i]!)));
      await expect(c.connect({ peer: { host: '127.0.0.1', port }, target: { host: '127.0.0.1', port: 1 }, expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({
        code: 'ERR_HBONE_STATUS',
        status: 503,
      });
    } finally {
      await c.close({ deadlineMs: 500 });
    }
  });
});
