#!/usr/bin/env node
/* global process, console, Buffer, setTimeout, clearTimeout */
// A TCP client for tests: connects, sends a payload (text, or n pseudo-random bytes), half-closes, reads to
// EOF, and prints one JSON line: addresses, byte counts and sha256 of both directions. Exit 1 on failure.
// Usage: tcp-probe.js --connect 10.244.2.3:9000 [--payload text | --bytes n] [--timeout ms]
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    connect: { type: 'string' },
    payload: { type: 'string' },
    bytes: { type: 'string' },
    timeout: { type: 'string', default: '10000' },
  },
});
const target = String(values.connect ?? '');
const split = target.lastIndexOf(':');
const host = target.slice(0, split).replace(/^\[|\]$/g, '');
const port = Number(target.slice(split + 1));
if (split < 0 || !host || !Number.isInteger(port)) {
  console.log(JSON.stringify({ ok: false, error: `--connect must be host:port, got ${JSON.stringify(target)}` }));
  process.exit(2);
}

/** Deterministic bytes (xorshift32): easy to regenerate, impossible to pass by accident. */
function pattern(/** @type {number} */ length) {
  const out = Buffer.alloc(length);
  let x = 2463534242;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const payload = values.bytes !== undefined ? pattern(Number(values.bytes)) : Buffer.from(values.payload ?? '');
const started = Date.now();
const socket = connect({ host, port, allowHalfOpen: true });
/** @type {Buffer[]} */
const received = [];
const timer = setTimeout(() => fail(new Error(`no EOF within ${values.timeout} ms`)), Number(values.timeout));

/** Addresses are gone from the socket once both sides closed; remember them at connect. */
let local = '';
let remote = '';
socket.on('connect', () => {
  local = `${socket.localAddress}:${socket.localPort}`;
  remote = `${socket.remoteAddress}:${socket.remotePort}`;
  socket.end(payload);
});
socket.on('data', (chunk) => received.push(chunk));
socket.on('end', () => {
  clearTimeout(timer);
  const body = Buffer.concat(received);
  console.log(
    JSON.stringify({
      ok: true,
      local,
      remote,
      sentBytes: payload.length,
      sentSha256: createHash('sha256').update(payload).digest('hex'),
      receivedBytes: body.length,
      receivedSha256: createHash('sha256').update(body).digest('hex'),
      received: body.length <= 65536 ? body.toString('utf8') : undefined,
      ms: Date.now() - started,
    }),
  );
  socket.destroy();
});
socket.on('error', fail);

function fail(/** @type {Error & {code?: string}} */ err) {
  clearTimeout(timer);
  console.log(JSON.stringify({ ok: false, error: err.message, code: err.code, ms: Date.now() - started }));
  socket.destroy();
  process.exitCode = 1;
}
