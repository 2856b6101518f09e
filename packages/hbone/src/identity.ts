import type { X509Certificate } from 'node:crypto';
import { HboneError } from './errors.js';

const SEGMENT = '[A-Za-z0-9._-]+';
const SPIFFE_RE = new RegExp(`^spiffe://([a-z0-9._-]+)/ns/(${SEGMENT})/sa/(${SEGMENT})$`);

/** A mesh workload identity, exactly `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`. */
export class SpiffeId {
  constructor(
    readonly trustDomain: string,
    readonly namespace: string,
    readonly serviceAccount: string,
  ) {}

  /** Parses strictly; anything else (other paths, upper-case trust domain, query) is an error. */
  static parse(s: string): SpiffeId {
    const id = SpiffeId.tryParse(s);
    if (id === undefined) {
      throw new HboneError('ERR_HBONE_INVALID_IDENTITY', `identity ${JSON.stringify(s)} is not spiffe://<td>/ns/<ns>/sa/<sa>`);
    }
    return id;
  }

  static tryParse(s: string): SpiffeId | undefined {
    const m = SPIFFE_RE.exec(s);
    if (m === null || m[2] === '.' || m[2] === '..' || m[3] === '.' || m[3] === '..') return undefined;
    return new SpiffeId(m[1]!, m[2]!, m[3]!);
  }

  toString(): string {
    return `spiffe://${this.trustDomain}/ns/${this.namespace}/sa/${this.serviceAccount}`;
  }

  equals(o: SpiffeId | string): boolean {
    return this.toString() === (typeof o === 'string' ? o : o.toString());
  }
}

/** URI SANs of a certificate that are valid SPIFFE workload identities, in certificate order. */
export function identitiesFromCertificate(cert: X509Certificate): SpiffeId[] {
  const out: SpiffeId[] = [];
  for (const uri of uriSans(cert.subjectAltName)) {
    const id = SpiffeId.tryParse(uri);
    if (id !== undefined) out.push(id);
  }
  return out;
}

/**
 * URI entries of Node's `subjectAltName` string (`URI:a, DNS:b`). Node quotes (JSON) values that
 * contain separators; such a value is never a valid SPIFFE ID, so it is returned unparsed and fails.
 */
function uriSans(san: string | undefined): string[] {
  if (san === undefined) return [];
  const out: string[] = [];
  for (const part of san.split(', ')) {
    if (part.startsWith('URI:')) out.push(part.slice(4));
  }
  return out;
}

/** True when one of `cert`'s SPIFFE identities is in `expected` (compared as canonical strings). */
export function certificateMatchesIdentities(cert: X509Certificate, expected: readonly string[]): boolean {
  const want = new Set(expected);
  return identitiesFromCertificate(cert).some((id) => want.has(id.toString()));
}
