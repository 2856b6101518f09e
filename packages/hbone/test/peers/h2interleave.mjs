/* global process, console, Buffer, setImmediate, setTimeout */
// A mesh client that makes a server keep whole read buffers for a few bytes: one byte on each of
// `streams` CONNECT streams (to an app that stopped reading) per event-loop turn, in the same TLS
// records as 64 KiB for a stream whose app reads everything. Node keeps each byte as a slice of the
// buffer the session read it in. argv[2]: JSON { port, key, cert, ca, stalled, sink, streams, seconds }.
// Prints `READY` once all streams are answered, then one JSON line { ok, status, resets, turns }.
import { connectPeer, reportAfter } from './client-session.mjs';

const cfg = JSON.parse(process.argv[2]);
const session = connectPeer(cfg);
const out = { ok: 0, status: {}, resets: {}, turns: 0 };
const tiny = [];
let bulk;
let stopping = false;
const one = Buffer.alloc(1, 1);
const big = Buffer.alloc(64 * 1024, 2);

function open(authority, onUp) {
  const req = session.request({ ':method': 'CONNECT', ':authority': authority });
  req.on('error', () => {});
  req.on('response', (h) => {
    const status = Number(h[':status']);
    if (status !== 200) {
      out.status[status] = (out.status[status] ?? 0) + 1;
      return;
    }
    out.ok++;
    onUp(req);
  });
  req.on('close', () => {
    if (req.rstCode !== undefined && req.rstCode !== 0) out.resets[req.rstCode] = (out.resets[req.rstCode] ?? 0) + 1;
  });
  return req;
}

function reopenTiny(i) {
  if (stopping) return;
  tiny[i] = undefined;
  const req = open(cfg.stalled, (r) => (tiny[i] = r));
  req.once('close', () => setTimeout(() => reopenTiny(i), 20));
}

function turn() {
  if (stopping || session.destroyed) return;
  out.turns++;
  for (const t of tiny) if (t !== undefined && !t.destroyed) t.write(one);
  if (bulk !== undefined && !bulk.destroyed && bulk.writableLength < 1024 * 1024) bulk.write(big);
  setImmediate(turn);
}

session.once('remoteSettings', () => {
  let up = 0;
  const counted = () => {
    if (++up === cfg.streams + 1) {
      console.log('READY');
      turn();
    }
  };
  bulk = open(cfg.sink, (r) => {
    r.resume();
    counted();
  });
  for (let i = 0; i < cfg.streams; i++) {
    const req = open(cfg.stalled, (r) => {
      tiny[i] = r;
      counted();
    });
    req.once('close', () => setTimeout(() => reopenTiny(i), 20));
  }
});
reportAfter(cfg.seconds, session, out, () => {
  stopping = true;
});
