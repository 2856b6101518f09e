import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import type * as net from 'node:net';
import { promisify } from 'node:util';
import { RoutingApplier, RuleApplier, inpodRouting, inpodRules, netnsExecutor, type InpodMode } from '@weir/iptables-builder';
import { connectTcp, listenTcp, openNetns, type Netns } from '@weir/netns';
import type { ZdsServer } from '@weir/redirect-protocol';
import type { TopologyPod } from '@weir/topology';
import { IdentityManager, type CertificateSource } from '../src/identity.js';
import { Ztunnel, type ZtunnelOptions } from '../src/ztunnel.js';

export const execFileP = promisify(execFile);

/** Root and the tools these tests drive; a missing one fails the test with its name. */
export function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (network namespaces, iptables, SO_MARK): run as root');
}

export interface CaptureOptions {
  /** Default: the seed's TPROXY set. */
  mode?: InpodMode;
  /** Also capture the pod's DNS (port 53) to the proxy's 15053; default off. */
  dnsCapture?: boolean;
}

/**
 * In-pod rules (IPv4) and the policy routing they need, applied inside the pod's netns, plus what the
 * node agent sets per pod: `net.ipv4.tcp_migrate_req=1`, so connections still in a closing ztunnel's
 * accept queue move to its SO_REUSEPORT successor instead of being reset.
 */
export async function capturePod(pod: TopologyPod, o: CaptureOptions = {}): Promise<void> {
  await execFileP('ip', ['netns', 'exec', pod.netns, 'sysctl', '-qw', 'net.ipv4.tcp_migrate_req=1']);
  const executor = netnsExecutor(pod.netnsPath);
  await new RuleApplier({ executor }).apply(inpodRules({ mode: o.mode ?? 'tproxy', dnsCapture: o.dnsCapture ?? false, ipv6: false }));
  await new RoutingApplier({ executor }).apply(inpodRouting({ ipv6: false }));
}

/** What the node agent does to hand a pod to ztunnel: ZDS AddWorkload with the pod's netns (the server keeps its own duplicate). */
export async function zdsAddPod(zds: ZdsServer, pod: TopologyPod, serviceAccount: string): Promise<void> {
  const ns = openNetns(pod.netnsPath);
  try {
    await zds.addWorkload(pod.uid, { name: pod.name, namespace: pod.namespace, serviceAccount }, ns);
  } finally {
    ns.close();
  }
}

export interface LocalWorkloadSpec {
  pod: TopologyPod;
  serviceAccount: string;
  node: string;
  /** Inline YAML map of the workload's services, e.g. `{"ns/h": {80: 8080}}`. */
  services?: string;
}

/**
 * ztunnel local config YAML for the given pods (HBONE workloads), plus policy and service list YAML
 * and further workload list items (e.g. hostname-only ones).
 */
export function localConfigYaml(workloads: LocalWorkloadSpec[], policies = '', services = '', moreWorkloads = ''): string {
  const w = workloads
    .map(
      ({ pod, serviceAccount, node, services: svc }) =>
        `- {uid: "${pod.uid}", name: ${pod.name}, namespace: ${pod.namespace}, serviceAccount: ${serviceAccount}, ` +
        `trustDomain: cluster.local, workloadIps: ["${pod.ip}"], protocol: HBONE, node: ${node}${svc ? `, services: ${svc}` : ''}}`,
    )
    .join('\n');
  return `workloads:\n${w}\n${moreWorkloads ? `${moreWorkloads}\n` : ''}${policies ? `policies:\n${policies}\n` : ''}${services ? `services:\n${services}\n` : ''}`;
}

/** Listening sockets in a pod's netns (`ss -Htlnp`): port → owning pids. */
export async function podListeners(pod: TopologyPod): Promise<Map<number, number[]>> {
  const { stdout } = await execFileP('ip', ['netns', 'exec', pod.netns, 'ss', '-Htlnp']);
  const out = new Map<number, number[]>();
  for (const line of stdout.split('\n')) {
    const m = /\s(?:\S*):(\d+)\s+\S+\s+users:\((.*)\)/.exec(line);
    if (!m) continue;
    const pids = [...m[2]!.matchAll(/pid=(\d+)/g)].map((x) => Number(x[1]));
    out.set(Number(m[1]), [...(out.get(Number(m[1])) ?? []), ...pids]);
  }
  return out;
}

/** An app server inside a pod's netns (this process, no mark): echo, remembering who connected. */
export class EchoApp {
  readonly clients: string[] = [];
  private constructor(
    readonly server: net.Server,
    readonly netns: Netns,
  ) {}

  static async start(pod: TopologyPod, port: number): Promise<EchoApp> {
    const netns = openNetns(pod.netnsPath);
    const { createServer } = await import('node:net');
    const app = new EchoApp(
      createServer({ allowHalfOpen: true }, (s) => {
        app.clients.push(s.remoteAddress ?? '');
        s.on('error', () => {});
        s.pipe(s);
      }),
      netns,
    );
    await listenTcp({ netns, host: '0.0.0.0', port }, app.server);
    return app;
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    this.netns.close();
  }
}

export interface TransferResult {
  sent: string;
  received: string;
  bytes: number;
  ms: number;
}

/**
 * From inside `from` (as an app would: no mark, so the pod's rules capture it), sends `bytes` random
 * bytes to host:port, half-closes, and reads the echo to EOF. Checksums both directions.
 */
export async function echoTransfer(from: Netns, host: string, port: number, bytes: number, timeoutMs = 60_000): Promise<TransferResult> {
  const started = Date.now();
  const socket = await connectTcp({ netns: from, family: 4, host, port, timeoutMs: 10_000 });
  return new Promise<TransferResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`transfer to ${host}:${port} timed out after ${timeoutMs} ms (${received} of ${bytes} bytes back)`));
    }, timeoutMs);
    const hSent = createHash('sha256');
    const hRecv = createHash('sha256');
    let received = 0;
    socket.on('data', (c: Buffer) => {
      received += c.length;
      hRecv.update(c);
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('end', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ sent: hSent.digest('hex'), received: hRecv.digest('hex'), bytes: received, ms: Date.now() - started });
    });
    const chunk = 1 << 20;
    let left = bytes;
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(chunk, left);
        const buf = randomBytes(n);
        hSent.update(buf);
        left -= n;
        if (!socket.write(buf)) return void socket.once('drain', pump);
      }
      socket.end();
    };
    pump();
  });
}

/** One connection attempt from inside `from`: resolves 'ok' when the echo answered, else the error code. */
export async function tryConnect(from: Netns, host: string, port: number, timeoutMs = 5000): Promise<string> {
  try {
    const r = await echoTransfer(from, host, port, 16, timeoutMs);
    return r.bytes === 16 && r.sent === r.received ? 'ok' : `short echo (${r.bytes} bytes)`;
  } catch (err) {
    const e = err as { sysCode?: string; code?: string; message: string };
    return e.sysCode ?? e.code ?? e.message;
  }
}

export async function httpGet(url: string, init?: RequestInit): Promise<{ status: number; body: string }> {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.text() };
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function uniqueName(tag: string): string {
  return `wz${tag}${process.pid % 10000}${randomBytes(2).toString('hex')}`;
}

/**
 * An IdentityManager whose certificates are issued by `ca` only after `release()`: lets a test stop a
 * proxy while its start() still waits for the certificate.
 */
export function gatedIdentities(ca: CertificateSource): { identities: IdentityManager; release: () => void } {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const identities = new IdentityManager({
    issueWorkloadCertificate: async (o) => {
      await gate;
      return ca.issueWorkloadCertificate(o);
    },
  });
  return { identities, release };
}

/**
 * A Ztunnel on `zds` with the in-process test defaults (node n1, no admin, metrics or readiness
 * server, no DNS proxy, a failed proxy start retried after 300 ms); `options` override them.
 */
export function testZtunnel(zds: ZdsServer, options: Omit<ZtunnelOptions, 'inpodUds' | 'nodeName'> & { nodeName?: string }): Ztunnel {
  return new Ztunnel({ inpodUds: zds.path, nodeName: 'n1', adminAddress: null, metricsAddress: null, readinessAddress: null, dnsProxy: false, proxyRetryMs: 300, ...options });
}

/** Starts `zt` and waits until the node agent side (`zds`) saw its first snapshot acked. */
export async function startAcked(zt: Ztunnel, zds: ZdsServer): Promise<void> {
  const acked = new Promise<void>((r) => zds.once('snapshotAcked', () => r()));
  await zt.start();
  await acked;
}

/** Hands `pods` (pod, service account) to `zt` over `zds` and waits until every one has its proxy up. */
export async function handOver(zds: ZdsServer, zt: Ztunnel, pods: readonly (readonly [TopologyPod, string])[]): Promise<void> {
  for (const [pod, sa] of pods) await zdsAddPod(zds, pod, sa);
  await waitFor(`${pods.length} proxies up`, async () => zt.pending().length === 0 && zt.manager.pods().length === pods.length);
}
