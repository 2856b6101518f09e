// Random record streams through the real state machines (over the in-memory socket pair): whatever
// arrives, the session ends, if at all, with a ZdsError, and every received fd is closed or handed over.
import { closeSync, openSync } from 'node:fs';
import { currentNetns, type Netns } from '@weir/netns';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientSession, type ZdsAddEvent } from './client-session.js';
import { encodeAck, encodeHello, encodeRequest, type ZdsRequest } from './codec.js';
import { ZdsError } from './errors.js';
import { silentLogger } from './logger.js';
import { ZdsServer } from './server.js';
import { memoryPair } from './test-support/memory-socket.js';
import { openFdCount, until } from './test-support/peers.js';

let netns: Netns;
beforeAll(() => {
  netns = currentNetns();
});
afterAll(() => netns.close());

const uid = fc.constantFrom('a', 'b', '');
const request: fc.Arbitrary<ZdsRequest> = fc.oneof(
  fc.record({ kind: fc.constant('add' as const), uid, workloadInfo: fc.constant({ name: 'n', namespace: 'ns', serviceAccount: 'sa' }) }),
  fc.record({ kind: fc.constant('keep' as const), uid }),
  fc.record({ kind: fc.constant('del' as const), uid }),
  fc.constant({ kind: 'snapshotSent' as const }),
);
const bytes = (valid: fc.Arbitrary<Uint8Array>) =>
  fc.oneof(valid, fc.uint8Array({ maxLength: 40 }), valid.map((b) => b.subarray(0, Math.max(0, b.length - 1))));
/** Which fds ride along: a netns, a plain file, or several. */
const fdKinds = fc.array(fc.constantFrom('netns', 'file'), { maxLength: 2 });

function makeFds(kinds: string[]): number[] {
  return kinds.map((k) => (k === 'netns' ? netns.fd : openSync('/dev/null', 'r')));
}
function releaseFds(kinds: string[], fds: number[]): void {
  fds.forEach((fd, i) => kinds[i] === 'file' && closeSync(fd));
}

describe('state machines under random records', () => {
  it('ClientSession: 300 random streams', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(bytes(request.map((r) => encodeRequest(r))), fdKinds), { maxLength: 6 }), async (records) => {
        const before = openFdCount();
        const [agent, zt] = memoryPair();
        let answers = 0;
        agent.on('message', () => answers++);
        const adds: ZdsAddEvent[] = [];
        const session = new ClientSession(
          zt,
          {
            onAdd: async (ev) => void adds.push(ev),
            onKeep: async () => {},
            onDel: async () => {},
            onSnapshotSent: async () => {},
          },
          silentLogger,
        );
        let ended = 'open' as ZdsError | undefined | 'open';
        void session.done.then((e) => (ended = e));
        await session.hello();
        for (const [data, kinds] of records) {
          const fds = makeFds(kinds);
          await agent.send(data, fds).catch(() => {});
          releaseFds(kinds, fds);
        }
        // every record is answered until the first violation, which is answered and ends the session
        await until(() => ended !== 'open' || answers === records.length + 1, 'the session to settle');
        session.close();
        await session.done;
        for (const a of adds) a.netns.close();
        // Fds in flight are closed on a later turn of the loop: wait for them, not a fixed 5 ms.
        await until(() => openFdCount() === before, 'the fds to be closed', 2000).catch(() => {});
        expect(ended === 'open' || ended === undefined || ended instanceof ZdsError).toBe(true);
        expect(openFdCount()).toBe(before);
      }),
      { numRuns: 300 },
    );
  }, 120_000);

  it('ZdsServer: 300 random ztunnel streams', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.array(fc.tuple(bytes(fc.oneof(fc.constant(encodeAck()), fc.constant(encodeAck('no')), fc.constant(encodeHello()))), fdKinds), { maxLength: 5 }),
        async (hello, records) => {
          const before = openFdCount();
          const server = new ZdsServer({ path: '/nonexistent', ackTimeoutMs: 200 });
          const errors: unknown[] = [];
          server.on('disconnect', (_c, err) => errors.push(err));
          server.keepWorkload('k', { name: 'n', namespace: 'ns', serviceAccount: 'sa' });
          const [agentEnd, zt] = memoryPair();
          server.attach(agentEnd);
          const received: number[][] = [];
          zt.on('message', (_d: Buffer, fds: number[]) => received.push(fds));
          if (hello) await zt.send(encodeHello());
          for (const [data, kinds] of records) {
            const fds = makeFds(kinds);
            await zt.send(data, fds).catch(() => {});
            releaseFds(kinds, fds);
          }
          await new Promise((r) => setTimeout(r, 5));
          await server.close();
          await until(() => errors.length === 1, 'the disconnect');
          for (const fds of received) for (const fd of fds) closeSync(fd);
          await until(() => openFdCount() === before, 'the fds to be closed', 2000).catch(() => {});
          expect(errors[0] === undefined || errors[0] instanceof ZdsError).toBe(true);
          expect(openFdCount()).toBe(before);
        },
      ),
      { numRuns: 300 },
    );
  }, 120_000);
});
