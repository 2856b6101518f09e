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
    if (isIP(host) !== 4) return undefined;
    portText = authority.slice(colon + 1);
  }
  if (!/^[0-9]{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  if (port < 1 || port > 65535) return undefined;
  return { host, port };
}

/** Formats a target as an authority: `1.2.3.4:80`, `[fd00::1]:80`. */
export function formatAuthority(t: HboneTarget): string {
  const kind = isIP(t.host);
  if (kind === 0 || !Number.isInteger(t.port) || t.port < 1 || t.port > 65535) {
    throw new HboneError('ERR_HBONE_INVALID_AUTHORITY', `target ${t.host}:${t.port} is not an IP literal with a port 1-65535`);
  }
  return kind === 6 ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
}
