import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'node:http';
import type { Server } from 'node:net';
import { listenTcp, type Netns } from '@weir/netns';
import { ZdsClient, type ZdsAddEvent } from '@weir/redirect-protocol';
import { execInNetns } from '@weir/topology';
import { createNodeAgent, type CreateNodeAgentOptions, type Logger, type NodeAgent } from '../src/index.js';

/** Fails (never skips) when the machine cannot run these tests, naming what is missing. */
export async function requireRoot(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (netns, iptables, ipset): run them as root');
  for (const tool of ['ip', 'iptables-save', 'ipset', 'nsenter']) {
    const r = await execInNetns('/proc/self/ns/net', 'sh', ['-c', `command -v ${tool}`]).catch(() => undefined);
    if (!r || r.code !== 0) throw new Error(`these tests need ${tool} on PATH`);
  }
}

export function uniq(prefix: string): string {
  return `${prefix}${process.pid % 10000}${Math.random().toString(36).slice(2, 6)}`;
}

export async function until<T>(what: string, fn: () => T | Promise<T>, ms = 20_000): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function nsRun(netnsPath: string, cmd: string, args: string[]): Promise<string> {
  const r = await execInNetns(netnsPath, cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} in ${netnsPath}: exit ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** The ISTIO_ lines of iptables-save in a netns, without counters and comments. */
export async function istioLines(netnsPath: string): Promise<string[]> {
  const out = await nsRun(netnsPath, 'iptables-save', []);
  return out.split('\n').filter((l) => l.includes('ISTIO_') && l.startsWith('-A'));
}

export function postCmdAdd(socketPath: string, body: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/cmdadd', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(typeof body === 'string' ? body : JSON.stringify(body));
  });
}

/**
 * A ZDS test peer standing in for ztunnel: connects to the agent's socket, and for each added pod
 * listens inside the pod netns on 15006 (transparent, mark 1337) answering `ztunnel <uid>`, so a
 * captured connection is visible from the outside. Can be told to nack.
 */
export class ZtunnelPeer {
  readonly client: ZdsClient;
  readonly log: string[] = [];
  readonly proxies = new Map<string, { netns: Netns; server: Server }>();
  nackWith: string | undefined;
  snapshots = 0;

  constructor(path: string) {
    this.client = new ZdsClient({ path, backoff: { initialMs: 10, maxMs: 200 } });
  }

  start(): void {
    this.client.start({
      onAdd: async (ev: ZdsAddEvent) => {
        if (this.nackWith !== undefined) {
          ev.netns.close();
          this.log.push(`nack ${ev.uid}`);
          throw new Error(this.nackWith);
        }
        const old = this.proxies.get(ev.uid);
        if (old && old.netns.sameAs(ev.netns)) {
          ev.netns.close();
          this.log.push(`add ${ev.uid} (same netns)`);
          return;
        }
        if (old) await this.stop(ev.uid);
        const server = await listenTcp({ netns: ev.netns, host: '0.0.0.0', port: 15006, transparent: true, mark: 0x539, reusePort: true });
        server.on('connection', (s) => s.end(`ztunnel ${ev.uid}\n`));
        this.proxies.set(ev.uid, { netns: ev.netns, server });
        this.log.push(`add ${ev.uid}`);
      },
      onKeep: async (uid) => {
        this.log.push(`keep ${uid}`);
      },
      onDel: async (uid) => {
        this.log.push(`del ${uid}`);
        await this.stop(uid);
      },
      onSnapshotSent: async () => {
        this.snapshots++;
        this.log.push('snapshot');
      },
    });
  }

  private async stop(uid: string): Promise<void> {
    const p = this.proxies.get(uid);
    if (!p) return;
    this.proxies.delete(uid);
    await new Promise<void>((r) => p.server.close(() => r()));
    p.netns.close();
  }

  async close(): Promise<void> {
    await this.client.close();
    for (const uid of [...this.proxies.keys()]) await this.stop(uid);
  }
}

/** Connects from one netns to ip:port with bash's /dev/tcp and returns what the server said. */
export async function tcpRead(fromNetns: string, ip: string, port: number): Promise<string> {
  const r = await execInNetns(fromNetns, 'timeout', ['3', 'bash', '-c', `exec 3<>/dev/tcp/${ip}/${port}; timeout 2 cat <&3`]);
  return r.stdout.trim();
}

/** What an agent test starts; each part is optional (a failed beforeAll leaves some unset). */
export interface AgentTestParts {
  agent?: { stop(): Promise<unknown> } | undefined;
  peer?: { close(): unknown } | undefined;
  /** Closed after the agent and peer, before the API server and the topology (e.g. test listeners). */
  others?: () => void;
  api?: { close(): Promise<unknown> } | undefined;
  topo?: { destroy(): Promise<unknown> } | undefined;
  dir?: string | undefined;
}

/** afterAll of an agent test: every part is torn down even when an earlier one fails; the errors are thrown together. */
export async function teardownAgentTest(p: AgentTestParts): Promise<void> {
  const errors: unknown[] = [];
  const steps = [() => p.agent?.stop(), () => p.peer?.close(), () => p.others?.(), () => p.api?.close(), () => p.topo?.destroy(), () => (p.dir ? rm(p.dir, { recursive: true, force: true }) : undefined)];
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw new AggregateError(errors, `agent test teardown: ${errors.length} step(s) failed`);
}

/** A logged line as the agent wrote it: level, fields, message. */
export interface LoggedLine {
  level: string;
  obj: Record<string, unknown>;
  msg: string | undefined;
}

/** A Logger that keeps every info/warn/error line (debug dropped) in `lines`, children included. */
export function recordingLogger(): { logger: Logger; lines: LoggedLine[] } {
  const lines: LoggedLine[] = [];
  const at =
    (level: string) =>
    (obj: object, msg?: string): void =>
      void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  const logger: Logger = { info: at('info'), warn: at('warn'), error: at('error'), debug: () => undefined, child: () => logger };
  return { logger, lines };
}

/** Agent timings for tests: no drift pass, retries fast enough for a test's patience. */
export const TEST_AGENT_TIMING = { driftIntervalMs: 0, retryInitialMs: 50, retryMaxMs: 300 } as const;

/**
 * The beforeAll of most agent tests: a node agent with the test timings, no health server and its ZDS
 * socket in `dir`, started, and a ZtunnelPeer on that socket. An agent that fails to start is stopped.
 */
export async function startAgentWithPeer(o: { dir: string } & Omit<CreateNodeAgentOptions, 'nodeName' | 'zdsSocket' | 'runDir'> & { runDir?: string }): Promise<{ agent: NodeAgent; peer: ZtunnelPeer }> {
  const { dir, runDir, ...rest } = o;
  const zdsSocket = join(dir, 'ztunnel.sock');
  const agent = createNodeAgent({ nodeName: 'n1', runDir: runDir ?? join(dir, 'run'), zdsSocket, health: false, ...TEST_AGENT_TIMING, ...rest });
  try {
    await agent.start();
  } catch (err) {
    await agent.stop().catch(() => undefined);
    throw err;
  }
  const peer = new ZtunnelPeer(zdsSocket);
  peer.start();
  return { agent, peer };
}
