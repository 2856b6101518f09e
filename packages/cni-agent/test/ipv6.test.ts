import type { Server } from 'node:net';
import { listenTcp, openNetns, type Netns } from '@weir/netns';
import { execInNetns, Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IptablesPodRules, type PodInfo } from '../src/index.js';
import { nsRun, requireRoot, uniq, until } from './support.js';

/** The pod's fe80:: address on `dev`, once duplicate address detection has finished. */
async function linkLocal(netnsPath: string, dev: string): Promise<string> {
  return until(`a usable fe80:: address on ${dev} in ${netnsPath}`, async () => {
    const out = await nsRun(netnsPath, 'ip', ['-6', '-o', 'addr', 'show', 'dev', dev, 'scope', 'link']);
    if (/tentative/.test(out)) return undefined;
    return /inet6 (fe80::[0-9a-f:]+)\//.exec(out)?.[1];
  });
}

/** Connects over IPv6 from a netns with socat and returns what the server said ('' when it could not connect). */
async function tcp6Read(fromNetns: string, addr: string, port: number): Promise<string> {
  const r = await execInNetns(fromNetns, 'timeout', ['5', 'socat', '-T2', '-u', `TCP6:[${addr}]:${port},connect-timeout=2`, '-']);
  return r.stdout.trim();
}

/** A listener counting its connections, answering `reply`. */
async function counted(netns: Netns, port: number, reply: string, opts: { transparent?: boolean; mark?: number } = {}) {
  const c = { n: 0, server: undefined as unknown as Server };
  c.server = await listenTcp({ netns, host: '::', port, reusePort: true, ...opts });
  c.server.on('connection', (s) => {
    c.n++;
    s.end(`${reply}\n`);
  });
  return c;
}

/**
 * The handle the rules get: the agent's own `Netns` (production: commands spawned straight into the
 * netns, sysctls in-process) or a plain NetnsHandle (the pooled-shell path a library user's handles take).
 */
function handleFor(via: 'direct' | 'shell', ns: Netns, path: string) {
  return via === 'direct' ? ns : { fd: ns.fd, id: ns.id, path, closed: false, close: () => undefined };
}

for (const [mode, via] of [['auto', 'direct'], [false, 'direct'], ['auto', 'shell']] as const) {
  describe(`IPv6 in a captured pod, ipv6: ${String(mode)}, ${via} (root, real netns)`, () => {
    let topo: Topology;
    let node: TopologyNode;
    let pod: TopologyPod;
    let peer: TopologyPod;
    let rules: IptablesPodRules;
    const netnses: Netns[] = [];
    const servers: Server[] = [];
    let podNs: Netns;
    let app: Awaited<ReturnType<typeof counted>>;
    let peerL: Awaited<ReturnType<typeof counted>>;
    let nodeL: Awaited<ReturnType<typeof counted>>;
    let podLl: string;
    let peerLl: string;
    let nodeLl: string;
    const ULA = `fd00:${(process.pid % 0xffff).toString(16)}:${mode === 'auto' ? 'a' : 'f'}${via === 'direct' ? 'd' : 'e'}::`;
    const info = (p: TopologyPod): PodInfo =>
      ({ uid: p.uid, name: p.name, namespace: p.namespace, labels: {}, annotations: {}, serviceAccount: 'default', ips: [p.ip], hostNetwork: false, nodeName: 'n1' }) as unknown as PodInfo;

    beforeAll(async () => {
      await requireRoot();
      topo = await Topology.create({ name: uniq('wc6') });
      node = await topo.addNode({ name: 'n1' });
      pod = await node.addPod({ name: 'sleep', namespace: 'apps' });
      peer = await node.addPod({ name: 'legacy', namespace: 'apps' });
      podNs = openNetns(pod.netnsPath);
      const peerNs = openNetns(peer.netnsPath);
      const nodeNs = openNetns(node.netnsPath);
      netnses.push(podNs, peerNs, nodeNs);
      app = await counted(podNs, 8080, 'app');
      peerL = await counted(peerNs, 9100, 'peer');
      nodeL = await counted(nodeNs, 9101, 'node');
      servers.push(app.server, peerL.server, nodeL.server);
      podLl = await linkLocal(pod.netnsPath, 'eth0');
      peerLl = await linkLocal(peer.netnsPath, 'eth0');
      nodeLl = await linkLocal(node.netnsPath, 'cni0');
      // Global IPv6 addresses too (ULA, on the same bridge), as a dual-stack cluster gives pods.
      await nsRun(pod.netnsPath, 'ip', ['-6', 'addr', 'add', `${ULA}1/64`, 'dev', 'eth0', 'nodad']);
      await nsRun(peer.netnsPath, 'ip', ['-6', 'addr', 'add', `${ULA}2/64`, 'dev', 'eth0', 'nodad']);
      rules = new IptablesPodRules({ ipv6: mode, hostNetnsPath: node.netnsPath });
    }, 90_000);

    afterAll(async () => {
      rules?.close();
      for (const s of servers) s.close();
      for (const n of netnses) n.close();
      await topo?.destroy();
    }, 60_000);

    it('without rules IPv6 link-local reaches the peer, the node and the app (the hole being closed)', async () => {
      expect(await tcp6Read(pod.netnsPath, `${peerLl}%eth0`, 9100)).toBe('peer');
      expect(await tcp6Read(pod.netnsPath, `${nodeLl}%eth0`, 9101)).toBe('node');
      expect(await tcp6Read(peer.netnsPath, `${podLl}%eth0`, 8080)).toBe('app');
      peerL.n = nodeL.n = app.n = 0;
    });

    it('after apply, pod -> peer and pod -> node over fe80:: never reach them unseen, nor peer -> app port', async () => {
      const handle = handleFor(via, podNs, pod.netnsPath);
      const first = await rules.apply(info(pod), handle);
      expect(first.changed).toBe(true);
      expect((await rules.apply(info(pod), handle)).changed).toBe(false);
      const v6 = (await nsRun(pod.netnsPath, 'ip6tables-save', [])).split('\n').filter((l) => l.startsWith('-A'));
      let ztOut: Awaited<ReturnType<typeof counted>> | undefined;
      let ztIn: Awaited<ReturnType<typeof counted>> | undefined;
      if (mode === 'auto') {
        // IPv6 capture: outbound REDIRECT to 15001, inbound TPROXY to 15006, and `ip -6` policy routing.
        expect(v6).toContain('-A ISTIO_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
        expect(v6.some((l) => l.includes('TPROXY --on-port 15006'))).toBe(true);
        expect(await nsRun(pod.netnsPath, 'ip', ['-6', 'rule', 'show'])).toMatch(/32764:\s+from all fwmark 0x111\/0xfff lookup 133/);
        expect(await nsRun(pod.netnsPath, 'ip', ['-6', 'route', 'show', 'table', '133'])).toMatch(/local default dev lo/);
        // Stand-ins for ztunnel's in-pod listeners on [::] (marked, 15006 transparent).
        ztOut = await counted(podNs, 15001, 'ztunnel-out', { mark: 0x539 });
        ztIn = await counted(podNs, 15006, 'ztunnel-in', { mark: 0x539, transparent: true });
        servers.push(ztOut.server, ztIn.server);
        // A link-local destination binds the socket to eth0, so the kernel cannot deliver the
        // REDIRECT (to ::1) and the connect fails: refused, never reaching the peer or the node.
        expect(['ztunnel-out', '']).toContain(await tcp6Read(pod.netnsPath, `${peerLl}%eth0`, 9100));
        expect(['ztunnel-out', '']).toContain(await tcp6Read(pod.netnsPath, `${nodeLl}%eth0`, 9101));
        expect(await tcp6Read(pod.netnsPath, `${ULA}2`, 9100)).toBe('ztunnel-out');
        expect(await tcp6Read(peer.netnsPath, `${podLl}%eth0`, 8080)).toBe('ztunnel-in');
        expect(await tcp6Read(peer.netnsPath, `${ULA}1`, 8080)).toBe('ztunnel-in');
        expect(ztIn.n).toBe(2);
      } else {
        expect(v6).toEqual([
          '-A INPUT -j ISTIO_V6GUARD_IN',
          '-A OUTPUT -j ISTIO_V6GUARD_OUT',
          '-A ISTIO_V6GUARD_IN -i lo -j ACCEPT',
          '-A ISTIO_V6GUARD_IN -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
          '-A ISTIO_V6GUARD_IN -p tcp -j DROP',
          '-A ISTIO_V6GUARD_OUT -o lo -j ACCEPT',
          '-A ISTIO_V6GUARD_OUT -p tcp -m mark --mark 0x539/0xfff -j ACCEPT',
          '-A ISTIO_V6GUARD_OUT -p tcp -j DROP',
        ]);
        expect(await tcp6Read(pod.netnsPath, `${peerLl}%eth0`, 9100)).toBe('');
        expect(await tcp6Read(pod.netnsPath, `${nodeLl}%eth0`, 9101)).toBe('');
        expect(await tcp6Read(peer.netnsPath, `${podLl}%eth0`, 8080)).toBe('');
        expect(await tcp6Read(pod.netnsPath, `${ULA}2`, 9100)).toBe('');
        expect(await tcp6Read(peer.netnsPath, `${ULA}1`, 8080)).toBe('');
        // IPv6 loopback inside the pod still works.
        expect(await tcp6Read(pod.netnsPath, '::1', 8080)).toBe('app');
        app.n--;
      }
      expect([peerL.n, nodeL.n, app.n]).toEqual([0, 0, 0]);
      // IPv4 capture is in place as before.
      expect((await nsRun(pod.netnsPath, 'iptables-save', [])).includes('REDIRECT --to-ports 15001')).toBe(true);
      ztOut?.server.close();
      ztIn?.server.close();
    });

    it('release removes the IPv6 rules and routing too', async () => {
      const handle = handleFor(via, podNs, pod.netnsPath);
      await rules.remove(info(pod), handle);
      expect((await nsRun(pod.netnsPath, 'ip6tables-save', [])).includes('ISTIO_')).toBe(false);
      expect((await nsRun(pod.netnsPath, 'iptables-save', [])).includes('ISTIO_')).toBe(false);
      expect(await nsRun(pod.netnsPath, 'ip', ['-6', 'rule', 'show'])).not.toMatch(/lookup 133/);
      expect(await tcp6Read(pod.netnsPath, `${peerLl}%eth0`, 9100)).toBe('peer');
    });
  });
}

/**
 * One pod prepared by `setup` (in its netns), then each rule set (ipv6 false, auto) applied and removed
 * through each handle kind, `check` looking at the pod after each apply.
 */
async function eachRulesAndHandle(
  name: string,
  setup: (netnsPath: string) => Promise<void>,
  check: (a: { applied: boolean; netnsPath: string; label: string; ipv6: 'auto' | false }) => Promise<void>,
): Promise<void> {
  await requireRoot();
  const topo = await Topology.create({ name: uniq('wc6x') });
  const sets = [[false, new IptablesPodRules({ ipv6: false })], ['auto', new IptablesPodRules({ ipv6: 'auto' })]] as const;
  try {
    const pod = await (await topo.addNode({ name: 'n1' })).addPod({ name, namespace: 'apps' });
    await setup(pod.netnsPath);
    const ns = openNetns(pod.netnsPath);
    try {
      const p = { uid: 'u', name, namespace: 'apps' } as unknown as PodInfo;
      for (const via of ['direct', 'shell'] as const) {
        const handle = handleFor(via, ns, pod.netnsPath);
        for (const [ipv6, r] of sets) {
          const applied = await r.apply(p, handle).then(
            () => true,
            () => false,
          );
          await check({ applied, netnsPath: pod.netnsPath, label: `${via}, ipv6 ${String(ipv6)}`, ipv6 });
          await r.remove(p, handle);
        }
      }
    } finally {
      ns.close();
    }
  } finally {
    for (const [, r] of sets) r.close();
    await topo.destroy();
  }
}

describe('IPv6 off in the pod netns (root, real netns)', () => {
  it('ipv6: false installs no guard and auto no IPv6 capture when every disable_ipv6 is 1', async () => {
    await eachRulesAndHandle(
      'nov6',
      (netns) => nsRun(netns, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']).then(() => undefined),
      async ({ applied, netnsPath, label }) => {
        expect(applied, label).toBe(true);
        expect((await nsRun(netnsPath, 'ip6tables-save', [])).includes('ISTIO_'), label).toBe(false);
        expect((await nsRun(netnsPath, 'iptables-save', [])).includes('ISTIO_OUTPUT'), label).toBe(true);
      },
    );
  });

  // lo's IPv6 is off too here (as `all=1` leaves it), so IPv6 capture cannot route (`local ::/0 dev lo` is refused):
  // an apply may fail, closed, but never report the pod done without IPv6 rules.
  it('IPv6 on only on an interface whose name has a dot (a VLAN sub-interface) is never left uncaptured', async () => {
    await eachRulesAndHandle(
      'vlan',
      async (netns) => {
        await nsRun(netns, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1', 'net.ipv6.conf.lo.disable_ipv6=1']);
        await nsRun(netns, 'ip', ['link', 'add', 'v0.5', 'type', 'veth', 'peer', 'name', 'v0p']);
        await nsRun(netns, 'sh', ['-c', 'echo 0 > /proc/sys/net/ipv6/conf/v0.5/disable_ipv6']);
      },
      async ({ applied, netnsPath, label, ipv6 }) => {
        const v6Rules = (await nsRun(netnsPath, 'ip6tables-save', [])).includes('ISTIO_');
        expect(!applied || v6Rules, `${label}: applied without IPv6 rules`).toBe(true);
        if (ipv6 === false) expect(applied && v6Rules, `${label}: the IPv6 guard needs no routing`).toBe(true);
      },
    );
  });
});
