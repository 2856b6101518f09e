import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RoutingApplier, RuleApplier, inpodRouting, inpodRules, netnsExecutor } from '@weir/iptables-builder';
import { listenSeqpacket, openNetns, type Netns, type SeqpacketSocket } from '@weir/netns';
import { fdUdpSocketFactory, type UdpSocketFactory, type UdpSocketSpec } from '../src/dns/udp-socket.js';
import { execFileP } from './support.js';

/** Root and every tool these tests drive; a missing one fails the test with its name. */
export function requireDnsTools(): void {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (network namespaces, iptables, SO_MARK): run as root');
  const missing = ['ip', 'nsenter', 'dnsmasq', 'dig', 'getent', 'curl', 'python3', 'iptables-restore'].filter(
    (t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0,
  );
  if (missing.length > 0) throw new Error(`missing tools: ${missing.join(', ')} (Debian: iproute2 util-linux dnsmasq-base dnsutils libc-bin curl python3 iptables)`);
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

// Until @weir/netns can make UDP sockets in a netns (see src/dns/INTEGRATION.md), a python3 helper
// started inside the pod netns makes them (SO_MARK, SO_REUSEPORT, bind) and passes each fd back over
// SOCK_SEQPACKET with SCM_RIGHTS. The proxy code under test sees exactly what the native call will give.
const HELPER = `
import json, socket, sys
c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
c.connect(sys.argv[1])
while True:
    req = c.recv(4096)
    if not req:
        break
    r = json.loads(req)
    try:
        fam = socket.AF_INET6 if r["family"] == 6 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            if r.get("mark"):
                s.setsockopt(socket.SOL_SOCKET, 36, r["mark"])
            if r.get("reusePort"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((r["address"], r["port"]))
            socket.send_fds(c, [b'{"ok":true}'], [s.fileno()])
        finally:
            s.close()
    except OSError as e:
        c.send(json.dumps({"ok": False, "errno": e.errno, "message": str(e)}).encode())
`;

export class UdpHelper {
  #queue: Promise<unknown> = Promise.resolve();
  private constructor(
    readonly proc: ChildProcess,
    readonly conn: SeqpacketSocket,
    readonly dir: string,
  ) {}

  static async start(netns: string): Promise<UdpHelper> {
    const dir = mkdtempSync(join(tmpdir(), 'wudp-'));
    const path = join(dir, 'helper.sock');
    const server = listenSeqpacket(path);
    const accepted = new Promise<SeqpacketSocket>((resolve) => server.once('connection', resolve));
    const proc = spawn('ip', ['netns', 'exec', netns, 'python3', '-c', HELPER, path], { stdio: ['ignore', 'inherit', 'inherit'] });
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('udp helper did not connect within 10 s')), 10_000).unref());
    const conn = await Promise.race([accepted, timeout]);
    server.close();
    return new UdpHelper(proc, conn, dir);
  }

  #request(spec: UdpSocketSpec): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.conn.once('message', (data: Buffer, fds: number[]) => {
        const r = JSON.parse(data.toString()) as { ok: boolean; errno?: number; message?: string };
        if (r.ok && fds[0] !== undefined) return resolve(fds[0]);
        reject(Object.assign(new Error(`udp socket ${spec.address}:${spec.port}: ${r.message}`), { errno: r.errno }));
      });
      void this.conn.send(Buffer.from(JSON.stringify(spec))).catch(reject);
    });
  }

  /** The factory the DNS proxy gets: one request at a time over the helper connection. */
  get factory(): UdpSocketFactory {
    return fdUdpSocketFactory((spec) => {
      const next = this.#queue.then(() => this.#request(spec));
      this.#queue = next.catch(() => {});
      return next;
    });
  }

  async stop(): Promise<void> {
    this.conn.close();
    if (this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGTERM');
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Non-comment answer lines of `dig +short`. */
export function digShort(stdout: string): string[] {
  return stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith(';'));
}
