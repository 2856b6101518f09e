import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as tlsServer } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { parsePcap, parseTlsRecords, tcpStreams } from './pcap.js';

/** Bytes one TLS 1.3 session really puts on the wire each way (through a recording TCP relay). */
async function recordTlsSession(): Promise<{ client: Buffer[]; server: Buffer[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'we2e-pcap-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=t', '-days', '1', '-keyout', join(dir, 'k'), '-out', join(dir, 'c')], { stdio: 'ignore' });
    const server = tlsServer({ key: readFileSync(join(dir, 'k')), cert: readFileSync(join(dir, 'c')), minVersion: 'TLSv1.3' }, (s) => s.end('pong'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client: Buffer[] = [];
    const fromServer: Buffer[] = [];
    const relay = createServer((inbound: Socket) => {
      const upstream = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
      inbound.on('data', (d: Buffer) => (client.push(d), upstream.write(d)));
      upstream.on('data', (d: Buffer) => (fromServer.push(d), inbound.write(d)));
      inbound.on('end', () => upstream.end());
      upstream.on('end', () => inbound.end());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    await new Promise<void>((resolve, reject) => {
      const s = tlsConnect({ port: (relay.address() as AddressInfo).port, host: '127.0.0.1', rejectUnauthorized: false }, () => s.write('GET /secret HTTP/1.1\r\n\r\n'));
      s.on('data', () => undefined);
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    relay.close();
    server.close();
    return { client, server: fromServer };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A pcap (Ethernet, IPv4) of the given segments, in the order given. */
function pcapOf(segments: Array<{ src: string; dst: string; sport: number; dport: number; seq: number; syn?: boolean; payload: Buffer }>): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(65535, 16);
  header.writeUInt32LE(1, 20);
  const frames = segments.map((s) => {
    const tcp = Buffer.alloc(20);
    tcp.writeUInt16BE(s.sport, 0);
    tcp.writeUInt16BE(s.dport, 2);
    tcp.writeUInt32BE(s.seq >>> 0, 4);
    tcp[12] = 5 << 4;
    tcp[13] = s.syn ? 0x02 : 0x18;
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + 20 + s.payload.length, 2);
    ip[8] = 64;
    ip[9] = 6;
    Buffer.from(s.src.split('.').map(Number)).copy(ip, 12);
    Buffer.from(s.dst.split('.').map(Number)).copy(ip, 16);
    const eth = Buffer.alloc(14);
    eth.writeUInt16BE(0x0800, 12);
    const frame = Buffer.concat([eth, ip, tcp, s.payload]);
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(frame.length, 8);
    rec.writeUInt32LE(frame.length, 12);
    return Buffer.concat([rec, frame]);
  });
  return Buffer.concat([header, ...frames]);
}

function segmentsOf(chunks: Buffer[], src: string, dst: string, sport: number, dport: number, isn: number) {
  let seq = isn + 1;
  const out: Array<{ src: string; dst: string; sport: number; dport: number; seq: number; syn: boolean; payload: Buffer }> = [{ src, dst, sport, dport, seq: isn, syn: true, payload: Buffer.alloc(0) }];
  for (const c of chunks) {
    out.push({ src, dst, sport, dport, seq, syn: false, payload: c });
    seq += c.length;
  }
  return out;
}

describe('pcap + TLS record parsing', () => {
  it('reassembles out-of-order, retransmitted segments and recognises a real TLS 1.3 session', async () => {
    const session = await recordTlsSession();
    const c = segmentsOf(session.client, '10.0.0.1', '10.0.0.2', 40000, 15008, 0xfffffff0);
    const s = segmentsOf(session.server, '10.0.0.2', '10.0.0.1', 15008, 40000, 12345);
    // Reverse the data segments and retransmit one: order on the wire must not matter.
    const shuffled = [c[0]!, s[0]!, ...c.slice(1).reverse(), ...s.slice(1), s[1]!];
    const streams = tcpStreams(parsePcap(pcapOf(shuffled)));
    expect(streams.map((x) => x.key).sort()).toEqual(['10.0.0.1:40000>10.0.0.2:15008', '10.0.0.2:15008>10.0.0.1:40000']);
    const up = streams.find((x) => x.dport === 15008)!;
    const down = streams.find((x) => x.sport === 15008)!;
    expect(up.bytes.equals(Buffer.concat(session.client))).toBe(true);
    expect(down.bytes.equals(Buffer.concat(session.server))).toBe(true);

    const hello = parseTlsRecords(up.bytes);
    expect(hello.error).toBeUndefined();
    expect(hello.trailing).toBe(0);
    expect(hello.records[0]).toMatchObject({ type: 22, handshakeType: 1 });
    expect(hello.records.some((r) => r.type === 23)).toBe(true);
    const reply = parseTlsRecords(down.bytes);
    expect(reply.records[0]).toMatchObject({ type: 22, handshakeType: 2, selectedVersion: 0x0304 });
    expect(up.bytes.includes('GET /secret')).toBe(false);
  });

  it('rejects plaintext as not TLS', () => {
    const parsed = parseTlsRecords(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    expect(parsed.records).toEqual([]);
    expect(parsed.error).toMatch(/not a TLS record header/);
  });
});
