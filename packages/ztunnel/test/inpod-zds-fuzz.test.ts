// Bad ZDS input from the node agent, through the real path (seqpacket socket, SCM_RIGHTS, the
// @weir/redirect-protocol decoder, ZdsClient, InpodManager): every bad record gets an answer that
// names the field at fault, nothing crashes, no fd leaks, and a pod already served stays served.
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { listenSeqpacket, openNetns, type SeqpacketServer, type SeqpacketSocket } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsClient, decodeAck, encodeRequest, type WorkloadInfo } from '@weir/redirect-protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityManager } from '../src/identity.js';
import { InpodManager } from '../src/inpod-manager.js';
import { createLogger } from '../src/logger.js';
import { ZtunnelMetrics } from '../src/metrics.js';
import { WorkloadStore } from '../src/workload-store.js';
import { requireRoot, uniqueName, waitFor } from './support.js';

const run = promisify(execFile);
const names: string[] = [];
let dir: string;
let ca: LocalCa;

async function makeNetns(): Promise<string> {
  const name = uniqueName('f');
  await run('ip', ['netns', 'add', name]);
  names.push(name);
  await run('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  return name;
}

function listening(name: string): number[] {
  const out = execFileSync('ip', ['netns', 'exec', name, 'ss', '-Htln'], { encoding: 'utf8' });
  return [...out.matchAll(/:(\d+)\s/g)].map((x) => Number(x[1])).filter((p) => p >= 15000 && p < 16000).sort();
}

const fdCount = (): number => readdirSync('/proc/self/fd').length;
const good: WorkloadInfo = { name: 'web-0', namespace: 'default', serviceAccount: 'web' };

/** The node agent's end, raw: records in and out exactly as the test writes them. */
class RawAgent {
  readonly #server: SeqpacketServer;
  #conn: SeqpacketSocket | undefined;
  #inbox: Buffer[] = [];
  #eof = false;
  #wake: (() => void) | undefined;
  connections = 0;
  /** ztunnel never sends an fd. */
  fdsReceived = 0;

  constructor(readonly path: string) {
    this.#server = listenSeqpacket(path);
    this.#server.on('connection', (s: SeqpacketSocket) => {
      this.#conn?.close();
      this.#conn = s;
      this.#inbox = [];
      this.#eof = false;
      this.connections++;
      s.on('message', (data: Buffer, fds: number[]) => {
        this.fdsReceived += fds.length;
        this.#inbox.push(data);
        this.#wake?.();
      });
      s.on('close', () => {
        if (this.#conn === s) this.#eof = true;
        this.#wake?.();
      });
      s.on('error', () => {});
      this.#wake?.();
    });
  }

  get connected(): boolean {
    return this.#conn !== undefined && !this.#eof;
  }

  /** The next record from ztunnel, or 'eof' when the connection ended first. */
  async next(timeoutMs = 8000): Promise<Buffer | 'eof'> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = this.#inbox.shift();
      if (r) return r;
      if (this.#eof) return 'eof';
      if (Date.now() > end) throw new Error('ztunnel sent nothing in time');
      await new Promise<void>((res) => {
        const t = setTimeout(res, 50);
        this.#wake = () => {
          clearTimeout(t);
          res();
        };
      });
    }
  }

  async send(data: Uint8Array, fds: number[] = []): Promise<void> {
    await this.#conn!.send(data, fds);
  }

  /** Sends and returns ztunnel's answer: the Ack.error ('' = ack), or 'eof' (dropped, no answer). */
  async ask(data: Uint8Array, fds: number[] = []): Promise<string> {
    await this.send(data, fds);
    const r = await this.next();
    return r === 'eof' ? 'eof' : decodeAck(r, 0).error;
  }

  /** Waits for ztunnel's (re)connect and hello. */
  async accept(): Promise<void> {
    await waitFor('ztunnel (re)connected', async () => this.connected, 10_000);
    const hello = await this.next();
    if (hello === 'eof') throw new Error('ztunnel hung up before its hello');
  }

  close(): Promise<void> {
    this.#conn?.close();
    return this.#server.close();
  }
}

/** A deterministic PRNG (mulberry32): a failing case can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

beforeAll(async () => {
  requireRoot();
  dir = mkdtempSync(join(tmpdir(), 'wz-fuzz-'));
  ca = await LocalCa.create({ trustDomain: 'cluster.local' });
});

afterAll(async () => {
  for (const n of names) await run('ip', ['netns', 'del', n]).catch(() => {});
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('ZDS: bad records from the node agent', () => {
  it('are nacked naming the field, or end the connection with a protocol error; nothing crashes, leaks or drops the served pod', async () => {
    const [ns0, ns1] = [await makeNetns(), await makeNetns()];
    const pod0 = openNetns(`/var/run/netns/${ns0}`);
    const pod1 = openNetns(`/var/run/netns/${ns1}`);
    const own = openNetns('/proc/self/ns/net');
    const identities = new IdentityManager(ca);
    const lines: string[] = [];
    const m = new InpodManager({
      proxy: { store: new WorkloadStore(), identities, trustBundle: ca.rootPem, trustDomain: 'cluster.local', mark: 1337, reusePort: true, origSrc: 'auto', ipv6: false },
      metrics: new ZtunnelMetrics(),
      logger: createLogger({ write: (l) => lines.push(l) }).logger,
      retryMs: 60_000,
    });
    const agent = new RawAgent(join(dir, `${uniqueName('a')}.sock`));
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown): void => void unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    const add = (uid: string, info: WorkloadInfo = good): Uint8Array => encodeRequest({ kind: 'add', uid, workloadInfo: info });
    /** The snapshot a (re)connected ztunnel gets: pod u0 in ns0. */
    const snapshot = async (): Promise<void> => {
      await agent.accept();
      expect(await agent.ask(add('u0'), [pod0.fd])).toBe('');
      expect(await agent.ask(encodeRequest({ kind: 'snapshotSent' }))).toBe('');
    };
    const u0Served = (): void => {
      expect(m.pods().find((p) => p.uid === 'u0')).toMatchObject({ state: 'Up', netns: pod0.id });
      expect(listening(ns0)).toEqual([15001, 15006, 15008]);
    };
    let zds: ZdsClient | undefined;
    try {
      zds = new ZdsClient({ path: agent.path, backoff: { initialMs: 10, maxMs: 50 } });
      zds.start(m);
      await snapshot();
      u0Served();
      const fdsBefore = fdCount();

      // Valid protobuf, wrong content: a nack naming the field, the connection stays.
      const semantic: [string, Uint8Array, number[], RegExp][] = [
        ['namespace with a slash', add('u1', { ...good, namespace: 'a/b' }), [pod1.fd], /workload_info\.namespace "a\/b"/],
        ['empty namespace', add('u1', { ...good, namespace: '' }), [pod1.fd], /workload_info\.namespace ""/],
        ['pod name with a newline', add('u1', { ...good, name: 'web\n0' }), [pod1.fd], /workload_info\.name "web\\n0"/],
        ['service account upper case', add('u1', { ...good, serviceAccount: 'Web_SA' }), [pod1.fd], /workload_info\.service_account "Web_SA"/],
        ['uid with a control character', add('u\u0001', good), [pod1.fd], /uid "u\\u0001" is not a pod uid/],
        ["ztunnel's own netns", add('u1'), [own.fd], /u1: the netns .* is ztunnel's own network namespace/],
        ["another pod's netns", add('u1'), [pod0.fd], /u1: its netns .* is pod u0's/],
      ];
      for (const [what, record, fds, want] of semantic) {
        const answer = await agent.ask(record, fds);
        expect(answer, what).toMatch(want);
        expect(agent.connected, `${what}: connection kept`).toBe(true);
        u0Served();
      }
      expect(agent.connections).toBe(1);
      expect(m.pods().map((p) => p.uid)).toEqual(['u0']);
      expect(listening(ns1)).toEqual([]);

      // Mutations of a valid Add (with the fd), the bytes cut or flipped: whatever decodes is acked
      // or nacked, the rest is a protocol-error nack and a reconnect. Seeded, so a failure replays.
      const base = add('fuzz-target-0001', { name: 'fuzz-0', namespace: 'fuzzing', serviceAccount: 'fuzzer' });
      const rnd = prng(20261129);
      const outcomes = new Map<string, number>();
      for (let i = 0; i < 60; i++) {
        const bytes = Buffer.from(base);
        const cut = i % 3 === 0;
        const mutated = cut ? bytes.subarray(0, Math.floor(rnd() * bytes.length)) : bytes;
        if (!cut) for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) mutated[Math.floor(rnd() * mutated.length)]! ^= 1 << Math.floor(rnd() * 8);
        await agent.send(mutated, [pod1.fd]);
        const r = await agent.next();
        let kind: string;
        if (r === 'eof') kind = 'dropped without an answer';
        else {
          const error = decodeAck(r, 0).error;
          kind = error === '' ? 'ack' : error.startsWith('protocol error:') ? 'protocol error' : 'nack';
          if (kind === 'protocol error') {
            // A protocol error names what was wrong with the record, then the connection ends.
            expect(error, `case ${i}: ${mutated.toString('hex')}`).toMatch(/WorkloadRequest|AddWorkload|record|fd/);
            expect(await agent.next()).toBe('eof');
          }
        }
        outcomes.set(kind, (outcomes.get(kind) ?? 0) + 1);
        expect(kind, `case ${i}: ${mutated.toString('hex')}`).not.toBe('dropped without an answer');
        if (!agent.connected) await snapshot();
        u0Served();
        // Whatever a mutated Add started is removed again, as the agent would on the pod's delete.
        for (const p of m.pods()) if (p.uid !== 'u0') expect(await agent.ask(encodeRequest({ kind: 'del', uid: p.uid }))).toBe('');
      }
      expect(outcomes.get('protocol error') ?? 0).toBeGreaterThan(0);
      expect(listening(ns1)).toEqual([]);
      // Closes run on later turns of the loop: wait for them rather than a fixed 200 ms.
      const fdsUntil = Date.now() + 5_000;
      while (fdCount() !== fdsBefore && Date.now() < fdsUntil) await new Promise((r) => setTimeout(r, 50));
      expect(fdCount()).toBe(fdsBefore);
      expect(unhandled).toEqual([]);
      expect(agent.fdsReceived).toBe(0);
      u0Served();
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await zds?.close();
      await agent.close();
      await m.close({ deadlineMs: 0 });
      identities.close();
      pod0.close();
      pod1.close();
      own.close();
    }
  });
});
