/* global process, console, setTimeout */
// What the budget tests' client peers share: their mTLS HTTP/2 session to the server under test, and
// how they end (a report line, then exit).
import { readFileSync } from 'node:fs';
import * as http2 from 'node:http2';

/** An h2 session to 127.0.0.1:`cfg.port` with the client certificate `cfg.key`/`cfg.cert` and root `cfg.ca` (file paths). */
export function connectPeer(cfg) {
  const pem = (f) => readFileSync(f);
  const session = http2.connect(`https://127.0.0.1:${cfg.port}`, {
    key: pem(cfg.key),
    cert: pem(cfg.cert),
    ca: pem(cfg.ca),
    checkServerIdentity: () => undefined,
    ALPNProtocols: ['h2'],
  });
  session.on('error', (e) => console.error(`session error ${e.message}`));
  return session;
}

/** After `seconds`: `stop()` (nothing new is opened), `report` as one JSON line, the session destroyed, exit 0. */
export function reportAfter(seconds, session, report, stop) {
  setTimeout(() => {
    stop();
    console.log(JSON.stringify(report));
    session.destroy();
    setTimeout(() => process.exit(0), 100);
  }, seconds * 1000);
}
