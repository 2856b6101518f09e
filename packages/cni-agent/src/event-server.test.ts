import { request } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CniEventServer, type CmdAddEvent } from './event-server.js';

function post(socketPath: string, path: string, body: string, method = 'POST'): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function parse(body: unknown): CmdAddEvent {
  const b = body as Partial<CmdAddEvent>;
  for (const k of ['Netns', 'PodName', 'PodNamespace'] as const) {
    if (typeof b[k] !== 'string' || b[k] === '') throw new Error(`${k} is required`);
  }
  return { Netns: b.Netns!, PodName: b.PodName!, PodNamespace: b.PodNamespace!, IPs: Array.isArray(b.IPs) ? b.IPs : [] };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

describe('CniEventServer', () => {
  it('answers 200 only after the handler resolved (the body says captured or not enrolled), 400 for a bad body, 500 when capture fails', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'weir-agent-ev-'));
    const socketPath = join(dir, 'run', 'pluginevent.sock');
    const calls: string[] = [];
    let finish: (() => void) | undefined;
    const server = new CniEventServer({
      socketPath,
      parse,
      onCmdAdd: async (ev) => {
        calls.push(ev.PodName);
        if (ev.PodName === 'fails') throw new Error('ztunnel nacked: bind failed');
        if (ev.PodName === 'slow') await new Promise<void>((r) => (finish = r));
        return ev.PodName === 'plain' ? 'not-enrolled' : 'captured';
      },
    });
    await server.start();
    cleanups.push(async () => {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    });

    const body = (name: string) => JSON.stringify({ Netns: '/var/run/netns/x', PodName: name, PodNamespace: 'apps', IPs: [] });
    expect(await post(socketPath, '/cmdadd', body('web-0'))).toEqual({ status: 200, text: 'pod captured\n' });
    expect(await post(socketPath, '/cmdadd', body('plain'))).toEqual({ status: 200, text: 'pod not enrolled\n' });

    let answered = false;
    const slow = post(socketPath, '/cmdadd', body('slow')).then((r) => {
      answered = true;
      return r;
    });
    while (!finish) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    expect(answered).toBe(false);
    finish();
    expect((await slow).status).toBe(200);

    const failed = await post(socketPath, '/cmdadd', body('fails'));
    expect(failed.status).toBe(500);
    expect(failed.text).toContain('ztunnel nacked: bind failed');

    const missing = await post(socketPath, '/cmdadd', JSON.stringify({ PodName: 'x', PodNamespace: 'apps' }));
    expect(missing.status).toBe(400);
    expect(missing.text).toContain('Netns is required');
    expect((await post(socketPath, '/cmdadd', '{not json')).status).toBe(400);
    expect((await post(socketPath, '/cmdadd', 'x'.repeat(70 * 1024)).catch(() => ({ status: 400, text: '' }))).status).toBe(400);
    expect((await post(socketPath, '/cmddel', body('a'))).status).toBe(404);
    expect((await post(socketPath, '/cmdadd', '', 'GET')).status).toBe(405);
    expect(calls).toEqual(['web-0', 'plain', 'slow', 'fails']);
  });

  it('replaces a stale socket file left by a killed agent', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'weir-agent-ev-'));
    const socketPath = join(dir, 'pluginevent.sock');
    const first = new CniEventServer({ socketPath, parse, onCmdAdd: async () => 'captured' as const });
    await first.start();
    // Simulate SIGKILL: the listener is gone but the file stays.
    const second = new CniEventServer({ socketPath, parse, onCmdAdd: async () => 'captured' as const });
    await second.start();
    cleanups.push(async () => {
      await first.close().catch(() => undefined);
      await second.close();
      await rm(dir, { recursive: true, force: true });
    });
    const body = JSON.stringify({ Netns: '/n', PodName: 'p', PodNamespace: 'ns', IPs: [] });
    expect((await post(socketPath, '/cmdadd', body)).status).toBe(200);
  });
});
