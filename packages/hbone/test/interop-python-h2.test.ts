import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHboneServer, type HboneServer } from '../src/index.js';
import { CLIENT_ID, type Pki, type TcpServer, dial, echoServer, makePki, tlsOf } from './helpers.js';
import { Peers } from './peers.js';

// Debian's python3-h2 (under /usr/bin/python3, not any other interpreter on PATH).
const PYTHON = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('./peers/h2client.py', import.meta.url));
const peers = new Peers();
let pki: Pki;
let echo: TcpServer;
let server: HboneServer;
let port: number;
let files: Record<string, string>;
const identities: string[] = [];

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  server = createHboneServer({
    tls: tlsOf(pki.server),
    authorize: (peer) => {
      identities.push(String(peer.identity));
      return true;
    },
    connect: (t) => dial(t.port, t.host),
  });
  port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
  const dir = await peers.tmp('py');
  files = await peers.files(dir, { 'client.key': pki.client.keyPem, 'client.crt': pki.client.chainPem, 'root.crt': pki.ca.rootPem });
});

afterAll(async () => {
  await peers.stopAll();
  await server?.close({ deadlineMs: 500 });
  await echo?.close();
});

function py(authority: string, nbytes: number, method = 'CONNECT'): Promise<{ code: number | null; out: string }> {
  return peers.run(PYTHON, [SCRIPT, '127.0.0.1', String(port), authority, files['client.crt']!, files['client.key']!, files['root.crt']!, String(nbytes), method]);
}

describe('interop: python3-h2 client → Weir server', () => {
  it('tunnels to the echo with data both ways and the half-close, checksums equal', async () => {
    const r = await py(`127.0.0.1:${echo.port}`, 2 * 1024 * 1024 + 5);
    expect(r.out).toContain('"status": 200');
    expect(r.out).toContain('"ok": true');
    expect(identities).toContain(CLIENT_ID);
  });

  it('gets 400 for a hostname authority and 405 for GET', async () => {
    expect((await py(`localhost:${echo.port}`, 10)).out).toContain('"status": 400');
    // A method the server does not serve (RFC 9110 §15.5.6), answered by the HTTP/2 session itself.
    expect((await py(`127.0.0.1:${echo.port}`, 10, 'GET')).out).toContain('"status": 405');
  });
});
