import * as http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalCa } from '@weir/pki';
import { HboneClient, HboneError } from '../src/index.js';
import { SERVER_ID, type Pki, type TcpServer, echoServer, exchange, makePki, random, sha256, tlsOf } from './helpers.js';
import { Peers, freePort, waitForPort } from './peers.js';

// Weir client → nghttpx (HTTP/2 proxy mode, client certificates required, TLS 1.3, h2) → tinyproxy → echo.
const peers = new Peers();
let pki: Pki;
let echo: TcpServer;
let nghttpxPort: number;

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  const dir = await peers.tmp('nghttpx');
  const tinyPort = await freePort();
  const f = await peers.files(dir, {
    'tinyproxy.conf': ['User nobody', 'Group nogroup', `Port ${tinyPort}`, 'Listen 127.0.0.1', 'Timeout 60', 'MaxClients 100', 'Allow 127.0.0.1', 'LogLevel Warning', ''].join('\n'),
    'server.key': pki.server.keyPem,
    'server.crt': pki.server.chainPem,
    'root.crt': pki.ca.rootPem,
  });
  const tiny = peers.spawn('tinyproxy', ['-d', '-c', f['tinyproxy.conf']!]);
  await waitForPort(tinyPort, tiny, peers, 'tinyproxy');
  nghttpxPort = await freePort();
  const ng = peers.spawn('nghttpx', [
    '--conf=/dev/null',
    '--http2-proxy',
    `--frontend=127.0.0.1,${nghttpxPort}`,
    `--backend=127.0.0.1,${tinyPort}`,
    '--workers=1',
    '--verify-client',
    `--verify-client-cacert=${f['root.crt']}`,
    '--tls-min-proto-version=TLSv1.3',
    '--no-ocsp',
    `--errorlog-file=${dir}/error.log`,
    f['server.key']!,
    f['server.crt']!,
  ]);
  await waitForPort(nghttpxPort, ng, peers, 'nghttpx');
});

afterAll(async () => {
  await peers.stopAll();
  await echo?.close();
});

describe('interop: Weir client → nghttpx → tinyproxy → echo', () => {
  it('moves data both ways on 4 concurrent tunnels over one session, checksums equal', async () => {
    const c = new HboneClient({ tls: tlsOf(pki.client) });
    try {
      const target = { host: '127.0.0.1', port: echo.port };
      const tunnels = await Promise.all([0, 1, 2, 3].map(() => c.connect({ peer: { host: '127.0.0.1', port: nghttpxPort }, target, expectedIdentities: [SERVER_ID] })));
      expect(c.stats()).toEqual({ sessions: 1, streams: 4 });
      const inputs = tunnels.map((_, i) => random(1024 * 1024 + i * 4099));
      // tinyproxy does not pass half-closes on, so each tunnel reads its echo back in full, then closes.
      const outputs = await Promise.all(tunnels.map((t, i) => exchange(t, inputs[i]!)));
      outputs.forEach((o, i) => expect(sha256(o)).toBe(sha256(inputs[i]!)));
      for (const t of tunnels) t.end();
    } finally {
      await c.close({ deadlineMs: 500 });
    }
  });

  it('is refused by nghttpx with a certificate from another CA (ERR_HBONE_TLS)', async () => {
    const other = await LocalCa.create({ trustDomain: 'cluster.local' });
    const stranger = await other.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/evil/sa/evil' });
    // Trusts nghttpx's root too, so only nghttpx's verification of our certificate can fail.
    const c = new HboneClient({ tls: { ...tlsOf(stranger), ca: `${pki.ca.rootPem}${other.rootPem}` } });
    try {
      const err = await c
        .connect({ peer: { host: '127.0.0.1', port: nghttpxPort }, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HboneError);
      expect(err).toMatchObject({ code: 'ERR_HBONE_TLS' });
    } finally {
      await c.close({ deadlineMs: 200 });
    }
  });

  it('is refused by nghttpx without a client certificate', async () => {
    const session = http2.connect(`https://127.0.0.1:${nghttpxPort}`, { ca: pki.ca.rootPem, checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' });
    const outcome = await new Promise<string>((resolve) => {
      session.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code ?? e.message}`));
      const req = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` });
      req.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code ?? e.message}`));
      req.on('response', (h) => resolve(`status ${String(h[':status'])}`));
    });
    session.destroy();
    expect(outcome).toMatch(/^error /);
    expect(outcome).not.toMatch(/status 200/);
  });
});
