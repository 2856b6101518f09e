import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseResolvConf, readResolvConfUpstreams } from './resolv-conf.js';

const text = `# kubelet
nameserver 10.96.0.10
nameserver fe80::1%eth0
nameserver 127.0.0.53
search default.svc.cluster.local svc.cluster.local cluster.local.
options ndots:5 timeout:2 ; trailing comment
nameserver fd00::53
`;

describe('resolv.conf', () => {
  it('parses nameservers (dropping scoped ones), search and ndots', () => {
    expect(parseResolvConf(text)).toEqual({
      nameservers: ['10.96.0.10', '127.0.0.53', 'fd00::53'],
      search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
      ndots: 5,
    });
  });

  it('turns a file into upstreams, without loopback resolvers that mean nothing inside a pod', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wdns-'));
    try {
      await writeFile(join(dir, 'resolv.conf'), text);
      expect(await readResolvConfUpstreams(join(dir, 'resolv.conf'))).toEqual([
        { address: '10.96.0.10', port: 53 },
        { address: 'fd00::53', port: 53 },
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
