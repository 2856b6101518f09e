import * as net from 'node:net';
import { describe, expect, it } from 'vitest';
import { copyBidirectional } from './copy.js';

/** A TCP pair over loopback: [client side, server side]. */
async function pair(): Promise<[net.Socket, net.Socket, net.Server]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  return [client, await accepted, server];
}

describe('copyBidirectional', () => {
  it('copies both ways, propagates half-close, and counts bytes', async () => {
    const [app, down, s1] = await pair();
    const [up, backend, s2] = await pair();
    backend.on('data', (d: Buffer) => backend.write(d.toString().toUpperCase()));
    backend.on('end', () => backend.end('!'));
    const done = copyBidirectional(down, up);
    let got = '';
    app.on('data', (d: Buffer) => (got += String(d)));
    const ended = new Promise<void>((r) => app.on('end', () => r()));
    app.end('hello');
    await ended;
    app.destroy();
    const r = await done;
    expect(got).toBe('HELLO!');
    expect(r).toMatchObject({ received: 5, sent: 6 });
    s1.close();
    s2.close();
  });

  it('cuts the other side when one side is destroyed', async () => {
    const [app, down, s1] = await pair();
    const [up, backend, s2] = await pair();
    const done = copyBidirectional(down, up);
    // The backend sees its peer go away (FIN or RST; it is half-open capable, so it will not close by itself).
    const backendClosed = new Promise<void>((r) => {
      backend.on('end', () => r());
      backend.on('close', () => r());
    });
    backend.on('error', () => {});
    app.resetAndDestroy();
    await done;
    await backendClosed;
    backend.destroy();
    s1.close();
    s2.close();
  });
});
