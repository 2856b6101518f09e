// A closed poller must not keep its owner alive: its callback closes over the owner, so a strong
// native reference to the callback kept past close() pins both for good (one leak per connect).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, expect, it } from 'vitest';
import { listenSeqpacket } from '../src/index.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const dir = mkdtempSync(join(tmpdir(), 'weir-pollergc-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('lets the garbage collector free an object whose poller was closed', async () => {
  const collected = new Set<number>();
  const registry = new FinalizationRegistry<number>((i) => collected.add(i));
  const count = 50;
  // Each server owns a poller whose callback refers back to the server; no frame of ours keeps one.
  const openAndClose = (i: number): Promise<void> => {
    const server = listenSeqpacket(join(dir, `s${i}.sock`));
    registry.register(server, i);
    return server.close();
  };
  for (let i = 0; i < count; i++) await openAndClose(i);
  for (let round = 0; round < 20 && collected.size < count; round++) {
    await new Promise((r) => setTimeout(r, 20));
    gc();
  }
  expect(collected.size, `closed servers freed by the GC (of ${count})`).toBe(count);
});
