// H2Session over real loopback sockets (h2c): our client ↔ our server, each against node:http2
// (nghttp2), and hostile peers writing raw frames with the codec's serializers.
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RawPeer } from '../../test/h2-peer.js';
import { roundTrip } from '../../test/helpers.js';
import { H2_ERROR_CODES, HboneError } from '../errors.js';
import {
  CLIENT_PREFACE,
  FrameType,
  encodeDataHeader,
  encodeFrame,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSettingsAck,
  encodeWindowUpdate,
} from './frames.js';
import { H2Session, Tunnel, isRetryable } from './session.js';
import type { H2SessionOptions } from './session.js';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function listen(onSocket: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer(onSocket);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanup.push(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

async function dial(port: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  await once(s, 'connect');
  cleanup.push(() => s.destroy());
  return s;
}

/** Echo: every tunnel is answered 200 and sends back what it reads. */
function echo(t: Tunnel): void {
  t.on('error', () => {});
  t.respond(200);
  t.pipe(t);
}

async function pair(server: Partial<H2SessionOptions> = {}, client: Partial<H2SessionOptions> = {}): Promise<{ client: H2Session; server: Promise<H2Session> }> {
  let resolve!: (s: H2Session) => void;
  const serverSession = new Promise<H2Session>((r) => (resolve = r));
  const port = await listen((socket) => resolve(new H2Session(socket, { role: 'server', onConnect: echo, ...server })));
  const socket = await dial(port);
  return { client: new H2Session(socket, { role: 'client', ...client }), server: serverSession };
}

/** Everything until END_STREAM (not `for await`, which destroys the tunnel — a reset — when done). */
function readAll(t: Tunnel): Promise<Buffer> {
  const parts: Buffer[] = [];
  t.on('data', (c: Buffer) => parts.push(c));
  t.resume(); // also after an explicit pause()
  return new Promise((resolve, reject) => {
    t.once('end', () => resolve(Buffer.concat(parts)));
    t.once('error', reject);
  });
}

const closed = (t: Tunnel): Promise<void> => new Promise((r) => t.once('close', () => r()));

/** A raw client against our server session (preface + SETTINGS sent, the server's SETTINGS ACKed). */
async function rawClient(options: Partial<H2SessionOptions> = {}, sendSettings = true): Promise<{ raw: RawPeer; session: Promise<H2Session>; closeError: Promise<HboneError | undefined> }> {
  let resolve!: (s: H2Session) => void;
  let closed!: (e: HboneError | undefined) => void;
  const session = new Promise<H2Session>((r) => (resolve = r));
  const closeError = new Promise<HboneError | undefined>((r) => (closed = r));
  const port = await listen((socket) => resolve(new H2Session(socket, { role: 'server', onConnect: echo, onClose: closed, ...options })));
  const socket = await dial(port);
  const raw = new RawPeer(socket, { expectPreface: false, answerPings: true });
  socket.write(CLIENT_PREFACE);
  if (sendSettings) {
    socket.write(encodeSettings({}));
    await raw.next((f) => f.type === FrameType.SETTINGS && !f.ack);
    socket.write(encodeSettingsAck());
  }
  return { raw, session, closeError };
}

const { NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, REFUSED_STREAM, CANCEL, CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY } = H2_ERROR_CODES;

describe('H2Session: our client ↔ our server', () => {
  it('echoes 50 concurrent tunnels byte for byte', async () => {
    const { client } = await pair();
    const runs = Array.from({ length: 50 }, async (_, i) => {
      const t = await client.connect(`10.0.0.${i}:80`, ['x-weir', String(i)]);
      const done = closed(t);
      const payload = randomBytes(64 * 1024 + i * 997);
      const back = readAll(t);
      t.end(payload);
      const got = await back;
      expect(sha(got)).toBe(sha(payload));
      await done;
      return t.rstCode;
    });
    expect(await Promise.all(runs)).toEqual(Array<number>(50).fill(NO_ERROR));
    expect(client.activeStreams).toBe(0);
  });

  it('passes the request to onConnect and reports a refusal as ERR_HBONE_STATUS', async () => {
    const seen: unknown[] = [];
    const { client } = await pair({
      onConnect: (t, req) => {
        seen.push(req);
        t.respond(401);
      },
    });
    const err = await client.connect('10.1.2.3:8080', ['baggage', 'a=b']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    expect((err as HboneError).code).toBe('ERR_HBONE_STATUS');
    expect((err as HboneError).status).toBe(401);
    expect(seen).toEqual([{ authority: '10.1.2.3:8080', headers: ['baggage', 'a=b'] }]);
    expect(client.activeStreams).toBe(0);
  });

  it('half-closes each way: END_STREAM ↔ end()', async () => {
    let serverTunnel!: Tunnel;
    const { client } = await pair({
      onConnect: (t) => {
        serverTunnel = t;
        t.respond(200);
      },
    });
    const t = await client.connect('10.0.0.1:80');
    const done = Promise.all([closed(t), closed(serverTunnel)]);
    t.end('request');
    expect((await readAll(serverTunnel)).toString()).toBe('request'); // the server saw END_STREAM
    const back = readAll(t);
    serverTunnel.write('still talking after the client closed its side');
    serverTunnel.end();
    expect((await back).toString()).toBe('still talking after the client closed its side');
    await done;
    expect([t.rstCode, serverTunnel.rstCode]).toEqual([NO_ERROR, NO_ERROR]);
  });

  it('resets both ways: close(code) and destroy() ↔ RST_STREAM, rstCode on each side', async () => {
    const tunnels: Tunnel[] = [];
    const { client } = await pair({
      onConnect: (t) => {
        tunnels.push(t);
        t.on('error', () => {});
        t.respond(200);
      },
    });
    const a = await client.connect('10.0.0.1:80');
    a.on('error', () => {});
    const sa = tunnels[0]!;
    const saClosed = closed(sa);
    a.close(CONNECT_ERROR);
    await saClosed;
    expect(sa.rstCode).toBe(CONNECT_ERROR);
    expect(a.rstCode).toBe(CONNECT_ERROR);

    const b = await client.connect('10.0.0.2:80');
    const bErr = once(b, 'error');
    tunnels[1]!.destroy(); // no error: CANCEL
    const [e] = (await bErr) as [HboneError];
    expect(e.code).toBe('ERR_HBONE_SESSION');
    expect(b.rstCode).toBe(CANCEL);
    expect(client.activeStreams).toBe(0);
  });

  it('stops an unread tunnel at about its window, then delivers everything once read', async () => {
    let serverTunnel!: Tunnel;
    const window = 65535;
    const { client } = await pair({
      streamWindow: window,
      onConnect: (t) => {
        serverTunnel = t;
        t.respond(200);
        t.pause();
      },
    });
    const t = await client.connect('10.0.0.1:80');
    t.on('error', () => {}); // the server never ends its side: the tunnel is cut at cleanup
    const payload = randomBytes(1024 * 1024);
    let finished = false;
    t.end(payload, () => (finished = true));
    await new Promise((r) => setTimeout(r, 300));
    const buffered = serverTunnel.readableLength;
    expect(buffered).toBeGreaterThanOrEqual(window - 16384);
    expect(buffered).toBeLessThanOrEqual(window + 32768); // window + what was credited before the pause
    expect(finished).toBe(false);
    expect(sha(await readAll(serverTunnel))).toBe(sha(payload));
  });

  it('gives the window of a paused tunnel the peer ended back to the connection, once read: the next tunnel is not stalled', async () => {
    const { client } = await pair(
      {
        onConnect: (t, req) => {
          t.on('error', () => {});
          t.respond(200);
          // 'a' sends more than its reader's buffer takes, then ends its side; 'b' needs the window 'a' used.
          if (req.authority === 'a:1') t.end(Buffer.alloc(99_000, 1));
          else t.write(Buffer.alloc(60_000, 2));
        },
      },
      { connectionWindow: 100_000, streamWindow: 100_000 },
    );
    const a = await client.connect('a:1');
    a.on('error', () => {});
    await new Promise((r) => setTimeout(r, 100)); // arrives while nobody reads: the tunnel is paused
    let gotA = 0;
    a.on('data', (c: Buffer) => (gotA += c.length));
    await once(a, 'end');
    expect(gotA).toBe(99_000);
    const b = await client.connect('b:1');
    b.on('error', () => {});
    let gotB = 0;
    b.on('data', (c: Buffer) => (gotB += c.length));
    await new Promise((r) => setTimeout(r, 300));
    expect(gotB).toBe(60_000);
  });

  it('a paused tunnel the peer ended holds its connection window until read: unread bytes stay within the connection window', async () => {
    const MiB = 1024 * 1024;
    const held: Tunnel[] = [];
    const { client } = await pair(
      {
        streamWindow: MiB,
        connectionWindow: 16 * MiB,
        onConnect: (t) => {
          t.on('error', () => {});
          t.respond(200);
          held.push(t); // never read
        },
      },
      {},
    );
    const tunnels = await Promise.all(Array.from({ length: 40 }, () => client.connect('10.0.0.1:80')));
    for (const t of tunnels) {
      t.on('error', () => {});
      t.end(Buffer.alloc(MiB));
    }
    await new Promise((r) => setTimeout(r, 1000));
    expect(held.reduce((n, t) => n + t.readableLength, 0)).toBeLessThanOrEqual(16 * MiB);
  });

  it('a write parked on a connection over its queue limit resumes, also with a socket high-water mark above that limit (no drain below it)', async () => {
    // The writing side's socket: 'drain' comes only after a write that reached this mark.
    const server = net.createServer({ highWaterMark: 1024 * 1024 }, (socket) =>
      new H2Session(socket, {
        role: 'server',
        onConnect: (t) => {
          t.on('error', () => {});
          t.respond(200);
          t.write(Buffer.alloc(600 * 1024));
          t.end(Buffer.alloc(10));
        },
      }),
    );
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanup.push(() => server.close());
    const socket = await dial((server.address() as net.AddressInfo).port);
    const client = new H2Session(socket, { role: 'client' });
    const t = await client.connect('10.0.0.1:80');
    t.on('error', () => {});
    let n = 0;
    t.on('data', (c: Buffer) => (n += c.length));
    await once(t, 'end');
    expect(n).toBe(600 * 1024 + 10);
  });

  it('a client counts no resets against the rapid-reset guard: refusals (HEADERS + RST_STREAM NO_ERROR) past its limit leave the session up', async () => {
    const { client } = await pair(
      {
        onConnect: (t, req) => {
          if (req.authority !== 'healthy:1') return t.respond(503);
          echo(t);
        },
      },
      { maxResets: 20 },
    );
    const healthy = await client.connect('healthy:1');
    healthy.on('error', () => {});
    for (let i = 0; i < 40; i++) await expect(client.connect('10.0.0.1:80')).rejects.toMatchObject({ code: 'ERR_HBONE_STATUS', status: 503 });
    expect(client.closed).toBe(false);
    expect((await roundTrip(healthy, Buffer.from('still here'))).toString()).toBe('still here');
  });

  it('answers PING with the round-trip time', async () => {
    const { client } = await pair();
    const rtt = await client.ping();
    expect(rtt).toBeGreaterThanOrEqual(0);
    expect(rtt).toBeLessThan(1000);
  });

  it('drains on close(): GOAWAY, open tunnels finish, new ones are refused as retryable, then both ends close', async () => {
    const { client, server } = await pair();
    const t = await client.connect('10.0.0.1:80');
    const s = await server;
    const closing = s.close();
    await new Promise((r) => setTimeout(r, 50));
    expect(client.canOpen).toBe(false);
    const refusedErr = await client.connect('10.0.0.2:80').catch((e: unknown) => e);
    expect(isRetryable(refusedErr)).toBe(true);
    const back = readAll(t);
    t.end('after goaway');
    expect((await back).toString()).toBe('after goaway');
    await closing;
    expect(s.closed).toBe(true);
    expect(client.closed).toBe(true);
  });

  it('terminate(code, reason): GOAWAY with that code and the reason as debug data, open tunnels fail, then the socket closes', async () => {
    const { raw, session, closeError } = await rawClient();
    raw.connect(1);
    await raw.next((f) => f.type === FrameType.HEADERS && f.streamId === 1);
    const s = await session;
    s.terminate(INADEQUATE_SECURITY, 'client identity spiffe://evil.local/ns/x/sa/y is not in trust domain cluster.local');
    const goaway = await raw.goaway();
    expect(goaway).toMatchObject({ errorCode: INADEQUATE_SECURITY, lastStreamId: 1 });
    expect(goaway.debugData.toString()).toBe('client identity spiffe://evil.local/ns/x/sa/y is not in trust domain cluster.local');
    await raw.closed;
    expect(s.closed).toBe(true);
    expect((await closeError)?.message).toMatch(/INADEQUATE_SECURITY.*not in trust domain/);
    // Closed already: a second terminate sends nothing more.
    s.terminate(PROTOCOL_ERROR, 'again');
    expect(raw.frames.filter((f) => f.type === FrameType.GOAWAY)).toHaveLength(1);
  });

  it('fails streams above a GOAWAY last-stream-id as retryable', async () => {
    const port = await listen((socket) => {
      const raw = new RawPeer(socket, { expectPreface: true, answerPings: true });
      socket.write(encodeSettings({}));
      void raw.next((f) => f.type === FrameType.HEADERS && f.streamId === 3).then(() => {
        socket.write(encodeHeaders(1, raw.encoder.encode([':status', '200']), false));
        socket.write(encodeGoaway(1, NO_ERROR));
      });
    });
    const client = new H2Session(await dial(port), { role: 'client' });
    const one = client.connect('10.0.0.1:80');
    const three = client.connect('10.0.0.3:80').catch((e: unknown) => e);
    const t = await one;
    t.on('error', () => {});
    expect(t.id).toBe(1);
    expect(isRetryable(await three)).toBe(true);
  });
  it('honours the peer window, INITIAL_WINDOW_SIZE changes included (the window may go negative)', async () => {
    let raw!: RawPeer;
    const port = await listen((socket) => {
      raw = new RawPeer(socket, { expectPreface: true, answerPings: true });
      socket.write(encodeSettings({ initialWindowSize: 1000 }));
      void raw.next((f) => f.type === FrameType.SETTINGS && !f.ack).then(() => socket.write(encodeSettingsAck()));
      void raw.next((f) => f.type === FrameType.HEADERS).then(() => socket.write(encodeHeaders(1, raw.encoder.encode([':status', '200']), false)));
    });
    const client = new H2Session(await dial(port), { role: 'client' });
    const t = await client.connect('10.0.0.1:80');
    t.on('error', () => {});
    const received = (): number => raw.frames.reduce((n, f) => n + (f.type === FrameType.DATA ? f.data.length : 0), 0);
    const settle = async (): Promise<number> => {
      await client.ping(); // a round trip: whatever the client could send has arrived
      await new Promise((r) => setTimeout(r, 20));
      return received();
    };
    t.write(Buffer.alloc(5000));
    expect(await settle()).toBe(1000);
    // Window 1000 − 1000 sent = 0; INITIAL_WINDOW_SIZE 500 takes it to −500, +600 leaves 100.
    raw.socket.write(Buffer.concat([encodeSettings({ initialWindowSize: 500 }), encodeWindowUpdate(1, 600)]));
    expect(await settle()).toBe(1100);
    raw.socket.write(encodeWindowUpdate(1, 4000));
    expect(await settle()).toBe(5000);
  });

  it('bounds what it queues for a peer that grants windows but stops reading', async () => {
    const port = await listen((socket) => {
      const raw = new RawPeer(socket, { expectPreface: true, answerPings: true });
      socket.write(Buffer.concat([encodeSettings({ initialWindowSize: 0x7fffffff }), encodeWindowUpdate(0, 0x7fffffff - 65535)]));
      void raw.next((f) => f.type === FrameType.HEADERS).then(() => {
        socket.write(encodeHeaders(1, raw.encoder.encode([':status', '200']), false));
        setTimeout(() => socket.pause(), 20); // reads the SETTINGS ACK and PING, then nothing
      });
    });
    const socket = await dial(port);
    const client = new H2Session(socket, { role: 'client' });
    const t = await client.connect('10.0.0.1:80');
    t.on('error', () => {});
    await client.ping();
    const chunk = Buffer.alloc(1024 * 1024);
    let written = 0;
    for (let i = 0; i < 64; i++) t.write(chunk, () => written++);
    await new Promise((r) => setTimeout(r, 500));
    // Each write waits for the connection to drain: what is queued is about one chunk, not 64 MiB.
    expect(socket.writableLength).toBeLessThanOrEqual(2 * chunk.length);
    expect(written).toBeLessThan(32);
    expect(t.writableLength).toBeGreaterThan(32 * chunk.length);
  });

});

describe('H2Session ↔ node:http2 (h2c)', () => {
  it('our client → node:http2 server', async () => {
    const server = http2.createServer();
    server.on('stream', (stream, headers) => {
      expect(headers[':method']).toBe('CONNECT');
      expect(headers[':authority']).toBe('10.0.0.9:443');
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanup.push(() => server.close());
    const client = new H2Session(await dial((server.address() as net.AddressInfo).port), { role: 'client' });
    cleanup.push(() => client.destroy());
    const runs = Array.from({ length: 10 }, async () => {
      const t = await client.connect('10.0.0.9:443');
      const payload = randomBytes(300 * 1024);
      const back = readAll(t);
      t.end(payload);
      expect(sha(await back)).toBe(sha(payload));
    });
    await Promise.all(runs);
    expect(await client.ping()).toBeLessThan(1000);
  });

  it('node:http2 client → our server', async () => {
    const port = await listen((socket) => new H2Session(socket, { role: 'server', onConnect: echo }));
    const client = http2.connect(`http://127.0.0.1:${port}`);
    cleanup.push(() => client.destroy());
    const runs = Array.from({ length: 10 }, async () => {
      const req = client.request({ ':method': 'CONNECT', ':authority': '10.0.0.9:443' });
      const [headers] = (await once(req, 'response')) as [http2.IncomingHttpHeaders];
      expect(headers[':status']).toBe(200);
      const payload = randomBytes(300 * 1024);
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.end(payload);
      await once(req, 'end');
      expect(sha(Buffer.concat(parts))).toBe(sha(payload));
    });
    await Promise.all(runs);
    // A request with :path is malformed for CONNECT: that stream is reset, the connection lives on.
    const bad = client.request({ ':method': 'GET', ':path': '/' }, { endStream: true });
    bad.on('error', () => {});
    const [headers] = (await once(bad, 'response')) as [http2.IncomingHttpHeaders];
    expect(headers[':status']).toBe(405);
    expect(headers['allow']).toBe('CONNECT');
    const ping = await new Promise<number>((r, j) => client.ping((err, ms) => (err ? j(err) : r(ms))));
    expect(ping).toBeLessThan(1000);
  });
});

describe('H2Session against hostile and broken peers', () => {
  it('resets a CONNECT carrying :path or :scheme (stream error) and keeps serving', async () => {
    const { raw } = await rawClient();
    raw.connect(1, [':method', 'CONNECT', ':authority', 'a:1', ':path', '/']);
    expect((await raw.rst(1)).errorCode).toBe(PROTOCOL_ERROR);
    raw.connect(3, [':method', 'CONNECT', ':scheme', 'https', ':authority', 'a:1']);
    expect((await raw.rst(3)).errorCode).toBe(PROTOCOL_ERROR);
    raw.connect(5);
    const h = await raw.next((f) => f.type === FrameType.HEADERS && f.streamId === 5);
    expect(h.streamId).toBe(5);
  });

  it('a throwing onConnect resets that stream (INTERNAL_ERROR), and a bad HPACK block ends the connection (COMPRESSION_ERROR)', async () => {
    let calls = 0;
    const { raw } = await rawClient({
      onConnect: (t) => {
        if (++calls === 1) throw new Error('handler bug');
        echo(t);
      },
    });
    raw.connect(1);
    expect((await raw.rst(1)).errorCode).toBe(H2_ERROR_CODES.INTERNAL_ERROR);
    raw.connect(3);
    await raw.next((f) => f.type === FrameType.HEADERS && f.streamId === 3);
    raw.socket.write(encodeFrame(FrameType.HEADERS, 0x4, 5, Buffer.from([0x80]))); // index 0 is invalid
    expect((await raw.goaway()).errorCode).toBe(H2_ERROR_CODES.COMPRESSION_ERROR);
    await raw.closed;
  });

  it('ignores DATA on a stream it reset, giving the connection window back', async () => {
    const { raw } = await rawClient();
    raw.connect(1, [':method', 'CONNECT', ':authority', 'a:1', ':path', '/']);
    await raw.rst(1);
    // 17 MiB on the reset stream: more than the 16 MiB connection window unless it is credited back.
    const piece = Buffer.alloc(16384);
    const frames = Buffer.concat(Array.from({ length: 64 }, () => [encodeDataHeader(1, piece.length, false), piece]).flat());
    for (let i = 0; i < 17; i++) raw.socket.write(frames);
    raw.connect(3);
    raw.socket.write(Buffer.concat([encodeDataHeader(3, 5, true), Buffer.from('hello')]));
    const echoed = await raw.next((f) => f.type === FrameType.DATA && f.streamId === 3 && f.data.length > 0);
    expect((echoed as { data: Buffer }).data.toString()).toBe('hello');
    expect(raw.frames.some((f) => f.type === FrameType.GOAWAY)).toBe(false);
  });

  it('refuses streams beyond MAX_CONCURRENT_STREAMS with REFUSED_STREAM', async () => {
    const { raw } = await rawClient({ maxConcurrentStreams: 2 });
    raw.connect(1);
    raw.connect(3);
    raw.connect(5);
    expect((await raw.rst(5)).errorCode).toBe(REFUSED_STREAM);
    expect(raw.frames.some((f) => f.type === FrameType.RST_STREAM && f.streamId !== 5)).toBe(false);
  });

  it('ends the connection when the first frame is not SETTINGS', async () => {
    const { raw } = await rawClient({}, false);
    raw.socket.write(encodePing(Buffer.alloc(8), false));
    expect((await raw.goaway()).errorCode).toBe(PROTOCOL_ERROR);
    await raw.closed;
  });

  it('sends GOAWAY SETTINGS_TIMEOUT when our SETTINGS go unACKed', async () => {
    const port = await listen((socket) => new H2Session(socket, { role: 'server', onConnect: echo, settingsTimeoutMs: 100 }));
    const raw = new RawPeer(await dial(port), { expectPreface: false, answerPings: true });
    raw.socket.write(Buffer.concat([CLIENT_PREFACE, encodeSettings({})]));
    expect((await raw.goaway()).errorCode).toBe(SETTINGS_TIMEOUT);
  });

  it('trips the rapid-reset guard: GOAWAY ENHANCE_YOUR_CALM', async () => {
    const { raw, closeError } = await rawClient({ maxResets: 20 });
    const out: Buffer[] = [];
    for (let id = 1; id < 2 * 30; id += 2) {
      out.push(encodeHeaders(id, raw.encoder.encode([':method', 'CONNECT', ':authority', 'a:1']), false), encodeRstStream(id, CANCEL));
    }
    raw.socket.write(Buffer.concat(out));
    expect((await raw.goaway()).errorCode).toBe(ENHANCE_YOUR_CALM);
    expect((await closeError)?.message).toMatch(/ENHANCE_YOUR_CALM/);
  });

  it('cuts off a client that sends refused requests and reads nothing: the answers count as frames it is owed', async () => {
    const { raw, session, closeError } = await rawClient({
      maxQueuedControlFrames: 100,
      onConnect: (t) => {
        t.on('error', () => {});
        t.respond(400);
      },
    });
    raw.socket.pause();
    const s = await session;
    let id = 1;
    // Until the answers fill both sockets' buffers, then 100 more: the session ends instead of queueing.
    for (let round = 0; round < 400 && !s.closed; round++) {
      const out: Buffer[] = [];
      for (let i = 0; i < 2000; i++, id += 2) out.push(encodeHeaders(id, raw.encoder.encode([':method', 'CONNECT', ':authority', '10.0.0.1:80']), true));
      if (!raw.socket.write(Buffer.concat(out))) await Promise.race([once(raw.socket, 'drain'), new Promise((r) => setTimeout(r, 200))]);
      await new Promise((r) => setImmediate(r));
    }
    expect(s.closed).toBe(true);
    expect((await closeError)?.message).toMatch(/control frames without reading/);
  }, 60_000);

  it('trips the empty-DATA guard', async () => {
    const { raw } = await rawClient({ maxEmptyDataFrames: 50 });
    raw.connect(1);
    raw.socket.write(Buffer.concat(Array.from({ length: 60 }, () => encodeDataHeader(1, 0, false))));
    expect((await raw.goaway()).errorCode).toBe(ENHANCE_YOUR_CALM);
  });

  for (const [name, frame] of [
    ['PING', encodePing(Buffer.alloc(8), false)],
    ['SETTINGS', encodeSettings({})],
  ] as const) {
    it(`drops a peer that floods ${name} without reading the ACKs (bounded control queue)`, async () => {
      const { raw, closeError } = await rawClient({ maxQueuedControlFrames: 100 });
      raw.socket.pause(); // never reads: the ACKs pile up on the server
      const burst = Buffer.concat(Array.from({ length: 4000 }, () => frame));
      let sent = 0;
      let closed = false;
      void raw.closed.then(() => (closed = true));
      while (!closed && sent < 64 * 1024 * 1024) {
        if (!raw.socket.write(burst)) await Promise.race([once(raw.socket, 'drain').catch(() => undefined), raw.closed]);
        sent += burst.length;
      }
      const err = await closeError;
      expect(err?.message).toMatch(/control frames/);
    });
  }

  it('WINDOW_UPDATE overflow: RST FLOW_CONTROL_ERROR on a stream, GOAWAY on the connection', async () => {
    const { raw } = await rawClient();
    raw.connect(1);
    await raw.next((f) => f.type === FrameType.HEADERS && f.streamId === 1);
    raw.socket.write(encodeWindowUpdate(1, 0x7fffffff));
    expect((await raw.rst(1)).errorCode).toBe(FLOW_CONTROL_ERROR);
    raw.socket.write(encodeWindowUpdate(0, 0x7fffffff));
    expect((await raw.goaway()).errorCode).toBe(FLOW_CONTROL_ERROR);
  });

  it('DATA beyond the stream window is a stream error; frames on an idle stream a connection error', async () => {
    // A tunnel nobody reads: the first frame is credited (it fits the readable buffer), the rest not.
    const { raw } = await rawClient({ streamWindow: 16384, onConnect: (t) => (t.on('error', () => {}), t.respond(200)) });
    raw.connect(1);
    await raw.next((f) => f.type === FrameType.HEADERS && f.streamId === 1);
    const big = Buffer.alloc(16384);
    raw.socket.write(Buffer.concat([encodeDataHeader(1, big.length, false), big, encodeDataHeader(1, big.length, false), big, encodeDataHeader(1, 1, false), Buffer.alloc(1)]));
    expect((await raw.rst(1)).errorCode).toBe(FLOW_CONTROL_ERROR);
    raw.socket.write(encodeFrame(FrameType.DATA, 0, 9, Buffer.alloc(1)));
    expect((await raw.goaway()).errorCode).toBe(PROTOCOL_ERROR);
  });

  it('client: a header value HPACK cannot carry as is (outside Latin-1, or a control character) is refused before it is sent', async () => {
    const { client } = await pair();
    await expect(client.connect('10.0.0.1:80', ['baggage', 'k=€'])).rejects.toMatchObject({ code: 'ERR_HBONE_CONFIG', message: expect.stringMatching(/baggage .*outside Latin-1/) });
    await expect(client.connect('10.0.0.1:80', ['baggage', 'k=\x01'])).rejects.toMatchObject({ code: 'ERR_HBONE_CONFIG' });
    const t = await client.connect('10.0.0.1:80', ['baggage', 'k=caf\u00e9']);
    t.on('error', () => {});
    expect(client.activeStreams).toBe(1);
  });

  it('client: a field block needing more than 8 CONTINUATION frames is refused before it is sent', async () => {
    const { client } = await pair({ maxHeaderListSize: 100_000 });
    const err = await client.connect('10.0.0.1:80', ['x-big', '~'.repeat(9 * 16384 + 100)]).catch((e: unknown) => e);
    expect((err as HboneError).code).toBe('ERR_HBONE_CONFIG');
    const t = await client.connect('10.0.0.1:80', ['x-big', 'v'.repeat(3 * 16384)]);
    t.on('error', () => {});
    expect(t.id).toBe(1);
  });
});
