#!/usr/bin/env node
/* global process, console, setInterval */
// Accepts TCP connections and holds them idle; prints `ACCEPTED <n>` when the count of open ones changes.
// Usage: hold-server.mjs <port>
import { createServer } from 'node:net';

const port = Number(process.argv[2] ?? 9000);
let open = 0;
let printed = -1;
const server = createServer((s) => {
  open++;
  s.on('error', () => {});
  s.on('close', () => open--);
});
server.maxConnections = 50_000;
server.listen({ port, host: '0.0.0.0', backlog: 4096 }, () => console.log(`listening on ${port}`));
setInterval(() => {
  if (open !== printed) console.log(`ACCEPTED ${(printed = open)}`);
}, 250);
