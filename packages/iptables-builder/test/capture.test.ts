import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { RuleApplier } from '../src/applier.js';
import type { IptablesBackend } from '../src/backend.js';
import type { Family } from '../src/model.js';
import { netnsExecutor } from '../src/executor.js';
import { hostProbeRules, inpodRules, ipsetCreateArgs, type InpodMode } from '../src/presets.js';
import { RoutingApplier, inpodRouting } from '../src/routing.js';
import { addNetns, delNetns, requireRootTools, ruleLines, sh, uniqueName } from './helpers.js';

requireRootTools(['ip', 'nsenter', 'python3', 'ipset', 'iptables-legacy-restore', 'iptables-nft-restore', 'nft']);

const helper = (name: string): string => fileURLToPath(new URL(`./helpers/${name}`, import.meta.url));
const POD_IP = '10.200.0.2';
const OUT_IP = '10.200.0.1';
const PROBE_IP = '169.254.7.127';

const netnsNames: string[] = [];
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  netnsNames.forEach(delNetns);
});

/** Start listen.py in a netns and wait for it to be bound. */
function listen(ns: string, tcp: number[], udp: number[] = [], extra: string[] = []): Promise<void> {
  const args = ['netns', 'exec', ns, 'python3', helper('listen.py'), tcp.join(','), ...(udp.length ? ['--udp', udp.join(',')] : []), ...extra];
  const child = spawn('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
    child.stdout?.on('data', (b: Buffer) => b.toString().includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`listen.py in ${ns} exited ${code}: ${err}`)));
  });
}

/** A connect.py process inside `ns`: each call is one exchange, answered by the listener that got it. */
async function connector(ns: string): Promise<(host: string, port: number, ...opts: string[]) => Promise<string>> {
  const child = spawn('ip', ['netns', 'exec', ns, 'python3', helper('connect.py')], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  const lines = createInterface({ input: child.stdout as Readable })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.value !== 'ready') throw new Error(`connect.py in ${ns} did not start: ${String(first.value)}`);
  let queue = Promise.resolve('');
  return (host, port, ...opts) => {
    queue = queue.then(async () => {
      child.stdin?.write(`${[host, port, ...opts].join(' ')}\n`);
      const answer = await lines.next();
      if (answer.done) throw new Error(`connect.py in ${ns} exited`);
      return answer.value as string;
    });
    return queue;
  };
}

interface Addresses {
  readonly family: Family;
  readonly pod: string;
  readonly out: string;
  readonly prefix: number;
  readonly probe: string;
  readonly far: string;
  readonly loopback: string;
  readonly dns: string;
}
const V4: Addresses = {
  family: 'ipv4',
  pod: POD_IP,
  out: OUT_IP,
  prefix: 24,
  probe: PROBE_IP,
  far: '203.0.113.7',
  loopback: '127.0.0.1',
  dns: '192.0.2.53',
};
const V6: Addresses = {
  family: 'ipv6',
  pod: 'fd00:200::2',
  out: 'fd00:200::1',
  prefix: 64,
  probe: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
  far: '2001:db8::7',
  loopback: '::1',
  dns: '2001:db8::53',
};

/** RegExp source for `addr:port` as listen.py prints it (`port` may itself be a pattern). */
const at = (addr: string, port: number | string): string =>
  `${(addr.includes(':') ? `[${addr}]` : addr).replace(/[.[\]]/g, '\\$&')}:${port}`;

const combos: [InpodMode, IptablesBackend, Addresses][] = [
  ['tproxy', 'legacy', V4],
  ['tproxy', 'nft', V4],
  ['tproxy', 'nftables', V4],
  ['redirect', 'nft', V4],
  ['redirect', 'nftables', V4],
  ['tproxy', 'nft', V6],
  ['tproxy', 'nftables', V6],
  ['redirect', 'legacy', V6],
];

for (const [mode, backend, a] of combos) {
  describe(`${mode} mode on ${backend}, ${a.family}: traffic really goes to ztunnel's ports`, () => {
    const pod = uniqueName('p');
    const out = uniqueName('o');
    type Connect = (host: string, port: number, ...opts: string[]) => Promise<string>;
    const from: { pod: Connect; out: Connect } = { pod: () => Promise.resolve(''), out: () => Promise.resolve('') };
    const v6 = a.family === 'ipv6';

    beforeAll(async () => {
      netnsNames.push(pod, out);
      const podPath = addNetns(pod);
      addNetns(out);
      const vethPod = uniqueName('vp');
      const vethOut = uniqueName('vo');
      const nodad = v6 ? ['nodad'] : [];
      sh('ip', ['-n', pod, 'link', 'add', vethPod, 'type', 'veth', 'peer', 'name', vethOut, 'netns', out]);
      sh('ip', ['-n', pod, 'addr', 'add', `${a.pod}/${a.prefix}`, 'dev', vethPod, ...nodad]);
      sh('ip', ['-n', pod, 'link', 'set', vethPod, 'up']);
      sh('ip', ['-n', out, 'addr', 'add', `${a.out}/${a.prefix}`, 'dev', vethOut, ...nodad]);
      sh('ip', ['-n', out, 'addr', 'add', `${a.probe}/${v6 ? 128 : 32}`, 'dev', vethOut, ...nodad]);
      sh('ip', ['-n', out, 'link', 'set', vethOut, 'up']);
      sh('ip', ['-n', pod, 'route', 'add', 'default', 'via', a.out]);

      const executor = netnsExecutor(podPath);
      const applied = await new RuleApplier({ executor, backend }).apply(inpodRules({ mode, ipv4: !v6, ipv6: v6 }));
      expect(applied.changed).toBe(true);
      const routing = inpodRouting({ ipv4: !v6, ipv6: v6 });
      expect((await new RoutingApplier({ executor }).apply(routing)).changed).toBe(true);
      // ztunnel's three ports, the app's port, and DNS in the pod; a plain server outside.
      const fam = v6 ? ['--v6'] : [];
      await Promise.all([
        listen(pod, [15001, 15006, 15008, 8080], [15053], fam),
        listen(out, [9090, 8080], [], fam),
      ]);
      [from.pod, from.out] = await Promise.all([connector(pod), connector(out)]);
    });

    it('an outbound connection to any address:port lands on 15001', async () => {
      // REDIRECT in OUTPUT delivers to the loopback address; SO_ORIGINAL_DST keeps the real one.
      expect(await from.pod(a.far, 80)).toMatch(new RegExp(`^15001 ${at(a.loopback, 15001)} ${at(a.far, 80)} `));
      expect(await from.pod(a.out, 9090)).toMatch(new RegExp(`^15001 ${at(a.loopback, 15001)} ${at(a.out, 9090)} `));
    });

    it('a socket with mark 0x539 (ztunnel) is not redirected', async () => {
      expect(await from.pod(a.out, 9090, '--mark', '0x539')).toMatch(new RegExp(`^9090 ${at(a.out, 9090)} `));
    });

    it('an inbound connection to any pod port lands on 15006, to 15008 on 15008', async () => {
      expect(await from.out(a.pod, 8080)).toMatch(new RegExp(`^15006 .*${at(a.pod, 8080)}`));
      expect(await from.out(a.pod, 4242)).toMatch(new RegExp(`^15006 .*${at(a.pod, 4242)}`));
      expect(await from.out(a.pod, 15008)).toMatch(/^15008 /);
    });

    it('traffic from the probe address is not captured', async () => {
      expect(await from.out(a.pod, 8080, '--source', a.probe)).toMatch(new RegExp(`^8080 .* ${at(a.probe, '\\d+')}$`));
    });

    it('loopback is not captured', async () => {
      expect(await from.pod(a.loopback, 8080)).toMatch(/^8080 /);
    });

    it('DNS over UDP goes to 15053', async () => {
      expect(await from.pod(a.dns, 53, '--udp')).toBe('15053 udp -');
    });
  });
}

describe('policy routing', () => {
  it('is added once, reported, and removed', async () => {
    const ns = uniqueName('r');
    netnsNames.push(ns);
    const routing = new RoutingApplier({ executor: netnsExecutor(addNetns(ns)) });
    const spec = inpodRouting({ ipv6: true });
    expect(await routing.missing(spec)).toEqual([
      ['-4', 'rule', 'add', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133'],
      ['-6', 'rule', 'add', 'fwmark', '0x111/0xfff', 'pref', '32764', 'lookup', '133'],
      ['-4', 'route', 'replace', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '133'],
      ['-6', 'route', 'replace', 'local', '::/0', 'dev', 'lo', 'table', '133'],
    ]);
    expect(await routing.apply(spec)).toEqual({ changed: true });
    expect(await routing.apply(spec)).toEqual({ changed: false });
    expect(sh('ip', ['-n', ns, '-4', 'rule', 'show'])).toContain('32764:\tfrom all fwmark 0x111/0xfff lookup 133');
    await routing.remove(spec);
    expect(await routing.missing(spec)).toHaveLength(4);
    expect(sh('ip', ['-n', ns, '-4', 'rule', 'show'])).not.toContain('fwmark');
  });
});

describe('host probe SNAT', () => {
  it("lets the node's probes past the in-pod rules, and only for pods in the probe set", async () => {
    const host = uniqueName('h');
    const pod = uniqueName('q');
    netnsNames.push(host, pod);
    const hostPath = addNetns(host);
    const podPath = addNetns(pod);
    const vHost = uniqueName('vh');
    const vPod = uniqueName('vq');
    sh('ip', ['-n', host, 'link', 'add', vHost, 'type', 'veth', 'peer', 'name', vPod, 'netns', pod]);
    sh('ip', ['-n', host, 'addr', 'add', '10.201.0.1/24', 'dev', vHost]);
    sh('ip', ['-n', host, 'link', 'set', vHost, 'up']);
    sh('ip', ['-n', pod, 'addr', 'add', '10.201.0.2/24', 'dev', vPod]);
    sh('ip', ['-n', pod, 'link', 'set', vPod, 'up']);
    sh('ip', ['-n', pod, 'route', 'add', 'default', 'via', '10.201.0.1']);

    const setName = uniqueName('ps');
    const { ruleSet, ipsets } = hostProbeRules({ setNameV4: setName });
    for (const set of ipsets) sh('ip', ['netns', 'exec', host, 'ipset', ...ipsetCreateArgs(set)]);
    sh('ip', ['netns', 'exec', host, 'ipset', 'add', setName, '10.201.0.2', 'comment', 'pod-uid-1']);
    const hostRules = new RuleApplier({ executor: netnsExecutor(hostPath), backend: 'nft' });
    expect((await hostRules.apply(ruleSet)).changed).toBe(true);
    expect(ruleLines(sh('ip', ['netns', 'exec', host, 'iptables-nft-save']), 'nat')).toEqual([
      '-A POSTROUTING -j ISTIO_POSTRT',
      `-A ISTIO_POSTRT -p tcp -m owner --socket-exists -m set --match-set ${setName} dst -j SNAT --to-source 169.254.7.127`,
    ]);
    await new RuleApplier({ executor: netnsExecutor(podPath), backend: 'nft' }).apply(inpodRules());
    await listen(pod, [15001, 15006, 15008, 8080]);
    const fromHost = await connector(host);

    expect(await fromHost('10.201.0.2', 8080)).toMatch(/^8080 10\.201\.0\.2:8080 \S+ 169\.254\.7\.127:\d+$/);
    sh('ip', ['netns', 'exec', host, 'ipset', 'del', setName, '10.201.0.2']);
    expect(await fromHost('10.201.0.2', 8080)).toMatch(/^15006 10\.201\.0\.2:8080 \S+ 10\.201\.0\.1:\d+$/);

    await hostRules.cleanup();
    expect(sh('ip', ['netns', 'exec', host, 'iptables-nft-save'])).not.toMatch(/ISTIO_/);
  });
});
