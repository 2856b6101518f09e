import { CniPluginError } from './errors.js';

/** The CNI spec versions this plugin speaks, oldest first. */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
export const LATEST_VERSION: CniVersion = '1.1.0';

export function isSupportedVersion(v: string): v is CniVersion {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Compares dotted versions numerically: negative when a < b. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** 1.x results dropped the per-IP `version` field the 0.3/0.4 results carry; nothing else differs in shape. */
function isV1(v: string): boolean {
  return compareVersions(v, '1.0.0') >= 0;
}

type Json = Record<string, unknown>;

function ipFamily(address: unknown): '4' | '6' {
  return typeof address === 'string' && address.includes(':') ? '6' : '4';
}

/**
 * Converts a CNI result to `to`, as libcni does between plugins: sets `cniVersion`, adds or drops
 * each IP's `version`, leaves every other field exactly as it was.
 */
export function convertResult(result: Json, to: CniVersion): Json {
  const from = typeof result['cniVersion'] === 'string' ? result['cniVersion'] : to;
  if (!isSupportedVersion(from)) {
    throw new CniPluginError(
      'ERR_CNI_INCOMPATIBLE_VERSION',
      `prevResult.cniVersion "${from}" cannot be converted to ${to}; supported: ${SUPPORTED_VERSIONS.join(', ')}`,
    );
  }
  const out: Json = { ...result, cniVersion: to };
  if (Array.isArray(result['ips']) && isV1(from) !== isV1(to)) {
    out['ips'] = (result['ips'] as Json[]).map((ip) => {
      if (isV1(to)) {
        const { version: _v, ...rest } = ip;
        return rest;
      }
      return { version: ipFamily(ip['address']), ...ip };
    });
  }
  return out;
}
