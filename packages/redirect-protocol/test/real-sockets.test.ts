// The agent (ZdsServer, this process) and ztunnel (ZdsClient, a child process) over a real
// SOCK_SEQPACKET socket, handing over real network namespaces.
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNetns, type Netns } from '@weir/netns';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZdsNackError, ZdsNotConnectedError, ZdsServer, type ZdsError } from '../src/index.js';
import { openFdCount, until } from '../src/test-support/peers.js';
import { JsonChild, createNetns, deleteNetns, fixture, requireRoot } from './helpers.js';

const N = 5;
const tag = `wz${process.pid}${Math.random().toString(36).slice(2, 6)}`;
const names = Array.from({ length: N }, (_, i) => `${tag}-${i}`);
const info = (i: number) => ({ name: `pod-${i}`, namespace: 'default', serviceAccount: `sa-${i}` });

let dir: string;
let sockPath: string;
let server: ZdsServer;
const pods: Netns[] = [];
const children: JsonChild[] = [];
const acked: number[] = [];
const disconnects: (ZdsError | undefined)[] = [];
let fdsBefore: number;

function ztunnel(...nack: string[]): JsonChild {
  const child = new JsonChild(process.execPath, [fixture('ztunnel-child.mjs'), sockPath, ...nack]);
  children.push(child);
  return child;
}

const adds = (c: JsonChild) => c.events.filter((e) => e.ev === 'add' || e.ev === 'keep').map((e) => `${String(e.ev)}:${String(e.uid)}`);

beforeAll(async () => {
  requireRoot('real-socket ZDS tests');
  if (!existsSync(fixture('../../dist/index.js'))) throw new Error('packages/redirect-protocol/dist is missing: run npm run build -w @weir/redirect-protocol');
  fdsBefore = openFdCount();
  dir = mkdtempSync(join(tmpdir(), 'zds-real-'));
  sockPath = join(dir, 'run/ztunnel/ztunnel.sock');
  for (const name of names) pods.push(openNetns(createNetns(name)));
  server = new ZdsServer({ path: sockPath, ackTimeoutMs: 5000, keepaliveIntervalMs: 200 });
  server.on('snapshotAcked', (c) => acked.push(c.id));
  server.on('disconnect', (_c, err) => disconnects.push(err));
  await server.start();
});

afterAll(async () => {
  await Promise.all(children.map((c) => c.kill()));
  await server?.close();
  for (const p of pods) p.close();
  for (const name of names) deleteNetns(name);
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  await new Promise((r) => setTimeout(r, 50));
  expect(openFdCount()).toBe(fdsBefore);
});

describe('ZDS over a real socket between two processes', () => {
  it('creates the socket directory and the socket with mode 0600', () => {
    expect(statSync(sockPath).isSocket()).toBe(true);
    expect(statSync(sockPath).mode & 0o777).toBe(0o600);
  });

  it('delivers a snapshot of N pods in order, each fd in the right netns, and acks flow back', async () => {
    for (let i = 0; i < N; i++) {
      await expect(server.addWorkload(`uid-${i}`, info(i), pods[i]!)).rejects.toBeInstanceOf(ZdsNotConnectedError);
    }
    server.keepWorkload('uid-kept', info(99));
    const zt = ztunnel('uid-nack');
    await zt.waitFor((e) => e.ev === 'snapshotSent');
    expect(adds(zt)).toEqual([...names.map((_, i) => `add:uid-${i}`), 'keep:uid-kept']);
    const got = zt.events.filter((e) => e.ev === 'add');
    for (let i = 0; i < N; i++) {
      expect(got[i]!.id).toEqual(pods[i]!.id);
      expect(got[i]!.workloadInfo).toEqual(info(i));
    }
    // distinct namespaces: the test would pass trivially if they were all the same
    expect(new Set(got.map((e) => JSON.stringify(e.id))).size).toBe(N);
    await until(() => acked.length === 1, 'snapshotAcked');
    expect(server.connected).toBe(true);

    // after the snapshot: an Add resolves on ztunnel's ack, a nack carries ztunnel's reason
    await server.addWorkload('uid-late', info(7), pods[0]!);
    expect((await zt.waitFor((e) => e.uid === 'uid-late'))[0]!.id).toEqual(pods[0]!.id);
    const err = await server.addWorkload('uid-nack', info(8), pods[1]!).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ZdsNackError);
    expect((err as ZdsNackError).reason).toBe('cannot start proxy for uid-nack');
  });

  it('replays the full snapshot after the ztunnel process is killed', async () => {
    const first = children[0]!;
    const before = disconnects.length;
    await first.kill('SIGKILL');
    await until(() => disconnects.length === before + 1 && !server.connected, 'the server to see the dead ztunnel');
    const zt = ztunnel();
    await zt.waitFor((e) => e.ev === 'snapshotSent');
    expect(adds(zt)).toEqual([...names.map((_, i) => `add:uid-${i}`), 'keep:uid-kept', 'add:uid-late', 'add:uid-nack']);
    expect(zt.events.find((e) => e.uid === 'uid-nack')!.id).toEqual(pods[1]!.id);
    await until(() => acked.length === 2, 'second snapshotAcked');
  });

  it('sends Adds to the newest connection only and Dels to every connection', async () => {
    const older = children[1]!;
    const newer = ztunnel();
    await newer.waitFor((e) => e.ev === 'snapshotSent');
    await until(() => acked.length === 3, 'third snapshotAcked');
    await server.addWorkload('uid-newest', info(3), pods[3]!);
    await newer.waitFor((e) => e.uid === 'uid-newest');
    await server.removeWorkload('uid-2');
    await older.waitFor((e) => e.ev === 'del' && e.uid === 'uid-2');
    await newer.waitFor((e) => e.ev === 'del' && e.uid === 'uid-2');
    expect(older.events.some((e) => e.uid === 'uid-newest')).toBe(false);

    // and the removed pod is gone from the next snapshot
    await newer.kill('SIGKILL');
    const last = ztunnel();
    await last.waitFor((e) => e.ev === 'snapshotSent');
    expect(adds(last)).not.toContain('add:uid-2');
    expect(adds(last)).toContain('add:uid-newest');
  });
});
