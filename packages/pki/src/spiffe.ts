import { PkiError } from './errors.js';

export interface ParsedSpiffeUri {
  trustDomain: string;
  path: string;
}

/** Checks a SPIFFE ID against the SPIFFE spec (lower-case trust domain, non-empty clean path). */
export function parseSpiffeUri(uri: string): ParsedSpiffeUri {
  const m = /^spiffe:\/\/([a-z0-9._-]+)(\/[A-Za-z0-9._\-/]+)$/.exec(uri);
  const path = m?.[2];
  const segmentsOk = path !== undefined && path.split('/').slice(1).every((s) => s !== '' && s !== '.' && s !== '..');
  if (!m || m[1] === undefined || path === undefined || !segmentsOk) {
    throw new PkiError('ERR_PKI_INVALID_IDENTITY', `identity ${JSON.stringify(uri)} is not a SPIFFE ID (spiffe://<trust domain>/<path>)`);
  }
  return { trustDomain: m[1], path };
}
