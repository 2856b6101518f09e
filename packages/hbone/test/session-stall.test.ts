import { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BufferBudget, HboneClient, createHboneServer, type HboneServer } from '../src/index.js';
import { SERVER_ID, type Pki, type TcpServer, dial, echoServer, exchange, makePki, random, sha256, tlsOf } from './helpers.js';

// Window is given back only for what a tunnel's reader took, so tunnels whose app stopped reading keep
// the connection window they were sent: enough of them hold all of it, and the session's other tunnels
// could send nothing more. The default budget resets them before that.

const MiB = 1024 * 1024;
let pki: Pki;
let echo: TcpServer;
let server: HboneServer;
let port: number;
/** The server's budget, with BufferBudget's defaults: its resets are what keeps the session flowing. */
const budget = new BufferBudget();
const STALLED_PORT = 9;

/** An upstream that takes no bytes: its writes never complete. */
function stalledApp(): Duplex {
  return new Duplex({
    read() {},
    write(_chunk, _enc, _cb) {},
  });
}

beforeAll(async () => {
  pki = await makePki();
  echo = await echoServer();
  // Defaults only (windows, budget): what a server someone embeds without tuning does.
  server = createHboneServer({ tls: tlsOf(pki.server), bufferBudget: budget, connect: (t) => (t.port === STALLED_PORT ? Promise.resolve(stalledApp()) : dial(t.port, t.host)) });
  port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
});

afterAll(async () => {
  await server?.close({ deadlineMs: 200 });
  await echo?.close();
});

describe('one session, tunnels whose app stopped reading', () => {
  it('16 stopped tunnels with 2 MiB sent each (more than the 16 MiB connection window) do not stall a flowing tunnel on the same session', async () => {
    // The client's own budget would reset its stopped tunnels for their unsent bytes: out of the way here.
    const client = new HboneClient({ tls: tlsOf(pki.client), bufferBudget: { maxSessionBytes: 1024 * MiB, maxBytes: 1024 * MiB } });
    try {
      const opts = (p: number): Parameters<HboneClient['connect']>[0] => ({ peer: { host: '127.0.0.1', port }, target: { host: '127.0.0.1', port: p }, expectedIdentities: [SERVER_ID] });
      const stopped = await Promise.all(Array.from({ length: 16 }, () => client.connect(opts(STALLED_PORT))));
      for (const t of stopped) {
        t.on('error', () => {});
        t.write(random(2 * MiB));
      }
      // Let the stopped tunnels take what the windows give them, then past a budget check.
      await new Promise((r) => setTimeout(r, 500));
      const t = await client.connect(opts(echo.port));
      expect(client.stats().sessions).toBe(1);
      const data = random(4 * MiB);
      const back = await Promise.race([exchange(t, data), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the flowing tunnel stalled for 10 s')), 10_000))]);
      expect(sha256(back)).toBe(sha256(data));
      expect(budget.stats().resets).toBeGreaterThan(0);
      for (const s of stopped) s.destroy();
    } finally {
      await client.close({ deadlineMs: 200 });
    }
  }, 30_000);
});
