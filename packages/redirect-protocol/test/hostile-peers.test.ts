// Bad input from peers written without any Weir code (/usr/bin/python3, raw SOCK_SEQPACKET records
// with SCM_RIGHTS): every bad record is a typed error and a clean reconnect, no crash, no fd leak.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNetns, type Netns } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ZdsClient,
  ZdsProtocolError,
  ZdsServer,
  type ZdsAddEvent,
  type ZdsError,
  type ZdsProtocolViolation,
} from '../src/index.js';
import { openFdCount, until } from '../src/test-support/peers.js';
import { JsonChild, createNetns, deleteNetns, requireRoot } from './helpers.js';

const PYTHON = '/usr/bin/python3';
const peer = (name: string) => join(import.meta.dirname, 'peers', name);
const nsName = `wzh${process.pid}${Math.random().toString(36).slice(2, 6)}`;
let nsPath: string;
let pod: Netns;
let dir: string;

beforeAll(() => {
  requireRoot('hostile-peer ZDS tests');
  nsPath = createNetns(nsName);
  pod = openNetns(nsPath);
  dir = mkdtempSync(join(tmpdir(), 'zds-hostile-'));
});

afterAll(() => {
  pod?.close();
  deleteNetns(nsName);
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

function violations(errs: (ZdsError | undefined)[]): (ZdsProtocolViolation | string | undefined)[] {
  return errs.map((e) => (e instanceof ZdsProtocolError ? e.violation : e?.code));
}

describe('ZdsServer against a hostile ztunnel', () => {
  it('closes each bad connection with a typed error, leaks no fd, and serves the next ztunnel', async () => {
    const server = new ZdsServer({ path: join(dir, 'agent.sock'), ackTimeoutMs: 3000 });
    const errs: (ZdsError | undefined)[] = [];
    server.on('disconnect', (_c, err) => errs.push(err));
    await server.start();
    try {
      await server.addWorkload('uid-a', { name: 'web-0', namespace: 'default', serviceAccount: 'web' }, pod).catch(() => {});
      const fdsBefore = openFdCount();
      const py = new JsonChild(PYTHON, [peer('bad_ztunnel.py'), server.path, nsPath]);
      const results = await py.waitFor((e) => 'scenario' in e, 11, 60_000);
      await until(() => py.exited, 'the peer to exit');
      expect(py.proc.exitCode, py.stderr).toBe(0);

      for (const r of results.slice(0, 10)) expect(r.eof, `${String(r.scenario)}: server hung up`).toBe(true);
      // the agent sends nothing back to a bad hello; a bad ack came after the Add only
      expect(results.slice(0, 6).map((r) => r.received)).toEqual([[], [], [], [], [], []]);
      const good = results[10]!;
      expect(good.same_netns).toBe(true);
      expect(good.then).toBe('1a00'); // SnapshotSent
      // the Add as it crossed the real socket is byte for byte what protoc makes of the same value
      const protocAdd = execFileSync(
        'protoc',
        ['--encode=istio.workload.zds.WorkloadRequest', `-I${join(import.meta.dirname, '../proto')}`, 'zds.proto'],
        { input: 'add { uid: "uid-a" workload_info { name: "web-0" namespace: "default" service_account: "web" } }' },
      );
      expect(good.add).toBe(protocAdd.toString('hex'));

      await until(() => errs.length === 11, 'eleven disconnects');
      expect(violations(errs)).toEqual([
        'bad-version', // hello version 0
        'record-size', // empty record
        'malformed', // garbage
        'record-size', // over 1024 bytes
        'record-size', // over what the kernel hands over whole
        'fd', // fd on the hello
        'fd', // two fds on an ack
        'malformed', // truncated ack
        'unknown-payload', // WorkloadResponse field 2
        'sequence', // unsolicited ack
        undefined, // the good peer hanging up at the end: a plain disconnect
      ]);
      await new Promise((r) => setTimeout(r, 50));
      expect(openFdCount()).toBe(fdsBefore);
    } finally {
      await server.close();
    }
  }, 90_000);
});

describe('ZdsClient against a hostile agent', () => {
  it('nacks and reconnects on every bad record, leaks no fd, and works on the next connection', async () => {
    const sock = join(dir, 'hostile-agent.sock');
    const fdsBefore = openFdCount();
    const py = new JsonChild(PYTHON, [peer('bad_agent.py'), sock, nsPath]);
    await py.waitFor((e) => 'listening' in e);
    const errs: (ZdsError | undefined)[] = [];
    const adds: ZdsAddEvent[] = [];
    const calls: string[] = [];
    const client = new ZdsClient({ path: sock, backoff: { initialMs: 5, maxMs: 50 } });
    client.start({
      onAdd: async (ev) => {
        adds.push(ev);
      },
      onKeep: async (uid) => void calls.push(`keep:${uid}`),
      onDel: async (uid) => void calls.push(`del:${uid}`),
      onSnapshotSent: async () => void calls.push('snapshotSent'),
      onDisconnected: (err) => errs.push(err as ZdsError | undefined),
    });
    try {
      const results = await py.waitFor((e) => 'scenario' in e, 15, 60_000);
      await until(() => py.exited, 'the peer to exit');
      expect(py.proc.exitCode, py.stderr).toBe(0);
      await until(() => errs.length === 15, 'fifteen disconnects');

      for (const r of results) expect(r.hello, `${String(r.scenario)}: hello V1 first`).toBe('0801');
      for (const r of results.slice(0, 14)) {
        expect(r.eof, `${String(r.scenario)}: client hung up`).toBe(true);
        const nacks = r.nacks as (string | null)[];
        if (r.scenario === 'kernel-truncated') {
          expect(nacks).toEqual([]); // the record never arrived whole: nothing to answer
        } else {
          expect(nacks, String(r.scenario)).toHaveLength(1);
          expect(nacks[0], String(r.scenario)).toMatch(/^protocol error: /);
        }
      }
      expect(results[14]).toMatchObject({ scenario: 'good', ack: '' });
      expect(violations(errs)).toEqual([
        'malformed', // garbage
        'malformed', // truncated Add (its fd closed)
        'record-size', // over 1024 bytes
        'record-size', // cut by the kernel
        'record-size', // empty record
        'unknown-payload', // oneof tag 7
        'fd', // Add with two fds
        'fd', // Add without fd
        'fd', // Del with an fd
        'fd', // Keep with an fd
        'missing-field', // Add without workload_info
        'fd', // Add whose fd is a regular file
        'sequence', // Keep after SnapshotSent
        'sequence', // second SnapshotSent
        'ERR_ZDS_DISCONNECTED', // the good agent hanging up at the end
      ]);
      expect(calls).toEqual(['snapshotSent', 'snapshotSent']);
      expect(adds).toHaveLength(1);
      expect(adds[0]!.netns.sameAs(pod)).toBe(true);
    } finally {
      await client.close();
      for (const a of adds) a.netns.close();
      await py.kill();
    }
    await new Promise((r) => setTimeout(r, 50));
    expect(openFdCount()).toBe(fdsBefore);
  }, 90_000);
});
