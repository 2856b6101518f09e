import { createServer } from 'node:http';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readHttpResponse } from './http-response.js';

const b = (s: string) => Buffer.from(s, 'latin1');

/** Feeds `raw` one byte at a time: undefined until the last byte, then the response. */
function byteByByte(raw: string) {
  const all = b(raw);
  for (let n = 0; n < all.length; n++) expect(readHttpResponse(all.subarray(0, n), false)).toBeUndefined();
  return readHttpResponse(all, false);
}

describe('readHttpResponse', () => {
  it('reads a Content-Length body, also when it arrives a byte at a time', () => {
    const res = byteByByte('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\npod captured');
    expect(res?.status).toBe(200);
    expect(res?.body.toString()).toBe('pod captured');
  });

  it('decodes a chunked body with extensions and trailers, and skips interim 1xx responses', () => {
    const raw = 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\npod \r\n8\r\nrejected\r\n0\r\nX-T: 1\r\n\r\n';
    const res = byteByByte(raw);
    expect(res).toMatchObject({ status: 500 });
    expect(res?.body.toString()).toBe('pod rejected');
  });

  it('reads a body without a length to the end of the connection; 204 has none', () => {
    expect(readHttpResponse(b('HTTP/1.0 200 OK\r\n\r\npod not'), false)).toBeUndefined();
    expect(readHttpResponse(b('HTTP/1.0 200 OK\r\n\r\npod not enrolled'), true)?.body.toString()).toBe('pod not enrolled');
    expect(readHttpResponse(b('HTTP/1.1 204 No Content\r\n\r\n'), false)).toEqual({ status: 204, body: Buffer.alloc(0) });
  });

  it('names what is malformed', () => {
    const bad: Array<[string, RegExp]> = [
      ['SSH-2.0-OpenSSH\r\n\r\n', /status line "SSH-2.0-OpenSSH" is not HTTP/],
      ['HTTP/2 200\r\n\r\n', /status line "HTTP\/2 200"/],
      ['HTTP/1.1 200 OK\r\nno colon here\r\n\r\n', /header line 1 "no colon here" is not "name: value"/],
      ['HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n', /Content-Length "-3" is not a number/],
      ['HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n', /two different Content-Length headers \(3, 4\)/],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', /chunk size "zz" at body byte 0 is not hex/],
      ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n', /chunk of 2 bytes at body byte 3 is not followed by CRLF/],
    ];
    for (const [raw, message] of bad) expect(() => readHttpResponse(b(raw), false), raw).toThrow(message);
    expect(() => readHttpResponse(Buffer.alloc(17 * 1024, 0x41), false)).toThrow(/response head longer than 16384 bytes/);
  });

  it('an early close is an error once a response has begun', () => {
    expect(readHttpResponse(Buffer.alloc(0), true)).toBeUndefined();
    expect(() => readHttpResponse(b('HTTP/1.1 200 OK\r\nContent-Len'), true)).toThrow(/closed inside the response head after 28 bytes/);
    expect(() => readHttpResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\npod'), true)).toThrow(/closed after 3 of 12 body bytes/);
    expect(() => readHttpResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\npo'), true)).toThrow(/closed inside the chunked body/);
  });
});

describe('readHttpResponse against node:http', () => {
  const dir = mkdtempSync(join(tmpdir(), 'weir-httpres-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads what a node:http server writes: fixed length, chunked, and with Connection: close', async () => {
    const socketPath = join(dir, 's.sock');
    const server = createServer((req, res) => {
      if (req.url === '/chunked') {
        res.write('pod ');
        setTimeout(() => res.end('captured'), 10);
      } else {
        res.writeHead(503, { 'Content-Type': 'text/plain' }).end('not ready');
      }
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const ask = (path: string) =>
        new Promise<ReturnType<typeof readHttpResponse>>((resolve, reject) => {
          const s = connect({ path: socketPath });
          let buf = Buffer.alloc(0);
          s.on('data', (c: Buffer) => {
            buf = Buffer.concat([buf, c]);
            const res = readHttpResponse(buf, false);
            if (res) {
              s.destroy();
              resolve(res);
            }
          });
          s.on('error', reject);
          s.on('end', () => resolve(readHttpResponse(buf, true)));
          s.write(`GET ${path} HTTP/1.1\r\nHost: unix\r\nConnection: close\r\n\r\n`);
        });
      const chunked = await ask('/chunked');
      expect(chunked?.status).toBe(200);
      expect(chunked?.body.toString()).toBe('pod captured');
      const fixed = await ask('/other');
      expect(fixed?.status).toBe(503);
      expect(fixed?.body.toString()).toBe('not ready');
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
