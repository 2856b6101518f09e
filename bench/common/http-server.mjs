#!/usr/bin/env node
/* global process, console */
// The destination pod's app for the latency and connection benches: a minimal HTTP/1.1 server answering
// every request with 2 bytes, no logging (so the server costs the same on every path).
// Usage: http-server.mjs <port>
import { createServer } from 'node:http';

const port = Number(process.argv[2] ?? 8080);
const server = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
    res.end('ok');
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, '0.0.0.0', () => console.log(`listening on ${port}`));
