/* global process, console, Buffer */
// An HBONE peer (plain node:http2, mutual TLS) that answers every CONNECT with 200 and then sends on
// the stream as fast as the client's windows allow: the far end of review 6 #2, outbound.
// argv[2]: JSON { key, cert, ca }. Prints `PORT <n>` once listening.
import { readFileSync } from 'node:fs';
import * as http2 from 'node:http2';

const cfg = JSON.parse(process.argv[2]);
const pem = (f) => readFileSync(f);
const server = http2.createSecureServer({ key: pem(cfg.key), cert: pem(cfg.cert), ca: pem(cfg.ca), requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'] });
const chunk = Buffer.alloc(64 * 1024, 9);
server.on('stream', (stream) => {
  stream.on('error', () => {});
  stream.respond({ ':status': 200 });
  // What the client sends is read and dropped.
  stream.resume();
  const pump = () => {
    while (!stream.destroyed && stream.write(chunk));
  };
  stream.on('drain', pump);
  pump();
});
server.on('sessionError', () => {});
server.listen(0, '127.0.0.1', () => console.log(`PORT ${server.address().port}`));
