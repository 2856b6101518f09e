import { createHash, randomBytes } from 'node:crypto';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { LocalCa, type WorkloadCertificate } from '@weir/pki';
import { HboneClient, createHboneServer, type HboneServer, type HboneServerOptions, type HboneTlsOptions } from '../src/index.js';

export const TD = 'cluster.local';
export const SERVER_ID = `spiffe://${TD}/ns/server-ns/sa/server-sa`;
export const CLIENT_ID = `spiffe://${TD}/ns/client-ns/sa/client-sa`;

export interface Pki {
  ca: LocalCa;
  server: WorkloadCertificate;
  client: WorkloadCertificate;
}

export async function makePki(trustDomain = TD): Promise<Pki> {
  const ca = await LocalCa.create({ trustDomain, notBefore: new Date(Date.now() - 30 * 86_400_000) });
  const server = await ca.issueWorkloadCertificate({ identity: SERVER_ID.replace(TD, trustDomain) });
  const client = await ca.issueWorkloadCertificate({ identity: CLIENT_ID.replace(TD, trustDomain) });
  return { ca, server, client };
}

export function tlsOf(wl: WorkloadCertificate, bundle: string = wl.rootPem): HboneTlsOptions {
  return { key: wl.keyPem, cert: wl.chainPem, ca: bundle };
}

export interface TcpServer {
  port: number;
  server: net.Server;
  sockets: Set<net.Socket>;
  close(): Promise<void>;
}

/** A TCP echo server that keeps half-closes: it ends its side only after the client ended. */
export async function echoServer(): Promise<TcpServer> {
  return tcpServer((s) => s.pipe(s));
}

export async function tcpServer(onSocket: (s: net.Socket) => void): Promise<TcpServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s);
  });
  await new Promise<void>((r) => server.listen({ host: '127.0.0.1', port: 0 }, r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    server,
    sockets,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** Connects to 127.0.0.1:port and resolves once connected (a connect hook for the server). */
export function dial(port: number, host = '127.0.0.1'): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Writes `data` to `d`, ends it, and collects everything `d` yields until its end. */
export async function roundTrip(d: Duplex, data: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    d.on('data', (c: Buffer) => chunks.push(c));
    d.once('end', () => resolve());
    d.once('error', reject);
  });
  d.end(data);
  await done;
  return Buffer.concat(chunks);
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export function random(n: number): Buffer {
  return randomBytes(n);
}

/** Writes `data` and collects exactly as many bytes back, without relying on the peer to pass a half-close on. */
export async function exchange(d: Duplex, data: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  const done = new Promise<void>((resolve, reject) => {
    d.on('data', (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got >= data.length) resolve();
    });
    d.once('end', () => resolve());
    d.once('error', reject);
  });
  d.write(data);
  await done;
  return Buffer.concat(chunks);
}

export interface HboneEcho {
  pki: Pki;
  echo: TcpServer;
  server: HboneServer;
  /** The HBONE server's port on 127.0.0.1. */
  port: number;
  client: HboneClient;
  /** How many times the server called connect (reached for an upstream). */
  connects: number;
  /** A tunnel from `client` through `server` to 127.0.0.1:targetPort (default the echo server). */
  open(o?: { targetPort?: number; headers?: Record<string, string>; signal?: AbortSignal }): Promise<Duplex>;
  close(): Promise<void>;
}

/**
 * An echo server behind an HBONE server (its TLS from a fresh PKI, the rest of its options from
 * `options`; connect defaults to dialing the target) and a client trusting it.
 */
export async function hboneEcho(options: Omit<HboneServerOptions, 'tls' | 'connect'> & Partial<Pick<HboneServerOptions, 'connect'>>): Promise<HboneEcho> {
  const pki = await makePki();
  const echo = await echoServer();
  const connect = options.connect ?? ((t) => dial(t.port, t.host));
  const server = createHboneServer({
    ...options,
    tls: tlsOf(pki.server),
    connect: (t, ctx) => {
      bed.connects++;
      return connect(t, ctx);
    },
  });
  let port: number;
  try {
    port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
  } catch (err) {
    await echo.close();
    throw err;
  }
  const client = new HboneClient({ tls: tlsOf(pki.client) });
  const bed: HboneEcho = {
    pki,
    echo,
    server,
    port,
    client,
    connects: 0,
    open: (o = {}) =>
      client.connect({
        peer: { host: '127.0.0.1', port },
        target: { host: '127.0.0.1', port: o.targetPort ?? echo.port },
        expectedIdentities: [SERVER_ID],
        ...(o.headers ? { headers: o.headers } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
      }),
    close: async () => {
      await client.close({ deadlineMs: 200 });
      await server.close({ deadlineMs: 500 });
      await echo.close();
    },
  };
  return bed;
}
