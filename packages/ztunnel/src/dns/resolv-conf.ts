import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { DnsUpstream } from './forwarder.js';

/** The parts of a resolv.conf the DNS proxy uses. */
export interface ResolvConf {
  nameservers: string[];
  search: string[];
  ndots: number | undefined;
}

/** Parses resolv.conf text (`nameserver`, `search`/`domain`, `options ndots:N`); unknown lines are ignored. */
export function parseResolvConf(text: string): ResolvConf {
  const out: ResolvConf = { nameservers: [], search: [], ndots: undefined };
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    if (line === '') continue;
    const [key, ...values] = line.split(/\s+/);
    if (key === 'nameserver' && values[0] !== undefined) {
      // A scoped IPv6 address (fe80::1%eth0) names an interface of the node, useless inside a pod.
      if (isIP(values[0]) !== 0 && !values[0].includes('%')) out.nameservers.push(values[0]);
    } else if (key === 'search' || key === 'domain') {
      out.search = values.map((v) => v.replace(/\.$/, '')).filter((v) => v !== '');
    } else if (key === 'options') {
      for (const o of values) {
        const m = /^ndots:(\d+)$/.exec(o);
        if (m) out.ndots = Math.min(15, Number(m[1]));
      }
    }
  }
  return out;
}

/**
 * The upstream resolvers from a resolv.conf, as the node sees them (ztunnel forwards to its own
 * resolvers, i.e. the cluster DNS). Loopback nameservers are dropped: inside a pod they would be the
 * pod's own loopback, not the node's resolver.
 */
export async function readResolvConfUpstreams(path = '/etc/resolv.conf'): Promise<DnsUpstream[]> {
  const conf = parseResolvConf(await readFile(path, 'utf8'));
  return conf.nameservers
    .filter((ip) => !ip.startsWith('127.') && ip !== '::1')
    .map((address) => ({ address, port: 53 }));
}
