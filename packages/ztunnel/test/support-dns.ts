import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RoutingApplier, RuleApplier, inpodRouting, inpodRules, netnsExecutor } from '@weir/iptables-builder';
import { createUdpSocket, openNetns, type Netns } from '@weir/netns';
import { fdUdpSocketFactory, type UdpSocketFactory } from '../src/dns/udp-socket.js';
import { execFileP } from './support.js';

/** Root and every tool these tests drive; a missing one fails the test with its name. */
export function requireDnsTools(): void {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (network namespaces, iptables, SO_MARK): run as root');
  const missing = ['ip', 'nsenter', 'dnsmasq', 'dig', 'getent', 'curl', 'iptables-restore'].filter(
    (t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0,
  );
  if (missing.length > 0) throw new Error(`missing tools: ${missing.join(', ')} (Debian: iproute2 util-linux dnsmasq-base dnsutils libc-bin curl iptables)`);
}

const sh = (cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> => execFileP(cmd, args);

export const POD_IP = '10.253.0.2';
export const PEER_IP = '10.253.0.1';
export const POD_IP6 = 'fd00:253::2';
export const PEER_IP6 = 'fd00:253::1';

/**
 * A pod netns wired by a veth pair to a peer netns (where the test's resolver and servers live),
 * with a default route via the peer, and `/etc/netns/<pod>/resolv.conf` so `ip netns exec` tools in
 * the pod use the peer as resolver with a kubelet-style search path.
 */
export class PodPair {
  readonly netns: Netns;
  readonly peerNetns: Netns;
  private constructor(
    readonly pod: string,
    readonly peer: string,
  ) {
    this.netns = openNetns(`/var/run/netns/${pod}`);
    this.peerNetns = openNetns(`/var/run/netns/${peer}`);
  }

  get podPath(): string {
    return `/var/run/netns/${this.pod}`;
  }

  static async create(tag: string, o: { namespace?: string; ipv6Lo?: boolean; ipv6?: boolean } = {}): Promise<PodPair> {
    const id = `${tag}${process.pid % 10000}${randomBytes(2).toString('hex')}`;
    const pod = `wd${id}`;
    const peer = `wu${id}`;
    await sh('ip', ['netns', 'add', pod]);
    await sh('ip', ['netns', 'add', peer]);
    try {
      const inPod = (...a: string[]): Promise<unknown> => sh('ip', ['netns', 'exec', pod, ...a]);
      const inPeer = (...a: string[]): Promise<unknown> => sh('ip', ['netns', 'exec', peer, ...a]);
      if (o.ipv6Lo === false) await inPod('sysctl', '-qw', 'net.ipv6.conf.lo.disable_ipv6=1');
      await inPod('ip', 'link', 'set', 'lo', 'up');
      await inPeer('ip', 'link', 'set', 'lo', 'up');
      await inPod('ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0', 'netns', peer);
      await inPod('ip', 'addr', 'add', `${POD_IP}/24`, 'dev', 'eth0');
      await inPod('ip', 'link', 'set', 'eth0', 'up');
      await inPeer('ip', 'addr', 'add', `${PEER_IP}/24`, 'dev', 'peer0');
      await inPeer('ip', 'link', 'set', 'peer0', 'up');
      await inPod('ip', 'route', 'add', 'default', 'via', PEER_IP);
      if (o.ipv6) {
        await inPod('ip', '-6', 'addr', 'add', `${POD_IP6}/64`, 'dev', 'eth0', 'nodad');
        await inPeer('ip', '-6', 'addr', 'add', `${PEER_IP6}/64`, 'dev', 'peer0', 'nodad');
        await inPod('ip', '-6', 'route', 'add', 'default', 'via', PEER_IP6);
      }
      const ns = o.namespace ?? 'default';
      mkdirSync(`/etc/netns/${pod}`, { recursive: true });
      writeFileSync(
        `/etc/netns/${pod}/resolv.conf`,
        `nameserver ${PEER_IP}\nsearch ${ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:3 attempts:1\n`,
      );
      return new PodPair(pod, peer);
    } catch (err) {
      await sh('ip', ['netns', 'del', pod]).catch(() => {});
      await sh('ip', ['netns', 'del', peer]).catch(() => {});
      rmSync(`/etc/netns/${pod}`, { recursive: true, force: true });
      throw err;
    }
  }

  /** The in-pod rules with DNS capture on (default: the seed's TPROXY variant), and their policy routing. */
  async capture(o: { mode?: 'tproxy' | 'redirect'; ipv6?: boolean } = {}): Promise<void> {
    const executor = netnsExecutor(this.podPath);
    await new RuleApplier({ executor }).apply(inpodRules({ mode: o.mode ?? 'tproxy', dnsCapture: true, ipv6: o.ipv6 ?? false }));
    await new RoutingApplier({ executor }).apply(inpodRouting({ ipv6: o.ipv6 ?? false }));
  }

  /** Runs a command inside the pod netns (with its resolv.conf); never throws on a non-zero exit. */
  async exec(cmd: string, args: string[], timeoutMs = 20_000): Promise<{ stdout: string; stderr: string; code: number; ms: number }> {
    const started = Date.now();
    try {
      const r = await execFileP('ip', ['netns', 'exec', this.pod, cmd, ...args], { timeout: timeoutMs });
      return { ...r, code: 0, ms: Date.now() - started };
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; code?: number };
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? String(err), code: typeof e.code === 'number' ? e.code : -1, ms: Date.now() - started };
    }
  }

  async destroy(): Promise<void> {
    this.netns.close();
    this.peerNetns.close();
    await sh('ip', ['netns', 'del', this.pod]).catch(() => {});
    await sh('ip', ['netns', 'del', this.peer]).catch(() => {});
    rmSync(`/etc/netns/${this.pod}`, { recursive: true, force: true });
  }
}

/** Debian's dnsmasq as the pod's upstream resolver, in the peer netns; `log` collects its query log. */
export class Dnsmasq {
  log = '';
  private constructor(
    readonly proc: ChildProcess,
    readonly dir: string,
  ) {}

  static async start(netns: string, listen: string, extra: string[] = []): Promise<Dnsmasq> {
    const dir = mkdtempSync(join(tmpdir(), 'wdnsmasq-'));
    const proc = spawn(
      'ip',
      [
        'netns', 'exec', netns, 'dnsmasq', '--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts',
        '--bind-interfaces', `--listen-address=${listen}`, '--port=53', `--pid-file=${join(dir, 'pid')}`, '--user=root',
        '--log-queries', '--log-facility=-', ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const d = new Dnsmasq(proc, dir);
    const onData = (b: Buffer): void => {
      d.log += b.toString();
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    const until = Date.now() + 10_000;
    while (!/started, version/.test(d.log)) {
      if (proc.exitCode !== null) throw new Error(`dnsmasq exited (${proc.exitCode}): ${d.log}`);
      if (Date.now() > until) throw new Error(`dnsmasq did not start: ${d.log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return d;
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGTERM');
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The DNS proxy's UDP sockets as ztunnel makes them: natively inside the pod netns (@weir/netns). */
export function podUdpSockets(netns: Netns): UdpSocketFactory {
  return fdUdpSocketFactory((spec) =>
    createUdpSocket({ netns, family: spec.family, bindAddress: spec.address, bindPort: spec.port, mark: spec.mark, reusePort: spec.reusePort }),
  );
}

/** Non-comment answer lines of `dig +short`. */
export function digShort(stdout: string): string[] {
  return stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith(';'));
}
