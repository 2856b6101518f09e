// The codec against nghttp2 (node:http2) over plain TCP (h2c, prior knowledge) on loopback: what
// nghttp2 encodes we decode, and what we encode nghttp2 accepts.
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { RawPeer } from '../../test/h2-peer.js';
import {
  CLIENT_PREFACE,
  FrameType,
  encodeDataHeader,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodeSettings,
} from './frames.js';

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});

const headerObject = (flat: string[] | undefined): Record<string, string> => {
  const o: Record<string, string> = {};
  for (let i = 0; flat !== undefined && i < flat.length; i += 2) o[flat[i] ?? ''] = flat[i + 1] ?? '';
  return o;
};

const LONG = 'k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=web,service.name=web,service.version=v1'.repeat(3);

describe('h2 codec ↔ nghttp2 (node:http2, h2c)', () => {
  it('decodes what a node:http2 client sends, and the client accepts our SETTINGS, HEADERS, DATA, PING ACK, GOAWAY', async () => {
    const peers: RawPeer[] = [];
    const server = net.createServer((socket) => {
      const peer = new RawPeer(socket, { expectPreface: true, ackSettings: true });
      peers.push(peer);
      socket.write(encodeSettings({ maxConcurrentStreams: 100, initialWindowSize: 1 << 20, maxHeaderListSize: 65536 }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanup.push(() => server.close());
    const { port } = server.address() as net.AddressInfo;
    const client = http2.connect(`http://127.0.0.1:${port}`);
    cleanup.push(() => client.destroy());
    const goaway = once(client, 'goaway');

    const request = { ':path': '/a', 'x-weir': 'one', baggage: LONG, traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' };
    const r1 = client.request(request);
    r1.end();
    await once(client, 'connect');
    const peer = peers[0];
    if (peer === undefined) throw new Error('no connection');
    await peer.next((f) => f.type === FrameType.HEADERS && f.streamId === 1);
    // Same fields again: nghttp2 now refers to its dynamic table, which ours must mirror.
    const r2 = client.request(request);
    r2.end();
    await peer.next((f) => f.type === FrameType.HEADERS && f.streamId === 3);
    const tunnel = client.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:8080', baggage: LONG });
    tunnel.write('ping');
    await peer.next((f) => f.type === FrameType.DATA && f.streamId === 5);

    for (const id of [1, 3]) {
      expect(headerObject(peer.headers.get(id)?.[0])).toMatchObject({ ':method': 'GET', ':scheme': 'http', ...request });
    }
    expect(peer.blocks[1]?.length).toBeLessThan((peer.blocks[0]?.length ?? 0) / 4);
    expect(peer.decoder.tableLength).toBeGreaterThan(2);
    expect(headerObject(peer.headers.get(5)?.[0])).toEqual({ ':method': 'CONNECT', ':authority': '10.0.0.1:8080', baggage: LONG });
    expect(peer.body(5)).toBe('ping');
    expect(peer.frames.some((f) => f.type === FrameType.SETTINGS && f.ack)).toBe(true);

    // Our answers: a response split over CONTINUATION frames, DATA, a PING ACK, GOAWAY.
    const responses = [r1, r2].map((r) => new Promise<http2.IncomingHttpHeaders>((resolve) => r.on('response', resolve)));
    const bodies = [r1, r2].map(async (r) => {
      let s = '';
      for await (const c of r) s += String(c);
      return s;
    });
    const fields = [':status', '200', 'x-reply', 'v'.repeat(300), 'content-type', 'text/plain', 'server', 'weir'];
    for (const id of [1, 3]) {
      peer.socket.write(encodeHeaders(id, peer.encoder.encode(fields), false, 100));
      peer.socket.write(Buffer.concat([encodeDataHeader(id, 5, true), Buffer.from(`bye ${id}`)]));
    }
    const [h1, h3] = await Promise.all(responses);
    expect(h1).toMatchObject({ ':status': 200, 'x-reply': 'v'.repeat(300), 'content-type': 'text/plain', server: 'weir' });
    expect(h3).toMatchObject({ ':status': 200, 'x-reply': 'v'.repeat(300) });
    expect(await Promise.all(bodies)).toEqual(['bye 1', 'bye 3']);

    const tunnelResponse = new Promise<http2.IncomingHttpHeaders>((resolve) => tunnel.on('response', resolve));
    peer.socket.write(encodeHeaders(5, peer.encoder.encode([':status', '200']), false));
    peer.socket.write(Buffer.concat([encodeDataHeader(5, 4, false), Buffer.from('pong')]));
    expect((await tunnelResponse)[':status']).toBe(200);
    const [pong] = (await once(tunnel, 'data')) as [Buffer];
    expect(pong.toString()).toBe('pong');

    const pinged = new Promise<Buffer>((resolve, reject) => client.ping(Buffer.from('weir-ok!'), (err, _ms, payload) => (err ? reject(err) : resolve(payload))));
    const ping = await peer.next((f) => f.type === FrameType.PING && !f.ack);
    if (ping.type !== FrameType.PING) throw new Error('not a PING');
    peer.socket.write(encodePing(ping.opaque, true));
    expect((await pinged).toString()).toBe('weir-ok!');

    peer.socket.write(encodeGoaway(5, 0, Buffer.from('done')));
    const [code, lastStreamId, debug] = (await goaway) as [number, number, Buffer];
    expect([code, lastStreamId, debug.toString()]).toEqual([0, 5, 'done']);
  });

  it('a node:http2 server accepts our preface, SETTINGS, HEADERS (with CONTINUATION) and DATA; we decode its answers', async () => {
    const seen: http2.IncomingHttpHeaders[] = [];
    const server = http2.createServer();
    server.on('stream', (stream, headers) => {
      seen.push(headers);
      if (headers[':method'] === 'CONNECT') {
        stream.respond({ ':status': 200 });
        stream.pipe(stream); // echo, END_STREAM after ours
        return;
      }
      stream.respond({ ':status': 200, 'x-reply': `for ${headers[':path']}`, 'set-cookie': ['a=1', 'b=2'], 'cache-control': 'no-store' });
      stream.end(`body of ${headers[':path']}`);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanup.push(() => server.close());
    const { port } = server.address() as net.AddressInfo;
    const socket = net.connect(port, '127.0.0.1');
    cleanup.push(() => socket.destroy());
    await once(socket, 'connect');
    const peer = new RawPeer(socket, { expectPreface: false, ackSettings: true });

    const get = (path: string): string[] => [':method', 'GET', ':scheme', 'http', ':path', path, ':authority', `127.0.0.1:${port}`, 'baggage', LONG, 'x-big', 'q'.repeat(20000)];
    socket.write(Buffer.concat([CLIENT_PREFACE, encodeSettings({ enablePush: 0, initialWindowSize: 1 << 20, maxHeaderListSize: 65536 })]));
    socket.write(encodeHeaders(1, peer.encoder.encode(get('/one')), true));
    // 4000-byte fragments: HEADERS + 4 CONTINUATION (nghttp2 refuses more than 8 since CVE-2024-28182).
    socket.write(encodeHeaders(3, peer.encoder.encode(get('/two')), true, 4000));
    socket.write(encodeHeaders(5, peer.encoder.encode([':method', 'CONNECT', ':authority', '10.0.0.1:8080', 'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01']), false));
    socket.write(Buffer.concat([encodeDataHeader(5, 5, false), Buffer.from('hello'), encodeDataHeader(5, 0, true)]));
    socket.write(encodePing(Buffer.from('12345678'), false));

    await peer.next((f) => f.type === FrameType.DATA && f.streamId === 3 && f.endStream);
    await peer.next((f) => f.type === FrameType.DATA && f.streamId === 5 && f.endStream);
    await peer.next((f) => f.type === FrameType.PING && f.ack);

    expect(seen.map((h) => [h[':method'], h[':path'], h[':authority']])).toEqual([
      ['GET', '/one', `127.0.0.1:${port}`],
      ['GET', '/two', `127.0.0.1:${port}`],
      ['CONNECT', undefined, '10.0.0.1:8080'],
    ]);
    expect(seen[0]?.['x-big']).toBe('q'.repeat(20000));
    expect(seen[1]?.baggage).toBe(LONG);
    expect(seen[2]?.traceparent).toBe('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');

    const answer = (id: number): Record<string, string> => headerObject(peer.headers.get(id)?.[0]);
    expect(answer(1)).toMatchObject({ ':status': '200', 'x-reply': 'for /one', 'cache-control': 'no-store' });
    expect(peer.headers.get(1)?.[0]?.filter((_, i, a) => a[i - 1] === 'set-cookie')).toEqual(['a=1', 'b=2']);
    expect(answer(3)).toMatchObject({ ':status': '200', 'x-reply': 'for /two', 'cache-control': 'no-store' });
    expect(answer(5)).toMatchObject({ ':status': '200' });
    expect(peer.body(1)).toBe('body of /one');
    expect(peer.body(3)).toBe('body of /two');
    expect(peer.body(5)).toBe('hello');
    // nghttp2 indexed the first answer's fields; the second answer refers to them.
    expect(peer.blocks[1]?.length).toBeLessThan(peer.blocks[0]?.length ?? 0);
    expect(peer.decoder.tableLength).toBeGreaterThan(0);
    const ping = peer.frames.find((f) => f.type === FrameType.PING);
    expect(ping).toMatchObject({ ack: true, opaque: Buffer.from('12345678') });
    expect(peer.frames.some((f) => f.type === FrameType.GOAWAY || f.type === FrameType.RST_STREAM)).toBe(false);

    const closed = peer.next((f) => f.type === FrameType.GOAWAY);
    server.close();
    for (const s of [socket]) s.end();
    await Promise.race([closed, once(socket, 'close')]);
  });
});
