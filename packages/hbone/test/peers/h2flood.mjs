/* global process, console, Buffer, setTimeout */
// A mesh client that keeps sending on many CONNECT streams of one HTTP/2 session (as fast as the
// server's windows allow) while whatever is behind the server does not read: review 6 #2, inbound.
// argv[2]: JSON { port, key, cert, ca, authority, streams, seconds, early? }. Streams reset or refused are
// opened again. Prints `READY` once every stream was answered the first time (early: opened), then one JSON line
// with what happened: { ok, status: {code: n}, resets: {code: n}, written } and exits.
import { connectPeer, reportAfter } from './client-session.mjs';

const cfg = JSON.parse(process.argv[2]);
const session = connectPeer(cfg);
const out = { ok: 0, status: {}, resets: {}, written: 0 };
const chunk = Buffer.alloc(64 * 1024, 7);
let answered = 0;
let stopping = false;

function open() {
  if (stopping || session.destroyed || session.closed) return;
  const req = session.request({ ':method': 'CONNECT', ':authority': cfg.authority });
  let first = true;
  const pump = () => {
    while (!req.destroyed) {
      out.written += chunk.length;
      if (!req.write(chunk)) return;
    }
  };
  req.on('error', () => {});
  req.on('drain', pump);
  // early: send before the answer (a CONNECT's data may precede the 200).
  if (cfg.early) {
    pump();
    if (++answered === cfg.streams) console.log('READY');
  }
  req.on('response', (h) => {
    if (!cfg.early && first && ++answered === cfg.streams) console.log('READY');
    first = false;
    const status = Number(h[':status']);
    if (status !== 200) {
      out.status[status] = (out.status[status] ?? 0) + 1;
      return;
    }
    out.ok++;
    if (!cfg.early) pump();
  });
  req.on('close', () => {
    if (req.rstCode !== undefined && req.rstCode !== 0) out.resets[req.rstCode] = (out.resets[req.rstCode] ?? 0) + 1;
    setTimeout(open, 20);
  });
}

session.once('remoteSettings', () => {
  for (let i = 0; i < cfg.streams; i++) open();
});
reportAfter(cfg.seconds, session, out, () => {
  stopping = true;
});
