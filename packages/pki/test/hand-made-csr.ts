import { createPublicKey, sign, type KeyObject } from 'node:crypto';
import * as der from '../src/der.js';

/**
 * A request laid out as ztunnel's (no SAN), for `key`, signed by `key` over `hash` but labelled
 * `algorithmOid`: what no honest writer makes, to see that the label is checked against the key.
 */
export function handMadeCsr(key: KeyObject, algorithmOid: string, hash = 'sha256'): string {
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const info = der.sequence(der.smallInteger(0), der.sequence(), spki, der.explicit(0));
  const csr = der.sequence(info, der.sequence(der.oid(algorithmOid)), der.bitString(sign(hash, info, key)));
  return `-----BEGIN CERTIFICATE REQUEST-----\n${csr.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
}
