#!/usr/bin/env node
/* global process, console, setTimeout */
// A TCP server for tests: `echo` writes every byte back (half-close aware); `sink` reads to EOF, then answers
// one JSON line {bytes, sha256, client}. Logs one line per connection with the client address it saw.
// Usage: tcp-echo.js --port 9000 [--host 0.0.0.0] [--mode echo|sink]
import { createHash } from 'node:crypto';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '9000' },
    host: { type: 'string', default: '0.0.0.0' },
    mode: { type: 'string', default: 'echo' },
  },
});
const port = Number(values.port);
const host = String(values.host);
const mode = String(values.mode);
if (mode !== 'echo' && mode !== 'sink') {
  console.error(`--mode must be echo or sink, got ${mode}`);
  process.exit(2);
}

const server = createServer({ allowHalfOpen: true }, (socket) => {
  const client = `${socket.remoteAddress}:${socket.remotePort}`;
  console.log(`connection from ${client}`);
  let bytes = 0;
  const hash = createHash('sha256');
  socket.on('data', (chunk) => {
    bytes += chunk.length;
    if (mode === 'sink') hash.update(chunk);
  });
  if (mode === 'echo') {
    socket.pipe(socket);
  } else {
    socket.on('end', () => {
      socket.end(`${JSON.stringify({ bytes, sha256: hash.digest('hex'), client })}\n`);
    });
  }
  socket.on('error', (err) => console.log(`connection from ${client} failed: ${err.message}`));
  socket.on('close', () => console.log(`closed ${client} bytes=${bytes}`));
});

server.listen(port, host, () => {
  console.log(`listening on ${host}:${port} (${mode})`);
});

process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
});
