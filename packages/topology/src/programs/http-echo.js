#!/usr/bin/env node
/* global process, console, Buffer, URL */
// A tiny HTTP server for tests and the sandbox's `httpbin` pod. Every request is answered with JSON naming
// what the server saw: method, path, headers, body, and the client address (to prove source preservation).
//   GET /status/<code>  answers that status;  GET /bytes/<n>  answers n bytes;  anything else echoes.
// Usage: http-echo.js --port 8000 [--host 0.0.0.0] [--name httpbin]
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '8000' },
    host: { type: 'string', default: '0.0.0.0' },
    name: { type: 'string', default: 'http-echo' },
  },
});
const port = Number(values.port);
const host = String(values.host);
const name = String(values.name);

const server = createServer((req, res) => {
  /** @type {Buffer[]} */
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const url = new URL(req.url ?? '/', 'http://placeholder');
    const client = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    console.log(`request ${req.method} ${url.pathname} from ${client}`);
    const status = /^\/status\/(\d{3})$/.exec(url.pathname);
    const bytes = /^\/bytes\/(\d+)$/.exec(url.pathname);
    if (bytes) {
      const body = Buffer.alloc(Number(bytes[1]), 'x');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
      return;
    }
    const body = Buffer.concat(chunks);
    const reply = JSON.stringify({
      server: name,
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      httpVersion: req.httpVersion,
      headers: req.headers,
      client: { address: req.socket.remoteAddress, port: req.socket.remotePort },
      local: { address: req.socket.localAddress, port: req.socket.localPort },
      bodyBytes: body.length,
      body: body.length <= 65536 ? body.toString('utf8') : undefined,
    });
    res.writeHead(status ? Number(status[1]) : 200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(reply),
    });
    res.end(reply);
  });
});

server.listen(port, host, () => {
  console.log(`listening on ${host}:${port} (${name})`);
});

process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
