import * as http2 from 'node:http2';
import type * as net from 'node:net';
import { connect as netConnect } from 'node:net';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { LocalCa } from '@weir/pki';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HboneClient, HboneError, createHboneServer, type HboneServer } from '../src/index.js';
import { CLIENT_ID, SERVER_ID, TD, type Pki, type TcpServer, dial, echoServer, makePki, roundTrip, tcpServer, tlsOf } from './helpers.js';
import { Peers } from './peers.js';

const peers = new Peers();
let pki: Pki;
let echo: TcpServer;
let server: HboneServer;
let port: number;
let files: Record<string, string>;

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  server = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host) });
  port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
  const dir = await peers.tmp('hostile');
  files = await peers.files(dir, { 'client.key': pki.client.keyPem, 'client.crt': pki.client.chainPem, 'root.crt': pki.ca.rootPem });
});

afterAll(async () => {
  await peers.stopAll();
  await server?.close({ deadlineMs: 500 });
  await echo?.close();
});

const peer = (): { host: string; port: number } => ({ host: '127.0.0.1', port });

async function connectWith(c: HboneClient, expectedIdentities = [SERVER_ID], p = peer()): Promise<unknown> {
  try {
    const t = await c.connect({ peer: p, target: { host: '127.0.0.1', port: echo.port }, expectedIdentities });
    t.destroy();
    return 'connected';
  } catch (e) {
    return e;
  } finally {
    await c.close({ deadlineMs: 200 });
  }
}

/** The server still tunnels for a legitimate client. */
async function serverStillServes(): Promise<void> {
  const c = new HboneClient({ tls: tlsOf(pki.client) });
  try {
    const t = await c.connect({ peer: peer(), target: { host: '127.0.0.1', port: echo.port }, expectedIdentities: [SERVER_ID] });
    expect((await roundTrip(t, Buffer.from('alive'))).toString()).toBe('alive');
  } finally {
    await c.close({ deadlineMs: 200 });
  }
}

/** A bare HTTP/2 CONNECT attempt, returning the status or the error code it ended with. */
function rawConnect(o: http2.SecureClientSessionOptions, headers: http2.OutgoingHttpHeaders): Promise<string> {
  return new Promise((resolve) => {
    const session = http2.connect(`https://127.0.0.1:${port}`, { ca: pki.ca.rootPem, checkServerIdentity: () => undefined, ...o });
    const done = (s: string): void => {
      session.destroy();
      resolve(s);
    };
    session.on('error', (e: NodeJS.ErrnoException) => done(`error ${e.code ?? e.message}`));
    session.on('close', () => done('closed'));
    const req = session.request(headers);
    req.on('error', (e: NodeJS.ErrnoException) => done(`error ${e.code ?? e.message}`));
    req.on('response', (h) => done(`status ${String(h[':status'])}`));
    req.on('close', () => done(`reset ${req.rstCode}`));
  });
}

describe('hostile and misconfigured peers', () => {
  it('refuses a client from another trust domain (chain ok, identity wrong) with GOAWAY and a typed error', async () => {
    const evilCa = await LocalCa.create({ trustDomain: 'evil.local' });
    const evil = await evilCa.issueWorkloadCertificate({ identity: 'spiffe://evil.local/ns/x/sa/y' });
    const both = `${pki.ca.rootPem}${evilCa.rootPem}`;
    const s = createHboneServer({ tls: { ...tlsOf(pki.server), ca: both }, connect: (t) => dial(t.port, t.host) });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    try {
      const err = await connectWith(new HboneClient({ tls: { ...tlsOf(evil), ca: both } }), [SERVER_ID], { host: '127.0.0.1', port: p });
      expect(err).toBeInstanceOf(HboneError);
      expect((err as HboneError).message).toContain('not in trust domain cluster.local');
      // On the wire: GOAWAY(INADEQUATE_SECURITY) before any stream, the reason as its debug data.
      const goaway = await new Promise<unknown>((resolve) => {
        const session = http2.connect(`https://127.0.0.1:${p}`, { key: evil.keyPem, cert: evil.chainPem, ca: both, checkServerIdentity: () => undefined });
        session.on('error', () => {});
        session.once('goaway', (code, lastStreamId, debug) => resolve({ code, lastStreamId, debug: debug?.toString() }));
        session.once('close', () => resolve('closed without GOAWAY'));
      });
      expect(goaway).toEqual({ code: http2.constants.NGHTTP2_INADEQUATE_SECURITY, lastStreamId: 0, debug: 'client identity spiffe://evil.local/ns/x/sa/y is not in trust domain cluster.local' });
    } finally {
      await s.close({ deadlineMs: 200 });
    }
    // And the client side: a server of another trust domain is not the identity we expect.
    const evilServer = await evilCa.issueWorkloadCertificate({ identity: 'spiffe://evil.local/ns/server-ns/sa/server-sa' });
    const s2 = createHboneServer({ tls: { ...tlsOf(evilServer), ca: both }, trustDomains: ['cluster.local'], connect: (t) => dial(t.port, t.host) });
    const p2 = (await s2.listen({ host: '127.0.0.1', port: 0 })).port;
    try {
      const err = await connectWith(new HboneClient({ tls: { ...tlsOf(pki.client), ca: both } }), [SERVER_ID], { host: '127.0.0.1', port: p2 });
      expect(err).toMatchObject({ code: 'ERR_HBONE_IDENTITY_MISMATCH' });
    } finally {
      await s2.close({ deadlineMs: 200 });
    }
  });

  it('refuses expired and not-yet-valid client certificates (ERR_HBONE_TLS), and such server certificates', async () => {
    const day = 86_400_000;
    const expired = await pki.ca.issueWorkloadCertificate({ identity: CLIENT_ID, notBefore: new Date(Date.now() - 3 * day), notAfter: new Date(Date.now() - day) });
    const future = await pki.ca.issueWorkloadCertificate({ identity: CLIENT_ID, notBefore: new Date(Date.now() + day) });
    expect(await connectWith(new HboneClient({ tls: tlsOf(expired) }))).toMatchObject({ code: 'ERR_HBONE_TLS' });
    expect(await connectWith(new HboneClient({ tls: tlsOf(future) }))).toMatchObject({ code: 'ERR_HBONE_TLS' });
    const expiredServer = await pki.ca.issueWorkloadCertificate({ identity: SERVER_ID, notBefore: new Date(Date.now() - 3 * day), notAfter: new Date(Date.now() - day) });
    const s = createHboneServer({ tls: tlsOf(expiredServer), connect: (t) => dial(t.port, t.host) });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    try {
      const err = await connectWith(new HboneClient({ tls: tlsOf(pki.client) }), [SERVER_ID], { host: '127.0.0.1', port: p });
      expect(err).toMatchObject({ code: 'ERR_HBONE_TLS' });
      expect((err as Error).message).toMatch(/expired/i);
    } finally {
      await s.close({ deadlineMs: 200 });
    }
  });

  it('refuses a server whose identity is not in expectedIdentities', async () => {
    expect(await connectWith(new HboneClient({ tls: tlsOf(pki.client) }), ['spiffe://cluster.local/ns/server-ns/sa/other'])).toMatchObject({
      code: 'ERR_HBONE_IDENTITY_MISMATCH',
    });
  });

  it('refuses a client without a certificate', async () => {
    const outcome = await rawConnect({}, { ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` });
    expect(outcome).toMatch(/^(error|closed|reset)/);
    await serverStillServes();
  });

  it('logs a failed TLS handshake with the client address (read before the socket is gone)', async () => {
    const lines: { obj: Record<string, unknown>; msg: string | undefined }[] = [];
    const record = (obj: object, msg?: string): void => void lines.push({ obj: obj as Record<string, unknown>, msg });
    const logger = { debug: record, info: record, warn: record, error: record, child: () => logger };
    const s = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host), logger, handshakeTimeoutMs: 500 });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    const foreignCa = await LocalCa.create({ trustDomain: TD });
    const foreign = await foreignCa.issueWorkloadCertificate({ identity: CLIENT_ID });
    /** Runs one bad client and returns its local `ip:port` once the server logged the failure. */
    const failing = async (start: (done: (sock: net.Socket) => void) => void): Promise<string> => {
      const before = lines.length;
      let src = '';
      await new Promise<void>((resolve) => start((sock) => {
        src = `${sock.localAddress}:${sock.localPort}`;
        resolve();
      }));
      const until = Date.now() + 5000;
      while (!lines.slice(before).some((l) => l.msg === 'connection failed: TLS handshake') && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      return src;
    };
    try {
      // A certificate from a CA the server does not trust, a client that is not TLS, one that never says anything.
      const cases = [
        (done: (sock: net.Socket) => void) => {
          const c = tls.connect({ host: '127.0.0.1', port: p, key: foreign.keyPem, cert: foreign.chainPem, ca: pki.ca.rootPem, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
          c.on('error', () => {});
          c.once('connect', () => done(c));
        },
        (done: (sock: net.Socket) => void) => {
          const c = netConnect({ host: '127.0.0.1', port: p }, () => {
            done(c);
            c.end('GET / HTTP/1.1\r\n\r\n');
          });
          c.on('error', () => {});
        },
        (done: (sock: net.Socket) => void) => {
          const c = netConnect({ host: '127.0.0.1', port: p }, () => done(c));
          c.on('error', () => {});
          setTimeout(() => c.destroy(), 2000);
        },
      ];
      for (const start of cases) {
        const before = lines.length;
        const src = await failing(start);
        const line = lines.slice(before).find((l) => l.msg === 'connection failed: TLS handshake');
        expect(line, `no TLS handshake failure logged for ${src}`).toBeDefined();
        expect(line!.obj['src']).toBe(src);
      }
    } finally {
      await s.close({ deadlineMs: 200 });
    }
  });

  it('closes a client that does not speak h2: no ALPN after the handshake, only http/1.1 in it', async () => {
    const lines: { obj: Record<string, unknown>; msg: string | undefined }[] = [];
    const record = (obj: object, msg?: string): void => void lines.push({ obj: obj as Record<string, unknown>, msg });
    const logger = { debug: record, info: record, warn: record, error: record, child: () => logger };
    const s = createHboneServer({ tls: tlsOf(pki.server), connect: (t) => dial(t.port, t.host), logger });
    const p = (await s.listen({ host: '127.0.0.1', port: 0 })).port;
    /** A TLS client with a valid certificate offering `alpn`: how its connection ended, and its local address. */
    const attempt = (alpn: string[] | undefined): Promise<{ outcome: string; src: string }> =>
      new Promise((resolve) => {
        const c = tls.connect({ host: '127.0.0.1', port: p, ...tlsOf(pki.client), ...(alpn ? { ALPNProtocols: alpn } : {}), checkServerIdentity: () => undefined });
        let src = '';
        let outcome = 'closed';
        c.once('secureConnect', () => (src = `${c.localAddress}:${c.localPort}`));
        c.on('data', () => (outcome = 'got data'));
        c.once('error', (e: NodeJS.ErrnoException) => (outcome = `error ${e.code ?? e.message}`));
        c.once('close', () => resolve({ outcome, src }));
      });
    try {
      const none = await attempt(undefined);
      expect(none.outcome).toBe('closed');
      expect(lines.find((l) => l.msg === 'connection failed: ALPN is not h2')?.obj).toMatchObject({ src: none.src, alpn: false });
      // The TLS layer refuses it with a no_application_protocol alert (RFC 7301 §3.2).
      expect((await attempt(['http/1.1'])).outcome).toBe('error ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL');
      await expect.poll(() => lines.find((l) => l.msg === 'connection failed: TLS handshake')?.obj.code).toBe('ERR_SSL_NO_APPLICATION_PROTOCOL');
      expect(s.stats().sessions).toBe(0);
    } finally {
      await s.close({ deadlineMs: 200 });
    }
  });

  it('refuses a TLS 1.2-only client unless TLS 1.2 was asked for', async () => {
    const tryTls12 = (p: number): Promise<string> =>
      new Promise((resolve) => {
        const s = tls.connect({
          host: '127.0.0.1', port: p, maxVersion: 'TLSv1.2', ALPNProtocols: ['h2'], key: pki.client.keyPem, cert: pki.client.chainPem, ca: pki.ca.rootPem,
          checkServerIdentity: () => undefined,
        });
        s.once('secureConnect', () => {
          resolve(`connected ${s.getProtocol()}`);
          s.destroy();
        });
        s.once('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code ?? e.message}`));
      });
    expect(await tryTls12(port)).toMatch(/^error .*(VERSION|PROTOCOL)/i);
    const lenient = createHboneServer({ tls: { ...tlsOf(pki.server), minVersion: 'TLSv1.2' }, connect: (t) => dial(t.port, t.host) });
    const p = (await lenient.listen({ host: '127.0.0.1', port: 0 })).port;
    try {
      expect(await tryTls12(p)).toBe('connected TLSv1.2');
    } finally {
      await lenient.close({ deadlineMs: 200 });
    }
  });

  it('answers 405 to non-CONNECT methods and 400 to hostname or malformed authorities', async () => {
    const cred = { key: pki.client.keyPem, cert: pki.client.chainPem };
    // Method Not Allowed (RFC 9110 §15.5.6): the server knows GET and serves only CONNECT.
    expect(await rawConnect(cred, { ':method': 'GET', ':path': '/', ':authority': `127.0.0.1:${echo.port}` })).toBe('status 405');
    expect(await rawConnect(cred, { ':method': 'CONNECT', ':authority': `localhost:${echo.port}` })).toBe('status 400');
    expect(await rawConnect(cred, { ':method': 'CONNECT', ':authority': 'example.com:443' })).toBe('status 400');
    expect(await rawConnect(cred, { ':method': 'CONNECT', ':authority': '127.0.0.1:0' })).toBe('status 400');
    await serverStillServes();
  });

  it('rejects CONNECT with :path/:scheme from nghttp and curl cleanly, and keeps serving', async () => {
    const url = `https://127.0.0.1:${port}/`;
    const ng = await peers.run('nghttp', ['-v', `--cert=${files['client.crt']}`, `--key=${files['client.key']}`, '-H', ':method: CONNECT', '-H', `:authority: 127.0.0.1:${echo.port}`, url], { timeoutMs: 15_000 });
    expect(ng.out).not.toMatch(/:status: 200/);
    // The server resets a CONNECT carrying :path/:scheme as malformed (RFC 9113 §8.5).
    expect(ng.out).toMatch(/recv RST_STREAM frame[^\n]*\n\s*\(error_code=PROTOCOL_ERROR/);
    const curl = await peers.run('curl', ['-sS', '--http2', '-k', '-X', 'CONNECT', '--cert', files['client.crt']!, '--key', files['client.key']!, '-o', '/dev/null', '-w', '%{http_code}', '-H', `Host: 127.0.0.1:${echo.port}`, url], { timeoutMs: 15_000 });
    expect(curl.out).not.toMatch(/^200/);
    expect(curl.out).toContain('PROTOCOL_ERROR');
    const get = await peers.run('curl', ['-sS', '--http2', '-k', '--cert', files['client.crt']!, '--key', files['client.key']!, '-o', '/dev/null', '-w', '%{http_code}', url], { timeoutMs: 15_000 });
    expect(get.out).toBe('405');
    await serverStillServes();
  });

  it('contains 10,000 streams opened and reset in a loop', async () => {
    const cred = { key: pki.client.keyPem, cert: pki.client.chainPem, ca: pki.ca.rootPem, checkServerIdentity: () => undefined };
    let opened = 0;
    let sessions = 0;
    while (opened < 10_000) {
      sessions++;
      const session = http2.connect(`https://127.0.0.1:${port}`, cred);
      session.on('error', () => {});
      await new Promise<void>((resolve) => {
        session.once('remoteSettings', () => resolve());
        session.once('close', () => resolve());
      });
      // Open and reset in batches until the server refuses the session (rapid-reset protection) or we are done.
      while (opened < 10_000 && !session.closed && !session.destroyed) {
        for (let i = 0; i < 100 && opened < 10_000; i++) {
          try {
            const req = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` });
            req.on('error', () => {});
            req.close(http2.constants.NGHTTP2_CANCEL);
            opened++;
          } catch {
            break;
          }
        }
        await new Promise((r) => setImmediate(r));
      }
      session.destroy();
    }
    expect(opened).toBe(10_000);
    // Every upstream opened for a reset stream is released again.
    const until = Date.now() + 10_000;
    while ((server.stats().tunnels > 0 || echo.sockets.size > 0) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(server.stats().tunnels).toBe(0);
    expect(echo.sockets.size).toBe(0);
    expect(sessions).toBeGreaterThan(0);
    await serverStillServes();
  }, 120_000);

  it('keeps memory bounded for a client that never reads: the upstream is paused', async () => {
    let written = 0;
    let upstream: net.Socket | undefined;
    const firehose = await tcpServer((s) => {
      upstream = s;
      const chunk = Buffer.alloc(64 * 1024, 7);
      const pump = (): void => {
        while (!s.destroyed && written < 512 * 1024 * 1024) {
          written += chunk.length;
          if (!s.write(chunk)) {
            s.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    const script = fileURLToPath(new URL('./peers/h2client.py', import.meta.url));
    const slow = peers.spawn('/usr/bin/python3', [script, '127.0.0.1', String(port), `127.0.0.1:${firehose.port}`, files['client.crt']!, files['client.key']!, files['root.crt']!, '0', 'CONNECT', 'noread']);
    try {
      await waitForOutput(slow, '"noread": true');
      const rssBefore = process.memoryUsage().rss;
      // Let the pipe fill: the client's window (64 KiB), our buffers and the kernel's, then it must stop.
      let last = -1;
      for (let i = 0; i < 40 && written !== last; i++) {
        last = written;
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(written).toBe(last);
      expect(written).toBeLessThan(32 * 1024 * 1024);
      expect(process.memoryUsage().rss - rssBefore).toBeLessThan(64 * 1024 * 1024);
      expect(upstream).toBeDefined();
      await serverStillServes();
    } finally {
      slow.kill('SIGKILL');
      await firehose.close();
    }
  });
});

function waitForOutput(p: import('node:child_process').ChildProcess, text: string, ms = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => reject(new Error(`no "${text}" within ${ms} ms: ${buf}`)), ms);
    p.stdout?.on('data', (b: Buffer) => {
      buf += b.toString();
      if (buf.includes(text)) {
        clearTimeout(t);
        resolve();
      }
    });
    p.stderr?.on('data', (b: Buffer) => (buf += b.toString()));
  });
}
