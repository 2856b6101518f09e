import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Topology, tcpEcho, type TopologyPod } from '../src/index.js';
import { requirePrerequisites, uniqueName } from './helpers.js';

describe('dual-stack topology', () => {
  let topo: Topology;
  let client: TopologyPod;
  let server: TopologyPod;

  beforeAll(async () => {
    await requirePrerequisites();
    topo = await Topology.create({ name: uniqueName('6'), ipv6: true });
    const node1 = await topo.addNode({ name: 'node-1' });
    const node2 = await topo.addNode({ name: 'node-2' });
    [client, server] = await Promise.all([node1.addPod({ name: 'client', namespace: 'demo' }), node2.addPod({ name: 'server', namespace: 'demo' })]);
  });

  afterAll(async () => {
    await topo?.destroy();
  });

  it('gives pods an IPv4 and an IPv6 address from their node ranges', () => {
    expect(topo.node('node-2').ip6).toBe('fd00:172:18::12');
    expect(client.ip).toMatch(/^10\.244\.1\.\d+$/);
    expect(client.ip6).toMatch(/^fd00:10:244:1::[0-9a-f]+$/);
    expect(server.ip6).toMatch(/^fd00:10:244:2::[0-9a-f]+$/);
  });

  it('carries TCP across nodes over IPv6 and IPv4, without NAT', async () => {
    const echo = await server.spawn({ name: 'echo', ...tcpEcho({ port: 9000, host: '::' }) });
    await echo.waitForOutput('listening on');
    const v6 = await client.probeTcp({ host: server.ip6 as string, port: 9000, payload: 'six' });
    expect(v6).toMatchObject({ ok: true, received: 'six', remote: `${server.ip6}:9000` });
    expect(v6.local?.startsWith(`${client.ip6}:`)).toBe(true);
    const v4 = await client.probeTcp({ host: server.ip, port: 9000, payload: 'four' });
    expect(v4).toMatchObject({ ok: true, received: 'four' });
    await echo.waitForOutput(`connection from ${v6.local}`);
  });
});
