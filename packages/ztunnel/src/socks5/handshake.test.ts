import { describe, expect, it } from 'vitest';
import { Socks5Handshake } from './handshake.js';

const greeting = Buffer.from([5, 1, 0]);
const connect = (atyp: number, addr: number[], port: number, cmd = 1): Buffer => Buffer.from([5, cmd, 0, atyp, ...addr, port >> 8, port & 0xff]);
const name = (s: string): number[] => [s.length, ...Buffer.from(s, 'latin1')];

describe('Socks5Handshake', () => {
  it('selects no-auth, then parses an IPv4 CONNECT fed byte by byte', () => {
    const hs = new Socks5Handshake();
    expect(hs.push(greeting.subarray(0, 1))).toEqual({ kind: 'more' });
    expect(hs.push(greeting.subarray(1))).toEqual({ kind: 'reply', reply: Buffer.from([5, 0]) });
    const req = connect(1, [10, 0, 0, 7], 8080);
    let step = hs.push(req.subarray(0, 1));
    for (let i = 1; i < req.length; i++) {
      expect(step.kind).toBe('more');
      step = hs.push(req.subarray(i, i + 1));
    }
    expect(step).toEqual({ kind: 'connect', request: { host: '10.0.0.7', port: 8080, addressType: 'ipv4' }, reply: Buffer.alloc(0), rest: Buffer.alloc(0) });
  });

  it('parses IPv6 and domain destinations, greeting and request in one chunk, and keeps bytes sent behind the request', () => {
    const v6 = new Socks5Handshake().push(Buffer.concat([greeting, connect(4, [0xfd, 0, ...Array(13).fill(0), 1], 443), Buffer.from('GET /')]));
    expect(v6).toEqual({
      kind: 'connect',
      request: { host: 'fd00::1', port: 443, addressType: 'ipv6' },
      reply: Buffer.from([5, 0]),
      rest: Buffer.from('GET /'),
    });
    const hs = new Socks5Handshake();
    hs.push(greeting);
    expect(hs.push(connect(3, name('reviews.default.svc.cluster.local.'), 9080))).toMatchObject({
      kind: 'connect',
      request: { host: 'reviews.default.svc.cluster.local', port: 9080, addressType: 'domain' },
    });
    const literal = new Socks5Handshake();
    literal.push(greeting);
    expect(literal.push(connect(3, name('10.1.2.3'), 80))).toMatchObject({ request: { host: '10.1.2.3', addressType: 'ipv4' } });
  });

  it('refuses BIND and UDP ASSOCIATE with 0x07, unknown address types with 0x08, bad names with 0x04', () => {
    for (const cmd of [2, 3, 9]) {
      const hs = new Socks5Handshake();
      hs.push(greeting);
      const step = hs.push(connect(1, [1, 2, 3, 4], 80, cmd));
      expect(step.kind).toBe('fail');
      expect(step.kind === 'fail' && step.reply[1]).toBe(0x07);
    }
    const atyp = new Socks5Handshake();
    atyp.push(greeting);
    expect(atyp.push(Buffer.from([5, 1, 0, 7, 1, 2, 3, 4, 0, 80]))).toMatchObject({ kind: 'fail', reply: Buffer.from([5, 8, 0, 1, 0, 0, 0, 0, 0, 0]) });
    for (const bad of ['', 'a b', 'x'.repeat(64), 'evil\n.com', '-lead.example']) {
      const hs = new Socks5Handshake();
      hs.push(greeting);
      const step = hs.push(connect(3, name(bad), 80));
      expect(step.kind === 'fail' && step.reply[1]).toBe(0x04);
    }
  });

  it('refuses other protocol versions and clients that insist on authentication', () => {
    expect(new Socks5Handshake().push(Buffer.from([4, 1, 0, 80, 1, 2, 3, 4, 0]))).toMatchObject({ kind: 'fail', reply: Buffer.alloc(0) });
    expect(new Socks5Handshake().push(Buffer.from([5, 1, 2]))).toMatchObject({ kind: 'fail', reply: Buffer.from([5, 0xff]) });
    expect(new Socks5Handshake().push(Buffer.from([5, 0]))).toMatchObject({ kind: 'fail', reply: Buffer.from([5, 0xff]) });
    const hs = new Socks5Handshake();
    hs.push(greeting);
    hs.push(connect(1, [1, 2, 3, 4], 80, 2));
    expect(hs.push(Buffer.from([1]))).toMatchObject({ kind: 'fail' });
  });
});
