/* global process, console, setTimeout */
// One side of a benchmarked tunnel, in its own process (as in production: one proxy per node).
// argv[2] = mode, argv[3] = JSON config. Prints `READY <port>` when listening and answers `rss` on
// stdin with `RSS <bytes> HEAP <heap used> YOUNG <new space size>` (after a GC), so the orchestrator can measure memory per tunnel.
import { readFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import v8 from 'node:v8';
import { HboneClient, bridge, createHboneServer } from '@weir/hbone';

// As weir-ztunnel applies its V8 flags to itself at start (see HBONE_BENCH_V8_FLAGS in index.mjs).
for (const flag of (process.env.HBONE_BENCH_V8_FLAGS ?? '').split(/\s+/).filter((x) => x !== '')) v8.setFlagsFromString(flag);
const [mode, json] = process.argv.slice(2);
// Exit normally on SIGTERM so --cpu-prof and friends can write their output.
process.on('SIGTERM', () => process.exit(0));
const cfg = JSON.parse(json);
const pem = (f) => readFileSync(f, 'utf8');
const tlsOpts = { key: pem(cfg.key), cert: pem(cfg.cert), ca: pem(cfg.ca) };
const CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384';

// HBONE_BENCH_GC=1: record every GC (wall-clock start in ms, duration in ms, kind) and print them on
// the `gc` command as `GC [[start, ms, kind], …]`, so the orchestrator can tell which slow opens a GC
// pause in the client or the server overlapped.
const now = () => performance.timeOrigin + performance.now();
const GC_DIAG = Boolean(process.env.HBONE_BENCH_GC);
let gcEvents = [];
if (GC_DIAG) {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcEvents.push([Number((performance.timeOrigin + e.startTime).toFixed(3)), Number(e.duration.toFixed(3)), e.detail?.kind ?? e.kind]);
  }).observe({ entryTypes: ['gc'] });
}

const nextWaiters = [];
const nextLine = () => new Promise((r) => nextWaiters.push(r));
// Any other line is a command (`round N`, `churn N`, `exit`) for the open-latency mode, read in order.
const commands = [];
const commandWaiters = [];
const nextCommand = () => (commands.length > 0 ? Promise.resolve(commands.shift()) : new Promise((r) => commandWaiters.push(r)));
createInterface({ input: process.stdin }).on('line', (l) => {
  if (l.trim() === 'next') nextWaiters.shift()?.();
  else if (l.trim() === 'gc') {
    console.log(`GC ${JSON.stringify(gcEvents)}`);
    gcEvents = [];
  } else if (l.trim() !== 'rss') {
    const w = commandWaiters.shift();
    if (w) w(l.trim());
    else commands.push(l.trim());
  }
  if (l.trim() === 'rss') {
    globalThis.gc?.();
    setTimeout(() => {
      globalThis.gc?.();
      console.log(`RSS ${process.memoryUsage().rss} ${heapFigures()}`);
    }, 200);
  }
});

// What part of RSS is live JS objects and what is V8's young generation (which grows to its
// maximum while many long-lived objects are allocated and does not shrink on a forced GC).
const heapFigures = () => `HEAP ${process.memoryUsage().heapUsed} YOUNG ${v8.getHeapSpaceStatistics().find((x) => x.space_name === 'new_space')?.space_size ?? 0}`;

const dialTcp = (host, port) =>
  new Promise((resolve, reject) => {
    const s = net.connect({ host, port, noDelay: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });

/**
 * Opens cfg.n idle tunnels with `open` in two halves, reporting RSS (after GC) at the start, the
 * middle and the end; the orchestrator has the server report its own at the same points. 200
 * tunnels opened and closed first: the peers' open path warm, as on a running proxy.
 */
async function idleTunnels(open, sessions) {
  const warm = [];
  for (let i = 0; i < 200; i++) warm.push(await open());
  for (const t of warm) t.destroy();
  const settledRss = async () => {
    globalThis.gc?.();
    await new Promise((r) => setTimeout(r, 300));
    globalThis.gc?.();
    return process.memoryUsage().rss;
  };
  const tunnels = [];
  const openMany = async (n) => {
    for (let i = 0; i < n; i += 100) tunnels.push(...(await Promise.all(Array.from({ length: Math.min(100, n - i) }, open))));
  };
  console.log(`BASE ${await settledRss()} ${heapFigures()}`);
  await nextLine();
  await openMany(Math.floor(cfg.n / 2));
  console.log(`MID ${await settledRss()}`);
  await nextLine();
  await openMany(cfg.n - tunnels.length);
  console.log(`END ${await settledRss()} ${tunnels.length} ${sessions()} ${heapFigures()}`);
}

/**
 * The open-latency client's command loop (as hbonepeer.go -mode open-latency), on a warm session (one
 * tunnel held open): `round N` opens N tunnels one at a time with `open`, closing each gracefully, and
 * prints `ROUND [ms, …]` (open called → 200 received); `churn N` opens and closes N, 8 at a time, and
 * prints `CHURN-DONE N`; `exit` closes the session with `close`.
 */
async function openLatency(open, close) {
  const warm = await open();
  // Graceful (END_STREAM both ways, as a finished connection; no RST_STREAM, so no reset budget).
  const closeGracefully = (t) =>
    new Promise((r) => {
      t.once('close', r);
      t.resume();
      t.end();
    });
  console.log('OPEN-READY');
  for (;;) {
    const [cmd, arg] = (await nextCommand()).split(' ');
    const n = Number(arg);
    if (cmd === 'round') {
      const lat = [];
      // With HBONE_BENCH_GC, when each open started (wall clock, ms), printed before the latencies.
      const at = [];
      for (let i = 0; i < n; i++) {
        if (GC_DIAG) at.push(Number(now().toFixed(3)));
        const start = process.hrtime.bigint();
        const t = await open();
        lat.push(Number(process.hrtime.bigint() - start) / 1e6);
        await closeGracefully(t);
      }
      if (at.length > 0) console.log(`ROUNDAT ${JSON.stringify(at)}`);
      console.log(`ROUND ${JSON.stringify(lat)}`);
    } else if (cmd === 'churn') {
      // 8 at a time; the orchestrator reads both processes' CPU before the command and after the answer.
      let left = n;
      const worker = async () => {
        while (left-- > 0) await closeGracefully(await open());
      };
      await Promise.all(Array.from({ length: 8 }, worker));
      console.log(`CHURN-DONE ${n}`);
    } else if (cmd === 'exit') break;
  }
  warm.destroy();
  await close();
  process.exitCode = 0;
  setTimeout(() => process.kill(process.pid, 'SIGTERM'), 50).unref();
}

const listen = (server) => server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port}`));

switch (mode) {
  case 'weir-server': {
    const s = createHboneServer({ tls: tlsOpts, connect: (t) => dialTcp(t.host, t.port) });
    const { port } = await s.listen({ host: '127.0.0.1', port: 0 });
    console.log(`READY ${port}`);
    break;
  }
  case 'weir-front': {
    const c = new HboneClient({ tls: tlsOpts });
    listen(
      net.createServer({ noDelay: true }, (sock) => {
        sock.on('error', () => {});
        c.connect({ peer: cfg.peer, target: cfg.target, expectedIdentities: [cfg.expect] }).then(
          (t) => bridge(t, sock),
          (err) => {
            console.error(err.message);
            sock.destroy();
          },
        );
      }),
    );
    break;
  }
  case 'tls-server': {
    listen(
      tls.createServer({ ...tlsOpts, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ciphers: CIPHERS }, (sock) => {
        sock.setNoDelay(true);
        sock.on('error', () => {});
        dialTcp(cfg.target.host, cfg.target.port).then(
          (up) => {
            up.on('error', () => sock.destroy());
            sock.pipe(up).on('error', () => {});
            up.pipe(sock);
          },
          () => sock.destroy(),
        );
      }),
    );
    break;
  }
  case 'tls-front': {
    const secureContext = tls.createSecureContext({ ...tlsOpts, minVersion: 'TLSv1.3', ciphers: CIPHERS });
    listen(
      net.createServer({ noDelay: true }, (sock) => {
        sock.on('error', () => {});
        const up = tls.connect({ host: cfg.peer.host, port: cfg.peer.port, secureContext, checkServerIdentity: () => undefined });
        up.on('error', () => sock.destroy());
        up.setNoDelay(true);
        sock.pipe(up);
        up.pipe(sock);
      }),
    );
    break;
  }
  case 'weir-open-latency': {
    // Serves the orchestrator's commands on stdin (as hbonepeer.go -mode open-latency), see openLatency.
    const opts = { peer: cfg.peer, target: cfg.target, expectedIdentities: [cfg.expect] };
    // JIT warm-up (a proxy runs warm): opens on a session of their own, so the measured session
    // starts with a fresh RST_STREAM budget (the server's nghttp2 limits resets per session).
    if (cfg.warmup > 0) {
      const w = new HboneClient({ tls: tlsOpts });
      for (let i = 0; i < cfg.warmup; i++) (await w.connect(opts)).destroy();
      await w.close({ deadlineMs: 100 });
    }
    const c = new HboneClient({ tls: tlsOpts });
    await openLatency(() => c.connect(opts), () => c.close({ deadlineMs: 100 }));
    break;
  }
  case 'h2-open-latency': {
    // The same rounds through a bare node:http2 client (no Weir code, Node's defaults) to the bare
    // h2-server: what any HBONE on node:http2 gets, for scale (HBONE_BENCH_BARE in index.mjs).
    const session = () => {
      const s = http2.connect(`https://${cfg.peer.host}:${cfg.peer.port}`, { ...tlsOpts, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
      s.on('error', () => {});
      return s;
    };
    const open = (s) =>
      new Promise((resolve, reject) => {
        const stream = s.request({ ':method': 'CONNECT', ':authority': `${cfg.target.host}:${cfg.target.port}` });
        stream.once('response', (h) => (h[':status'] === 200 ? resolve(stream) : reject(new Error(`status ${h[':status']}`))));
        stream.once('error', reject);
      });
    if (cfg.warmup > 0) {
      const w = session();
      for (let i = 0; i < cfg.warmup; i++) (await open(w)).destroy();
      w.close();
    }
    const s = session();
    await openLatency(
      () => open(s),
      () => new Promise((r) => s.close(r)),
    );
    break;
  }
  case 'weir-rss': {
    const c = new HboneClient({ tls: tlsOpts });
    const opts = { peer: cfg.peer, target: cfg.target, expectedIdentities: [cfg.expect] };
    await idleTunnels(() => c.connect(opts), () => c.stats().sessions);
    break;
  }
  case 'h2-server': {
    // A bare HBONE server on node:http2, for scale: mutual TLS 1.3, CONNECT → a TCP connection to
    // the target → 200, piped both ways. No Weir code, Node's default settings.
    const s = http2.createSecureServer({ ...tlsOpts, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
    s.on('stream', (stream, headers) => {
      stream.on('error', () => {});
      const authority = headers[':authority'] ?? '';
      const at = authority.lastIndexOf(':');
      if (headers[':method'] !== 'CONNECT' || at < 0) return stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      const up = net.connect({ host: authority.slice(0, at), port: Number(authority.slice(at + 1)), noDelay: true });
      up.on('error', () => stream.destroy());
      up.once('connect', () => {
        stream.respond({ ':status': 200 });
        stream.pipe(up);
        up.pipe(stream);
      });
    });
    listen(s);
    break;
  }
  case 'h2-rss': {
    // The same idle tunnels as weir-rss through a bare node:http2 client: a new session per 100
    // streams (as the Weir pool), CONNECT, 200. No Weir code, Node's default settings.
    const sessions = [];
    let session;
    let streams = 0;
    const open = () => {
      if (session === undefined || streams === 100) {
        session = http2.connect(`https://${cfg.peer.host}:${cfg.peer.port}`, { ...tlsOpts, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
        session.on('error', () => {});
        sessions.push(session);
        streams = 0;
      }
      streams++;
      const stream = session.request({ ':method': 'CONNECT', ':authority': `${cfg.target.host}:${cfg.target.port}` });
      return new Promise((resolve, reject) => {
        stream.once('response', (h) => (h[':status'] === 200 ? resolve(stream) : reject(new Error(`status ${h[':status']}`))));
        stream.once('error', reject);
      });
    };
    await idleTunnels(open, () => sessions.filter((x) => !x.closed && !x.destroyed).length);
    break;
  }
  default:
    console.error(`unknown mode ${mode}`);
    process.exitCode = 2;
}
