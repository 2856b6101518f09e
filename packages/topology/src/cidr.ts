import { TopologyError } from './errors.js';

/** An IPv4 prefix, e.g. 10.244.1.0/24. Only what the topology needs: hosts by index. */
export interface Ipv4Cidr {
  readonly network: number;
  readonly prefixLength: number;
}

export function parseIpv4(text: string): number {
  const parts = text.split('.');
  if (parts.length !== 4) throw invalid(text);
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) throw invalid(text);
    const octet = Number(part);
    if (octet > 255) throw invalid(text);
    value = value * 256 + octet;
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.');
}

export function parseCidr(text: string): Ipv4Cidr {
  const [address, length, extra] = text.split('/');
  const prefixLength = Number(length);
  if (address === undefined || extra !== undefined || !/^\d{1,2}$/.test(length ?? '') || prefixLength > 30) {
    throw new TopologyError('TOPOLOGY_INVALID_OPTIONS', `CIDR ${JSON.stringify(text)} is not an IPv4 prefix a.b.c.d/n with n <= 30`);
  }
  const mask = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  const network = (parseIpv4(address) & mask) >>> 0;
  if (network !== parseIpv4(address)) {
    throw new TopologyError('TOPOLOGY_INVALID_OPTIONS', `CIDR ${text} has host bits set (network is ${formatIpv4(network)}/${prefixLength})`);
  }
  return { network, prefixLength };
}

export function formatCidr(cidr: Ipv4Cidr): string {
  return `${formatIpv4(cidr.network)}/${cidr.prefixLength}`;
}

/** The n-th address in the prefix (1 = first host). */
export function hostAddress(cidr: Ipv4Cidr, n: number): string {
  const size = 2 ** (32 - cidr.prefixLength);
  if (!Number.isInteger(n) || n < 1 || n >= size - 1) {
    throw new TopologyError('TOPOLOGY_INVALID_OPTIONS', `host index ${n} is outside ${formatCidr(cidr)}`);
  }
  return formatIpv4(cidr.network + n);
}

function invalid(text: string): TopologyError {
  return new TopologyError('TOPOLOGY_INVALID_OPTIONS', `${JSON.stringify(text)} is not an IPv4 address`);
}
