import * as dnsPacket from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { buildResponse, headerOnlyResponse, isTruncated, parseQuery, responseRcode } from './message.js';

const query = (name: string, type: 'A' | 'AAAA' | 'TXT' = 'A', edns?: number): Buffer =>
  dnsPacket.encode({
    type: 'query',
    id: 4242,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name, class: 'IN' }],
    additionals:
      edns === undefined
        ? []
        : [{ type: 'OPT', name: '.', udpPayloadSize: edns, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }],
  });

describe('DNS messages', () => {
  it('drops what is not a query and rejects what it cannot work on, without throwing', () => {
    expect(parseQuery(Buffer.alloc(5)).kind).toBe('drop');
    const response = Buffer.from(query('a.example'));
    response.writeUInt16BE(response.readUInt16BE(2) | 0x8000, 2);
    expect(parseQuery(response)).toMatchObject({ kind: 'drop' });
    const notify = Buffer.from(query('a.example'));
    notify.writeUInt16BE((4 << 11) | 0x0100, 2);
    expect(parseQuery(notify)).toMatchObject({ kind: 'error', rcode: 'NOTIMP' });
    const truncated = query('a.example').subarray(0, 17);
    expect(parseQuery(truncated)).toMatchObject({ kind: 'error', rcode: 'FORMERR' });
    const twoQuestions = dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'a' }, { type: 'A', name: 'b' }] });
    expect(parseQuery(twoQuestions)).toMatchObject({ kind: 'error', rcode: 'FORMERR' });
    // A compression pointer loop and a name over 255 bytes.
    const loop = Buffer.concat([query('a').subarray(0, 12), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    expect(parseQuery(loop)).toMatchObject({ kind: 'error', rcode: 'FORMERR' });
    const long = Buffer.concat([query('a').subarray(0, 12), ...Array.from({ length: 5 }, () => Buffer.from([63, ...Buffer.alloc(63, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]);
    expect(parseQuery(long)).toMatchObject({ kind: 'error', rcode: 'FORMERR' });
  });

  it('answers with the id, RD, the question, and FORMERR headers keep the id', () => {
    const q = parseQuery(query('Svc.Example', 'A', 1232));
    if (q.kind !== 'query') throw new Error(q.reason);
    expect(q.udpLimit).toBe(1232);
    const r = dnsPacket.decode(buildResponse(q, 'NOERROR', [{ type: 'A', name: 'Svc.Example', ttl: 30, data: '10.0.0.1' }], { authoritative: true, transport: 'udp' }));
    expect(r).toMatchObject({ id: 4242, flag_qr: true, flag_aa: true, flag_rd: true, flag_ra: true, rcode: 'NOERROR' });
    expect(r.questions).toEqual([{ type: 'A', name: 'Svc.Example', class: 'IN' }]);
    expect(r.answers?.[0]).toMatchObject({ type: 'A', data: '10.0.0.1', ttl: 30 });
    expect(r.additionals?.[0]?.type).toBe('OPT');
    const h = headerOnlyResponse(query('x'), 'FORMERR');
    expect(h.readUInt16BE(0)).toBe(4242);
    expect(responseRcode(h)).toBe('FORMERR');
  });

  it('truncates a UDP answer that does not fit the client, never a TCP one', () => {
    const q = parseQuery(query('many.example'));
    if (q.kind !== 'query') throw new Error(q.reason);
    const answers = Array.from({ length: 60 }, (_, i) => ({ type: 'A' as const, name: 'many.example', ttl: 30, data: `10.1.0.${i}` }));
    const udp = buildResponse(q, 'NOERROR', answers, { authoritative: true, transport: 'udp' });
    expect(udp.length).toBeLessThanOrEqual(512);
    expect(isTruncated(udp)).toBe(true);
    const tcp = buildResponse(q, 'NOERROR', answers, { authoritative: true, transport: 'tcp' });
    expect(isTruncated(tcp)).toBe(false);
    expect(dnsPacket.decode(tcp).answers).toHaveLength(60);
  });
});
