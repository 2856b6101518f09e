import type { KeyObject } from 'node:crypto';
import * as der from './der.js';

/** Curves a workload key may use: Istio's agent sends P-256 (ztunnel always) or P-384 (`ECC_CURVE`). */
const CURVES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384' };
/** Istio's agent defaults to RSA 2048; anything shorter is below every current guidance. */
export const MIN_RSA_BITS = 2048;

/**
 * Why `key` may not be put in a workload certificate, or undefined when it may: EC P-256/P-384 with
 * a named curve (RFC 5480; Go, and so istiod, refuses explicit parameters), or RSA of at least 2048 bits.
 */
export function workloadKeyProblem(key: KeyObject): string | undefined {
  const type = key.asymmetricKeyType;
  if (type === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    return bits < MIN_RSA_BITS ? `RSA key of ${bits} bits is shorter than ${MIN_RSA_BITS}` : undefined;
  }
  if (type !== 'ec') return `key type ${type ?? '(unknown)'} is not EC or RSA`;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (curve === undefined || CURVES[curve] === undefined) return `EC curve ${curve ?? '(unknown)'} is not P-256 or P-384`;
  // OpenSSL maps explicit parameters that spell a known curve onto its name; the SPKI still carries them.
  const [algorithm] = der.children(der.readElement(key.export({ type: 'spki', format: 'der' })).content);
  const [, parameters] = algorithm ? der.children(algorithm.content) : [];
  if (parameters?.tag !== 0x06) return `EC key for ${CURVES[curve]} carries explicit curve parameters, not the named curve`;
  return undefined;
}
