// A netns with IPv6 off on lo but on on eth0 cannot take the IPv6 capture route
// (`local ::/0 dev lo table 133`, EACCES): the error must say so, naming lo and eth0, with a stable
// code, on the rtnetlink path and on the `ip` path. Real kernel, a netns of the test's own.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { IptablesError } from '../src/errors.js';
import { netnsExecutor } from '../src/executor.js';
import { Ipv6LoopbackDisabledError, RoutingApplier, inpodRouting, ipv6Interfaces } from '../src/routing.js';
import { applyRouting, missingRouting, readLinks, readRouting, type NetlinkExchange } from '../src/rtnetlink.js';
import { addNetns, delNetns, netlinkAt, requireRootTools, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'nsenter']);

describe('IPv6 off on lo, on on eth0 (root, real netns)', () => {
  const name = uniqueName('V');
  let path: string;
  let exchange: NetlinkExchange;
  const inNs = (...args: string[]): string => sh('ip', ['netns', 'exec', name, ...args]);
  const sysctl = (key: string, value: string): void => void inNs('sysctl', '-q', '-w', `${key}=${value}`);
  const routing = inpodRouting({ ipv6: true });

  beforeAll(() => {
    path = addNetns(name);
    exchange = netlinkAt(path);
    sh('ip', ['-n', name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
    sh('ip', ['-n', name, 'link', 'set', 'eth0', 'up']);
    sysctl('net.ipv6.conf.peer0.disable_ipv6', '1');
    sysctl('net.ipv6.conf.eth0.disable_ipv6', '0');
  });
  afterAll(() => delNetns(name));

  it('readLinks reports each interface with its disable_ipv6 as the sysctl has it', async () => {
    sysctl('net.ipv6.conf.lo.disable_ipv6', '1');
    const links = await readLinks(exchange);
    expect(links.map((l) => [l.name, l.ipv6]).sort()).toEqual([
      ['eth0', true],
      ['lo', false],
      ['peer0', false],
    ]);
    expect(links.find((l) => l.name === 'lo')?.index).toBe(1);
    sysctl('net.ipv6.conf.lo.disable_ipv6', '0');
    sysctl('net.ipv6.conf.eth0.disable_ipv6', '1');
    expect((await readLinks(exchange)).filter((l) => l.ipv6).map((l) => l.name)).toEqual(['lo']);
    sysctl('net.ipv6.conf.eth0.disable_ipv6', '0');
    expect((await ipv6Interfaces(netnsExecutor(path))).sort((a, b) => a.name.localeCompare(b.name))).toEqual([
      { name: 'eth0', ipv6: true },
      { name: 'lo', ipv6: true },
      { name: 'peer0', ipv6: false },
    ]);
  });

  it('over rtnetlink: the IPv6 route is refused with ERR_IPTABLES_IPV6_LO_DISABLED naming lo and eth0; the IPv4 half went in', async () => {
    sysctl('net.ipv6.conf.lo.disable_ipv6', '1');
    const err = await applyRouting(exchange, missingRouting({ rules: [], routes: [] }, routing)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Ipv6LoopbackDisabledError);
    expect(err).toBeInstanceOf(IptablesError);
    expect(err).toMatchObject({ code: 'ERR_IPTABLES_IPV6_LO_DISABLED', enabledOn: ['eth0'] });
    const message = (err as Error).message;
    expect(message).toContain('IPv6 is disabled on lo but enabled on eth0 in the netns: the IPv6 capture route (ip -6 route replace local ::/0 dev lo table 133) needs IPv6 on lo');
    expect(message).toContain('net.ipv6.conf.lo.disable_ipv6=0');
    expect((err as Error).cause).toMatchObject({ code: 'ERR_IPTABLES_ROUTING_FAILED', errno: 13 });
    const state = await readRouting(exchange, ['ipv4', 'ipv6']);
    expect(state.routes).toEqual([{ family: 'ipv4', destination: '0.0.0.0/0', device: 'lo', table: 133 }]);
  });

  it('through `ip` (RoutingApplier): the same error, the `ip` failure as its cause', async () => {
    sysctl('net.ipv6.conf.lo.disable_ipv6', '1');
    const err = await new RoutingApplier({ executor: netnsExecutor(path) }).apply(routing).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Ipv6LoopbackDisabledError);
    expect((err as Error).message).toContain('IPv6 is disabled on lo but enabled on eth0 in the netns: the IPv6 capture route (ip -6 route replace local ::/0 dev lo table 133) needs IPv6 on lo');
    expect(String(((err as Error).cause as Error).message)).toMatch(/Permission denied|IPv6 is disabled on nexthop device/);
  });

  it('IPv6 off everywhere but the refused route: still the lo error, naming no interface', async () => {
    sysctl('net.ipv6.conf.lo.disable_ipv6', '1');
    sysctl('net.ipv6.conf.eth0.disable_ipv6', '1');
    try {
      const err = await applyRouting(exchange, missingRouting(await readRouting(exchange, ['ipv4', 'ipv6']), routing)).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_IPTABLES_IPV6_LO_DISABLED', enabledOn: [] });
      expect((err as Error).message).toMatch(/^IPv6 is disabled on lo in the netns: /);
    } finally {
      sysctl('net.ipv6.conf.eth0.disable_ipv6', '0');
    }
  });

  it('with IPv6 back on lo the same routing goes in (the refusal was lo, nothing else)', async () => {
    sysctl('net.ipv6.conf.lo.disable_ipv6', '0');
    await applyRouting(exchange, missingRouting(await readRouting(exchange, ['ipv4', 'ipv6']), routing));
    const state = await readRouting(exchange, ['ipv4', 'ipv6']);
    expect(missingRouting(state, routing)).toEqual([]);
    expect(await new RoutingApplier({ executor: netnsExecutor(path) }).missing(routing)).toEqual([]);
  });
});
