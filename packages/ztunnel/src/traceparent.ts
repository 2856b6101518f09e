import { randomFillSync } from 'node:crypto';

// Trace and span ids are cut from a pool refilled once per 170 tunnels: two randomBytes calls per
// tunnel (each a buffer and a call into OpenSSL) were a measurable part of opening one.
const ID_BYTES = 16 + 8;
const pool = Buffer.allocUnsafe(ID_BYTES * 170);
let next = pool.length;

/** A fresh W3C `traceparent` (version 00, random trace and span id, not sampled), as ztunnel sends with CONNECT. */
export function newTraceparent(): string {
  if (next + ID_BYTES > pool.length) {
    randomFillSync(pool);
    next = 0;
  }
  const at = next;
  next += ID_BYTES;
  return `00-${pool.toString('hex', at, at + 16)}-${pool.toString('hex', at + 16, at + ID_BYTES)}-00`;
}
