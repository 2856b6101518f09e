import { isIP } from 'node:net';
import { HboneError } from './errors.js';

/** Where a tunnel goes: `host` is an IP literal (v4 or v6, no brackets). */
export interface HboneTarget {
  host: string;
  port: number;
}

/** Parses a CONNECT `:authority` that must be `ip:port` or `[v6]:port`; undefined otherwise. */
export function parseAuthority(authority: string | undefined): HboneTarget | undefined {
  if (authority === undefined) return undefined;
  let host: string;
  let portText: string;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0 || authority[close + 1] !== ':') return undefined;
    host = authority.slice(1, close);
    if (isIP(host) !== 6) return undefined;
    portText = authority.slice(close + 2);
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon < 0) return undefined;
    host = authority.slice(0, colon);
    if (!isIPv4(host)) return undefined;
    portText = authority.slice(colon + 1);
  }
  const port = parsePort(portText);
  return port === undefined ? undefined : { host, port };
}

// Every tunnel open parses (server) and formats (client) an authority: a scan by char code is a
// fraction of net.isIP's regular expression and the port's.

/** Exactly what net.isIP(s) === 4 accepts: four dot-separated decimals 0-255 without leading zeros. */
export function isIPv4(s: string): boolean {
  const n = s.length;
  if (n < 7 || n > 15) return false;
  let dots = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || ++dots > 3) return false;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits === 0) value = c - 48;
      else if (value === 0) return false;
      else value = value * 10 + c - 48;
      if (++digits > 3 || value > 255) return false;
    } else return false;
  }
  return dots === 3 && digits > 0;
}

/** A port 1-65535 in 1-5 decimal digits (leading zeros allowed, as before), else undefined. */
function parsePort(s: string): number | undefined {
  const n = s.length;
  if (n < 1 || n > 5) return undefined;
  let port = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return undefined;
    port = port * 10 + c - 48;
  }
  return port >= 1 && port <= 65535 ? port : undefined;
}

/** Formats a target as an authority: `1.2.3.4:80`, `[fd00::1]:80`. */
export function formatAuthority(t: HboneTarget): string {
  // An untyped caller's non-string host gets the typed error too, not isIPv4's TypeError.
  const kind = typeof t.host !== 'string' ? 0 : isIPv4(t.host) ? 4 : isIP(t.host);
  if (kind === 0 || !Number.isInteger(t.port) || t.port < 1 || t.port > 65535) {
    throw new HboneError('ERR_HBONE_INVALID_AUTHORITY', `target ${String(t.host)}:${String(t.port)} is not an IP literal with a port 1-65535`);
  }
  return kind === 6 ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
}
