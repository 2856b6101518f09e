import * as http2 from 'node:http2';
import { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HboneClient, HboneError } from '../src/index.js';
import { SERVER_ID, type Pki, makePki } from './helpers.js';

const { NGHTTP2_CANCEL } = http2.constants;

/** An HTTP/2 peer over mutual TLS that accepts CONNECT streams and never answers them (unless told to). */
interface SilentPeer {
  port: number;
  /** rstCode of each stream once it closed, by target authority. */
  resets: Map<string, number>;
  close(): Promise<void>;
}

let pki: Pki;
const started: SilentPeer[] = [];

beforeAll(async () => {
  pki = await makePki();
});

afterAll(async () => {
  await Promise.all(started.map((p) => p.close()));
});

async function silentPeer(onStream?: (s: http2.ServerHttp2Stream, authority: string) => void): Promise<SilentPeer> {
  const server = http2.createSecureServer({
    key: pki.server.keyPem,
    cert: pki.server.chainPem,
    ca: pki.ca.rootPem,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ['h2'],
  });
  const resets = new Map<string, number>();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  server.on('stream', (stream, headers) => {
    const authority = String(headers[':authority']);
    stream.on('error', () => {});
    stream.on('close', () => resets.set(authority, stream.rstCode));
    onStream?.(stream, authority);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const p: SilentPeer = {
    port,
    resets,
    close: async () => {
      for (const s of sessions) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  started.push(p);
  return p;
}

/** 1 s, not less: the peer that does answer must beat it even when the loop is starved. */
const RESPONSE_TIMEOUT_MS = 1000;

const client = (responseTimeoutMs?: number): HboneClient =>
  new HboneClient({ tls: { key: pki.client.keyPem, cert: pki.client.chainPem, ca: pki.ca.rootPem }, ...(responseTimeoutMs ? { responseTimeoutMs } : {}) });

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('CONNECT response deadline', () => {
  it('resets a CONNECT the peer accepted and never answered, rejecting with ERR_HBONE_RESPONSE_TIMEOUT naming peer, target and timeout', async () => {
    const peer = await silentPeer();
    const c = client(RESPONSE_TIMEOUT_MS);
    try {
      const t0 = Date.now();
      const err = await c.connect({ peer: { host: '127.0.0.1', port: peer.port }, target: { host: '10.9.8.7', port: 8080 }, expectedIdentities: [SERVER_ID] }).then(
        () => 'connected',
        (e: unknown) => e,
      );
      const took = Date.now() - t0;
      expect(err).toBeInstanceOf(HboneError);
      expect((err as HboneError).code).toBe('ERR_HBONE_RESPONSE_TIMEOUT');
      expect((err as HboneError).message).toContain(`127.0.0.1:${peer.port}`);
      expect((err as HboneError).message).toContain('10.9.8.7:8080');
      expect((err as HboneError).message).toContain(`${RESPONSE_TIMEOUT_MS} ms`);
      expect(took).toBeGreaterThanOrEqual(RESPONSE_TIMEOUT_MS - 10);
      // Includes the TLS and HTTP/2 handshakes; far below the 10 s connect and 15 s default deadlines.
      expect(took).toBeLessThan(RESPONSE_TIMEOUT_MS + 4000);
      // The peer saw the stream cancelled, not left open.
      await waitFor(() => peer.resets.has('10.9.8.7:8080'));
      expect(peer.resets.get('10.9.8.7:8080')).toBe(NGHTTP2_CANCEL);
      expect(c.stats().streams).toBe(0);
    } finally {
      await c.close({ deadlineMs: 200 });
    }
  });

  it('fails only the unanswered opens; answered ones on the same session stay up', async () => {
    const peer = await silentPeer((s, authority) => {
      if (authority.endsWith(':1')) s.respond({ ':status': 200 });
    });
    const c = client(RESPONSE_TIMEOUT_MS);
    try {
      const p = { host: '127.0.0.1', port: peer.port };
      const ok = await c.connect({ peer: p, target: { host: '10.0.0.1', port: 1 }, expectedIdentities: [SERVER_ID] });
      const silent = c.connect({ peer: p, target: { host: '10.0.0.2', port: 2 }, expectedIdentities: [SERVER_ID] }).catch((e: unknown) => e);
      expect(((await silent) as HboneError).code).toBe('ERR_HBONE_RESPONSE_TIMEOUT');
      // Well past the deadline: the answered tunnel is untouched by the sweep.
      await new Promise((r) => setTimeout(r, 500));
      expect(ok.destroyed).toBe(false);
      expect(c.stats()).toEqual({ sessions: 1, streams: 1 });
      ok.destroy();
    } finally {
      await c.close({ deadlineMs: 200 });
    }
  });

  it('times out a CONNECT still covered by a GOAWAY that the peer never answers', async () => {
    const peer = await silentPeer((s) => {
      // GOAWAY naming this stream as processed: the client must keep waiting for it, not retry.
      s.session?.goaway(0, s.id);
    });
    const c = client(RESPONSE_TIMEOUT_MS);
    try {
      const err = await c
        .connect({ peer: { host: '127.0.0.1', port: peer.port }, target: { host: '10.0.0.3', port: 3 }, expectedIdentities: [SERVER_ID] })
        .catch((e: unknown) => e);
      expect((err as HboneError).code).toBe('ERR_HBONE_RESPONSE_TIMEOUT');
      expect((err as HboneError).message).toContain('GOAWAY');
    } finally {
      await c.close({ deadlineMs: 200 });
    }
  });

  it('defaults to 15 s: still pending after 1 s without the option', async () => {
    const peer = await silentPeer();
    const c = client();
    try {
      const abort = new AbortController();
      let outcome = 'pending';
      const open = c
        .connect({ peer: { host: '127.0.0.1', port: peer.port }, target: { host: '10.0.0.4', port: 4 }, expectedIdentities: [SERVER_ID], signal: abort.signal })
        .then(
          () => (outcome = 'connected'),
          (e: HboneError) => (outcome = e.code),
        );
      await new Promise((r) => setTimeout(r, 1000));
      expect(outcome).toBe('pending');
      abort.abort();
      await open;
      expect(outcome).toBe('ERR_HBONE_ABORTED');
    } finally {
      await c.close({ deadlineMs: 200 });
    }
  });
});

describe('GOAWAY with an error code', () => {
  it('retries the opens above its last-stream-id on a new session and fails the ones it covers', async () => {
    const sessions: http2.Http2Session[] = [];
    const first: http2.ServerHttp2Stream[] = [];
    const peer = await silentPeer((s) => {
      const session = s.session!;
      if (!sessions.includes(session)) sessions.push(session);
      if (session !== sessions[0]) {
        s.respond({ ':status': 200 });
        return;
      }
      // The first session takes three CONNECTs, answers none, then goes away having processed only the first.
      first.push(s);
      if (first.length === 3) session.goaway(http2.constants.NGHTTP2_INTERNAL_ERROR, first[0]!.id!);
    });
    const c = client();
    try {
      const p = { host: '127.0.0.1', port: peer.port };
      const open = (port: number): Promise<unknown> =>
        c.connect({ peer: p, target: { host: '10.0.0.5', port }, expectedIdentities: [SERVER_ID] }).then(
          (t) => t,
          (e: unknown) => e,
        );
      const [a, b, d] = await Promise.all([open(1), open(2), open(3)]);
      expect(first.map((s) => s.id)).toEqual([1, 3, 5]);
      // Stream 1 may have been processed: reporting it is the only safe answer.
      expect(a).toBeInstanceOf(HboneError);
      expect((a as HboneError).code).toBe('ERR_HBONE_SESSION');
      // Streams 3 and 5 were not: both succeed on a second session.
      expect(b).not.toBeInstanceOf(Error);
      expect(d).not.toBeInstanceOf(Error);
      expect([b, d].every((x) => x instanceof Duplex)).toBe(true);
      expect(sessions.length).toBe(2);
      expect(c.stats()).toEqual({ sessions: 1, streams: 2 });
      (b as Duplex).destroy();
      (d as Duplex).destroy();
    } finally {
      await c.close({ deadlineMs: 200 });
    }
  });
});
