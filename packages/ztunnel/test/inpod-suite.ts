import { readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectTcp, openNetns, socketLocalAddress, tcpKeepalive, type Netns } from '@weir/netns';
import { LocalCa } from '@weir/pki';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type TopologyNode, type TopologyPod } from '@weir/topology';
import type { InpodMode } from '@weir/iptables-builder';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ztunnel, createLogger } from '../src/index.js';
import { EchoApp, capturePod, echoTransfer, execFileP, httpGet, localConfigYaml, podListeners, requireRoot, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

/**
 * In-process ztunnels (one per simulated node) against real pod netns with the in-pod rules of `mode`:
 * listeners, HBONE same-node and cross-node, plaintext inbound, policy, ZDS lifecycle.
 */
export function inpodSuite(mode: InpodMode): void {

  let topo: Topology;
  let dir: string;
  const lines: string[] = [];
  const nodes: { node: TopologyNode; zds: ZdsServer; zt: Ztunnel }[] = [];
  let a: TopologyPod, b: TopologyPod, c: TopologyPod, outside: TopologyPod;
  let appB: EchoApp, appC: EchoApp;
  let nsA: Netns, nsOutside: Netns;
  let configPath: string;

  const workloads = () => [
    { pod: a, serviceAccount: 'sa-a', node: 'n1' },
    { pod: b, serviceAccount: 'sa-b', node: 'n1', services: '{"ns2/web.ns2.svc.cluster.local": {80: 8080}}' },
    { pod: c, serviceAccount: 'sa-c', node: 'n2' },
  ];
  const SERVICES = '- {name: web, namespace: ns2, hostname: web.ns2.svc.cluster.local, vips: ["/10.96.0.10"], ports: {80: 8080}}';
  const config = (policies = ''): string => localConfigYaml(workloads(), policies, SERVICES);

  beforeAll(async () => {
    requireRoot();
    dir = await mkdtemp(join(tmpdir(), 'wzt-inpod-'));
    topo = await Topology.create({ name: uniqueName('i') });
    const n1 = await topo.addNode({ name: 'n1' });
    const n2 = await topo.addNode({ name: 'n2' });
    a = await n1.addPod({ name: 'a', namespace: 'ns1' });
    b = await n1.addPod({ name: 'b', namespace: 'ns2' });
    outside = await n1.addPod({ name: 'outside', namespace: 'ns3' });
    c = await n2.addPod({ name: 'c', namespace: 'ns2' });
    for (const p of [a, b, c]) await capturePod(p, { mode });
    configPath = join(dir, 'local.yaml');
    await writeFile(configPath, config());
    const ca = await LocalCa.create({ trustDomain: 'cluster.local' });
    for (const node of [n1, n2]) {
      const zds = new ZdsServer({ path: join(dir, `${node.name}.sock`) });
      await zds.start();
      const { logger } = createLogger({ level: 'debug', write: (l) => lines.push(`[${node.name}] ${l}`) });
      const zt = new Ztunnel({
        inpodUds: zds.path,
        localXdsPath: configPath,
        ca,
        nodeName: node.name,
        adminAddress: '127.0.0.1:0',
        metricsAddress: '127.0.0.1:0',
        readinessAddress: '127.0.0.1:0',
        logger: logger.child({ node: node.name }),
        proxyRetryMs: 300,
        socks5: node.name === 'n1',
        // n2 rotates its workload certificates about every second (half-life of a very short TTL).
        ...(node.name === 'n2' ? { certTtlSeconds: 3 } : {}),
      });
      nodes.push({ node, zds, zt });
    }
    const [one, two] = nodes as [(typeof nodes)[0], (typeof nodes)[0]];
    // Pods known before ztunnel connects ride the first snapshot.
    await zdsAddPod(one.zds, a, 'sa-a').catch(() => {});
    await zdsAddPod(one.zds, b, 'sa-b').catch(() => {});
    await zdsAddPod(two.zds, c, 'sa-c').catch(() => {});
    for (const n of nodes) {
      const acked = new Promise<void>((r) => n.zds.once('snapshotAcked', () => r()));
      await n.zt.start();
      await acked;
    }
    appB = await EchoApp.start(b, 8080);
    appC = await EchoApp.start(c, 8080);
    nsA = openNetns(a.netnsPath);
    nsOutside = openNetns(outside.netnsPath);
  }, 120_000);

  afterAll(async () => {
    await appB?.close();
    await appC?.close();
    nsA?.close();
    nsOutside?.close();
    for (const n of nodes) {
      await n.zt.stop({ deadlineMs: 0 });
      await n.zds.close();
    }
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  const readiness = (zt: Ztunnel) => httpGet(`http://127.0.0.1:${zt.addresses().readiness!.port}/healthz/ready`);
  const metrics = async (zt: Ztunnel) => (await httpGet(`http://127.0.0.1:${zt.addresses().metrics!.port}/metrics`)).body;

  describe(`in-pod ztunnel (in process, ${mode} rules)`, () => {
    it('listens on 15001, 15006 and 15008 inside each pod, and is ready after the snapshot', async () => {
      for (const pod of [a, b]) {
        const l = await podListeners(pod);
        for (const port of [15001, 15006, 15008]) expect(l.get(port), `${pod.name}:${port}`).toContain(process.pid);
      }
      expect(await readiness(nodes[0]!.zt)).toEqual({ status: 200, body: 'ready\n' });
      expect(lines.join('')).toContain(`pod WorkloadUid("${a.uid}") received netns, starting proxy`);
      expect(lines.join('')).toContain('pod received snapshot sent');
    });

    it('carries same-node traffic over HBONE with the client address preserved', async () => {
      const r = await echoTransfer(nsA, b.ip, 8080, 4 << 20);
      expect(r.bytes).toBe(4 << 20);
      expect(r.received).toBe(r.sent);
      expect(appB.clients.at(-1)).toBe(a.ip);
      const log = lines.join('');
      expect(log).toMatch(/connection complete.*src\.identity=spiffe:\/\/cluster\.local\/ns\/ns1\/sa\/sa-a.*direction=inbound/);
      expect(log).toMatch(/inbound HBONE stream .*baggage="k8s\.cluster\.name=Kubernetes,k8s\.namespace\.name=ns1,k8s\.pod\.name=a,service\.name=a,service\.version=latest" traceparent=00-[0-9a-f]{32}-[0-9a-f]{16}-00/);
      const m = await metrics(nodes[0]!.zt);
      expect(m).toMatch(/istio_tcp_connections_opened_total\{reporter="destination",source_workload="a".*destination_workload="b".*connection_security_policy="mutual_tls"/);
    });

    it('carries cross-node traffic over HBONE', async () => {
      const r = await echoTransfer(nsA, c.ip, 8080, 2 << 20);
      expect(r.received).toBe(r.sent);
      expect(appC.clients.at(-1)).toBe(a.ip);
      expect(lines.join('')).toMatch(/\[n2\].*connection complete.*src\.identity=spiffe:\/\/cluster\.local\/ns\/ns1\/sa\/sa-a/);
    });

    it('sets Istio keepalive (idle 180 s, interval 180 s, 9 probes) on accepted and dialled pod sockets', async () => {
      const client = await connectTcp({ netns: nsA, family: 4, host: b.ip, port: 8080 });
      client.on('error', () => {});
      try {
        await new Promise<void>((r) => {
          client.once('data', () => r());
          client.write('ka');
        });
        const me = socketLocalAddress(client);
        // Established sockets of a pod (`ss -Htnoe`): [local, peer, rest of the line with timer and ino].
        const established = async (pod: TopologyPod): Promise<[string, string, string][]> => {
          const { stdout } = await execFileP('ip', ['netns', 'exec', pod.netns, 'ss', '-Htnoe', 'state', 'established']);
          return stdout.split('\n').flatMap((l) => {
            const m = /^\s*\d+\s+\d+\s+(\S+)\s+(\S+)\s+(.*)$/.exec(l);
            // Dual-stack listeners show IPv4 peers as [::ffff:a.b.c.d]:port.
            const v4 = (x: string): string => x.replace(/^\[::ffff:([\d.]+)\]/, '$1');
            return m ? [[v4(m[1]!), v4(m[2]!), m[3]!] as [string, string, string]] : [];
          });
        };
        const fds = new Map(
          readdirSync('/proc/self/fd').flatMap((fd) => {
            try {
              return [[readlinkSync(`/proc/self/fd/${fd}`), Number(fd)] as const];
            } catch {
              return [];
            }
          }),
        );
        // A segment just sent and not yet acked (the peer delays its ACK) shows the retransmit timer,
        // `timer:(on,…)`, in place of the keepalive one: look again once it is acked.
        let inA = await established(a);
        let inB = await established(b);
        for (let i = 0; i < 20 && [...inA, ...inB].some(([, , rest]) => rest.includes('timer:(on,')); i++) {
          await new Promise((r) => setTimeout(r, 100));
          inA = await established(a);
          inB = await established(b);
        }
        const picked = {
          'accepted on 15001 (pod a)': inA.filter(([, peer]) => peer === `${me.address}:${me.port}`),
          'HBONE dialled to b:15008 (pod a)': inA.filter(([, peer]) => peer === `${b.ip}:15008`),
          'accepted on 15008 (pod b)': inB.filter(([local]) => local === `${b.ip}:15008`),
          'dialled to the app b:8080 (pod b)': inB.filter(([, peer]) => peer === `${b.ip}:8080`),
        };
        for (const [what, lines] of Object.entries(picked)) {
          expect(lines.length, `${what}: ${JSON.stringify({ inA, inB })}`).toBeGreaterThan(0);
          for (const [local, peer, rest] of lines) {
            const ino = /\bino:(\d+)/.exec(rest)?.[1];
            const fd = fds.get(`socket:[${ino}]`);
            expect(fd, `${what} ${local} -> ${peer}: a socket of this process`).toBeDefined();
            expect(tcpKeepalive(fd!), `${what} ${local} -> ${peer}`).toEqual({ enabled: true, idleS: 180, intervalS: 180, count: 9 });
            expect(rest, `${what} ${local} -> ${peer}`).toMatch(/timer:\(keepalive,(2min5\dsec|3min),0\)/);
          }
        }
      } finally {
        client.destroy();
      }
    });

    it('rotates workload certificates without dropping connections', async () => {
      const two = nodes[1]!.zt;
      const serial = () => two.identities.certificates().find((x) => x.identity.endsWith('/sa/sa-c'))?.serial;
      const socket = await connectTcp({ netns: nsA, family: 4, host: c.ip, port: 8080 });
      socket.on('error', () => {});
      const roundTrip = (text: string): Promise<string> =>
        new Promise((resolve) => {
          socket.once('data', (d: Buffer) => resolve(String(d)));
          socket.write(text);
        });
      expect(await roundTrip('one')).toBe('one');
      const first = serial();
      await waitFor('two rotations', async () => serial() !== first && (await new Promise((r) => setTimeout(r, 1200)), serial() !== first));
      expect(await roundTrip('two')).toBe('two');
      expect(await tryConnect(nsA, c.ip, 8080)).toBe('ok');
      socket.destroy();
    });

    it('lets a non-mesh client in through 15006, subject to policy', async () => {
      expect(await tryConnect(nsOutside, b.ip, 8080)).toBe('ok');
      expect(appB.clients.at(-1)).toBe(outside.ip);
      expect(lines.join('')).toMatch(/connection complete.*src\.addr=10\.[\d.]+:\d+.*dst\.addr=[\d.]+:8080.*direction=inbound/);
      // Deny plaintext (no principal) to b.
      await writeFile(
        configPath,
        config('- {name: no-plaintext, namespace: ns2, action: Deny, rules: [[[{notPrincipals: [{presence: []}]}]]]}'),
      );
      await waitFor('policy reload', async () => nodes[0]!.zt.store.config.policies.length === 1);
      expect(await tryConnect(nsOutside, b.ip, 8080)).not.toBe('ok');
      expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
      expect(await metrics(nodes[0]!.zt)).toMatch(/istio_tcp_connections_closed_total\{[^}]*connection_security_policy="unknown",response_flags="DENY"\} 1/);
    });

    it('denies HBONE by policy: the client connection is closed and the deny is counted', async () => {
      await writeFile(configPath, config('- {name: deny-8080, namespace: ns2, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}'));
      await waitFor('policy reload', async () => nodes[0]!.zt.store.config.policies[0]?.name === 'deny-8080');
      expect(await tryConnect(nsA, b.ip, 8080)).not.toBe('ok');
      expect(await metrics(nodes[0]!.zt)).toMatch(
        /istio_tcp_connections_closed_total\{reporter="destination",source_workload="a"[^}]*response_flags="DENY"\} 1/,
      );
      await writeFile(configPath, config());
      await waitFor('policy reload', async () => nodes[0]!.zt.store.config.policies.length === 0);
      expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
    });

    it('resolves a service VIP to its endpoint and target port', async () => {
      expect(await tryConnect(nsA, '10.96.0.10', 80)).toBe('ok');
      expect(appB.clients.at(-1)).toBe(a.ip);
      expect(lines.join('')).toMatch(/connection complete.*dst\.addr=[\d.]+:8080.*dst\.service=web\.ns2\.svc\.cluster\.local.*direction=outbound/);
    });

    it('closes live inbound connections that a policy change no longer allows', async () => {
      const socket = await connectTcp({ netns: nsA, family: 4, host: b.ip, port: 8080 });
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
      socket.on('error', () => {});
      const echoed = await new Promise<string>((r) => {
        socket.once('data', (d: Buffer) => r(String(d)));
        socket.write('ping');
      });
      expect(echoed).toBe('ping');
      await writeFile(configPath, config('- {name: deny-a, namespace: ns2, action: Deny, rules: [[[{namespaces: [ns1]}]]]}'));
      await waitFor('policy reload', async () => nodes[0]!.zt.store.config.policies[0]?.name === 'deny-a');
      await closed;
      expect(lines.join('')).toContain('connection closed: no longer authorized after a policy change');
      await writeFile(configPath, config());
      await waitFor('policy reload', async () => nodes[0]!.zt.store.config.policies.length === 0);
    });

    it('takes SOCKS5 CONNECTs on 127.0.0.1:15080 into the same outbound path (HBONE to mesh names)', async () => {
      expect((await podListeners(a)).get(15080)).toContain(process.pid);
      const socket = await connectTcp({ netns: nsA, family: 4, host: '127.0.0.1', port: 15080 });
      socket.on('error', () => {});
      const chunks: Buffer[] = [];
      const need = (n: number): Promise<Buffer> =>
        new Promise((resolve) => {
          const check = (): void => {
            const all = Buffer.concat(chunks);
            if (all.length < n) return;
            socket.off('data', onData);
            chunks.length = 0;
            if (all.length > n) chunks.push(all.subarray(n));
            resolve(all.subarray(0, n));
          };
          const onData = (d: Buffer): void => {
            chunks.push(d);
            check();
          };
          socket.on('data', onData);
          check();
        });
      socket.write(Buffer.from([5, 1, 0]));
      expect([...(await need(2))]).toEqual([5, 0]);
      const ip = c.ip.split('.').map(Number);
      socket.write(Buffer.from([5, 1, 0, 1, ...ip, 8080 >> 8, 8080 & 255]));
      expect((await need(10))[1]).toBe(0);
      socket.write('via socks');
      expect(String(await need(9))).toBe('via socks');
      socket.destroy();
      expect(appC.clients.at(-1)).toBe(a.ip);
    });

    it('passes non-mesh destinations through from inside the pod', async () => {
      const app = await EchoApp.start(outside, 9090);
      try {
        expect(await tryConnect(nsA, outside.ip, 9090)).toBe('ok');
        expect(app.clients.at(-1)).toBe(a.ip);
      } finally {
        await app.close();
      }
    });

    it('refuses destinations that are its own ports', async () => {
      expect(await tryConnect(nsA, b.ip, 15008)).not.toBe('ok');
      expect(lines.join('')).toContain('recursive call to ourselves');
    });

    it('drains a pod on Del, and the pod is refused without a proxy (no bypass)', async () => {
      const one = nodes[0]!;
      await one.zds.removeWorkload(a.uid);
      expect(lines.join('')).toContain('pod delete request, draining proxy');
      await waitFor('listeners gone', async () => !(await podListeners(a)).has(15001));
      // A real process in the pod (not this test's sockets): refused, never let through around the proxy.
      const probe = await a.probeTcp({ host: b.ip, port: 8080, timeoutMs: 3000 });
      expect(probe).toMatchObject({ ok: false, code: 'ECONNREFUSED' });
      await zdsAddPod(one.zds, a, 'sa-a');
      expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
      const dump = (await httpGet(`http://127.0.0.1:${one.zt.addresses().admin!.port}/config_dump`)).body;
      const parsed = JSON.parse(dump) as { pods: { uid: string; state: string }[]; certificates: { identity: string }[]; workloads: unknown[] };
      expect(parsed.pods.find((p) => p.uid === a.uid)?.state).toBe('Up');
      expect(parsed.certificates.map((x) => x.identity)).toContain('spiffe://cluster.local/ns/ns1/sa/sa-a');
      expect(parsed.workloads).toHaveLength(3);
    });
  });
}
