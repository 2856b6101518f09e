import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Topology, tcpEcho } from '../src/index.js';
import { netnsOwnedBy, requirePrerequisites, uniqueName } from './helpers.js';

describe('parallel topologies', () => {
  const names = [uniqueName('p'), uniqueName('p')];
  const topologies: Topology[] = [];

  beforeAll(async () => {
    await requirePrerequisites();
  });

  afterAll(async () => {
    await Promise.all(topologies.map((t) => t.destroy()));
  });

  it('build the same node names, CIDRs and pod names at once without colliding', async () => {
    const built = await Promise.all(
      names.map(async (name) => {
        const topo = await Topology.create({ name });
        topologies.push(topo);
        const [n1, n2] = await Promise.all([topo.addNode({ name: 'node-1' }), topo.addNode({ name: 'node-2', podCidr: '10.244.2.0/24' })]);
        const [client, server] = await Promise.all([n1.addPod({ name: 'client', namespace: 'demo' }), n2.addPod({ name: 'server', namespace: 'demo' })]);
        return { topo, client, server };
      }),
    );
    // Same addresses in both: each lives only in its own namespaces.
    expect(built[0]?.server.ip).toBe(built[1]?.server.ip);
    expect(built[0]?.server.netnsPath).not.toBe(built[1]?.server.netnsPath);

    // A server only in the first topology: the second topology's identical address must not reach it.
    const [first, second] = built as [(typeof built)[0] & object, (typeof built)[1] & object];
    const server = await first.server.spawn({ name: 'echo', ...tcpEcho({ port: 9000 }) });
    await server.waitForOutput('listening on');
    expect(await first.client.probeTcp({ host: first.server.ip, port: 9000, payload: 'one' })).toMatchObject({ ok: true, received: 'one' });
    expect(await second.client.probeTcp({ host: second.server.ip, port: 9000, timeoutMs: 3000 })).toMatchObject({ ok: false, code: 'ECONNREFUSED' });

    await second.topo.destroy();
    expect(await netnsOwnedBy(names[1] as string)).toEqual([]);
    expect(await netnsOwnedBy(names[0] as string)).toHaveLength(5);
    expect(await first.client.probeTcp({ host: first.server.ip, port: 9000, payload: 'still' })).toMatchObject({ ok: true, received: 'still' });
  });
});

describe('destroy during construction', () => {
  it('waits for operations in flight, then removes what they built', async () => {
    await requirePrerequisites();
    const name = uniqueName('d');
    const topo = await Topology.create({ name });
    const building = (async () => {
      const node = await topo.addNode({ name: 'node-1' });
      await node.addPod({ name: 'p', namespace: 'demo' });
    })();
    // Destroy as soon as the node exists, while its pod is being wired.
    while (topo.nodes.length === 0) await new Promise((r) => setTimeout(r, 5));
    const destroyed = topo.destroy();
    await building.catch(() => {});
    await destroyed;
    expect(await netnsOwnedBy(name)).toEqual([]);
    await expect(topo.addNode({ name: 'node-2' })).rejects.toMatchObject({ code: 'TOPOLOGY_DESTROYED' });
  });
});

describe('two creators of one name', () => {
  it('exactly one wins; the loser touches nothing of the winner', async () => {
    await requirePrerequisites();
    const name = uniqueName('n');
    const results = await Promise.allSettled([Topology.create({ name }), Topology.create({ name })]);
    const won = results.filter((r): r is PromiseFulfilledResult<Topology> => r.status === 'fulfilled').map((r) => r.value);
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as { code: string });
    expect(won).toHaveLength(1);
    expect(lost).toMatchObject([{ code: 'TOPOLOGY_EXISTS' }]);
    const winner = won[0] as Topology;
    try {
      await winner.addNode({ name: 'node-1' });
      expect(await netnsOwnedBy(name)).toEqual([`${name}-node-1`, `${name}-underlay`]);
    } finally {
      await winner.destroy();
    }
  });
});
