import { isIPv4, isIPv6 } from 'node:net';

import type { Family } from './model.js';

/**
 * Canonical form of an address or CIDR as iptables-save prints it: a host address gets `/32`
 * (`/128`), the address is lower-cased. Returns undefined when `value` is not an address of `family`.
 */
export function canonicalCidr(value: string, family: Family): string | undefined {
  const slash = value.indexOf('/');
  const addr = (slash === -1 ? value : value.slice(0, slash)).toLowerCase();
  const max = family === 'ipv4' ? 32 : 128;
  const ok = family === 'ipv4' ? isIPv4(addr) : isIPv6(addr);
  if (!ok) return undefined;
  let prefix = max;
  if (slash !== -1) {
    const text = value.slice(slash + 1);
    if (!/^\d{1,3}$/.test(text)) return undefined;
    prefix = Number(text);
    if (prefix > max) return undefined;
  }
  return `${family === 'ipv6' ? compressV6(addr) : addr}/${prefix}`;
}

/** Plain address (no prefix) of `family`, canonicalised; undefined when invalid. */
export function canonicalAddress(value: string, family: Family): string | undefined {
  if (value.includes('/')) return undefined;
  const cidr = canonicalCidr(value, family);
  return cidr?.slice(0, cidr.indexOf('/'));
}

/** The family an address literal belongs to, if any (for error messages). */
export function familyOf(value: string): Family | undefined {
  const addr = value.split('/')[0] ?? '';
  if (isIPv4(addr)) return 'ipv4';
  if (isIPv6(addr)) return 'ipv6';
  return undefined;
}

/** RFC 5952 text form, as iptables and ip print IPv6 addresses. */
function compressV6(addr: string): string {
  const groups = expandV6(addr).map((g) => g.replace(/^0+(?=.)/, ''));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < groups.length; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestStart === -1) return groups.join(':');
  const head = groups.slice(0, bestStart).join(':');
  const tail = groups.slice(bestStart + bestLen).join(':');
  return `${head}::${tail}`;
}

function expandV6(addr: string): string[] {
  let text = addr;
  const lastColon = text.lastIndexOf(':');
  const tailPart = text.slice(lastColon + 1);
  if (tailPart.includes('.')) {
    const octets = tailPart.split('.').map(Number);
    const hi = (((octets[0] ?? 0) << 8) | (octets[1] ?? 0)).toString(16);
    const lo = (((octets[2] ?? 0) << 8) | (octets[3] ?? 0)).toString(16);
    text = `${text.slice(0, lastColon + 1)}${hi}:${lo}`;
  }
  const [left = '', right] = text.split('::');
  const l = left === '' ? [] : left.split(':');
  if (right === undefined) return l;
  const r = right === '' ? [] : right.split(':');
  return [...l, ...Array<string>(8 - l.length - r.length).fill('0'), ...r];
}
