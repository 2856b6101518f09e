import { randomInt } from 'node:crypto';
import * as dnsPacket from 'dns-packet';
import type { DnsForwarder } from './forwarder.js';
import type { DnsNameTable } from './name-table.js';

export interface HostResolverOptions {
  table: DnsNameTable;
  /** The client pod's namespace, for its search path. */
  namespace?: string | undefined;
  /** When set, names outside the mesh state are asked upstream (A, then AAAA). */
  forwarder?: DnsForwarder | undefined;
}

/**
 * Name → one IP, the way a pod's DNS would answer through the proxy: the mesh state first (with
 * the pod's search path), then the upstream resolvers. Used for SOCKS5 domain-name destinations.
 */
export class HostResolver {
  readonly #o: HostResolverOptions;

  constructor(o: HostResolverOptions) {
    this.#o = o;
  }

  async resolve(name: string): Promise<string | undefined> {
    const found = this.#o.table.lookup(name, this.#o.namespace);
    if (found) return found.v4[0] ?? found.v6[0];
    return this.resolveUpstream(name);
  }

  /**
   * Asks only the upstream resolvers, `family` first: for a service endpoint known by hostname, whose
   * name the mesh state maps back to the service's own VIP.
   */
  async resolveUpstream(name: string, family: 4 | 6 = 4): Promise<string | undefined> {
    if (!this.#o.forwarder) return undefined;
    for (const type of family === 4 ? (['A', 'AAAA'] as const) : (['AAAA', 'A'] as const)) {
      const query = dnsPacket.encode({
        type: 'query',
        id: randomInt(0x10000),
        flags: dnsPacket.RECURSION_DESIRED,
        questions: [{ type, name, class: 'IN' }],
      });
      const { response } = await this.#o.forwarder.forward(query, 'udp');
      let packet: dnsPacket.DecodedPacket;
      try {
        packet = dnsPacket.decode(response);
      } catch {
        continue;
      }
      for (const a of packet.answers ?? []) if (a.type === type && typeof a.data === 'string') return a.data;
    }
    return undefined;
  }
}
