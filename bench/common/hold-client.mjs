#!/usr/bin/env node
/* global process, console, setInterval */
// Opens <count> TCP connections to <host>:<port> (at most 100 connecting at once), prints
// `OPENED <n>` (and `FAILED <n> <code>` if any failed), then holds them idle until killed.
// Usage: hold-client.mjs <host> <port> <count>
import { connect } from 'node:net';

const [host, portText, countText] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const held = [];
let failed = 0;
let lastErr = '';
let next = 0;
const one = () =>
  new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      held.push(s);
      resolve();
    });
    s.once('error', (err) => {
      failed++;
      lastErr = err.code ?? err.message;
      resolve();
    });
  });
const worker = async () => {
  while (next < count) {
    next++;
    await one();
  }
};
await Promise.all(Array.from({ length: Math.min(100, count) }, worker));
console.log(`OPENED ${held.length}`);
if (failed) console.log(`FAILED ${failed} ${lastErr}`);
setInterval(() => {}, 1 << 30);
