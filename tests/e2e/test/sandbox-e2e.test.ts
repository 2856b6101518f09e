/**
 * Issue 9, end to end: the default two-node sandbox, driven through `weirctl sandbox` as a user would.
 * Tests run in order and share one sandbox; the last ones change it (un-label, down). All of it runs
 * twice (issue 12): ztunnels reading LOCAL_XDS_PATH, then ztunnels fed by the test control plane over
 * xDS (`up --control-plane xds`), where policy and label changes reach them only through it.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Topology, type PacketCapture } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostSnapshot, type HostSnapshot } from '../src/host.js';
import { parsePcap, parseTlsRecords, tcpStreams } from '../src/pcap.js';
import { addressVersions, expectConfigSource, xdsPolicies } from '../src/control-plane.js';
import { CONTROL_PLANE_MODES, Sandbox, eventually, type SandboxPod } from '../src/sandbox.js';
import { SEED_INPOD_RULES, savedRules } from '../src/seed.js';

describe.each(CONTROL_PLANE_MODES)('control plane %s', (mode) => {
  const sandbox = new Sandbox('e', mode);
  let before: HostSnapshot;
  let sleep: SandboxPod;
  let httpbin: SandboxPod;
  let legacy: SandboxPod;

  beforeAll(async () => {
    before = await hostSnapshot();
    // The README's main-job command (with a private name and state dir).
    await sandbox.up([], { npx: true });
    const status = await sandbox.status();
    const pod = (name: string): SandboxPod => {
      const p = status.pods.find((x) => x.name === name);
      if (!p) throw new Error(`sandbox has no pod ${name}: ${JSON.stringify(status.pods)}`);
      return p;
    };
    sleep = pod('sleep');
    httpbin = pod('httpbin');
    legacy = pod('legacy-client');
  });

  afterAll(async () => {
    await sandbox.down();
  });

  const curl = (from: string, url: string): Promise<{ code: number; out: string; err: string }> => sandbox.exec(from, ['curl', '-sS', '-m', '10', url], { timeoutMs: 30_000 });
  const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  /** tcpdump on a node's underlay interface (eth0), inside the node netns. */
  async function captureNode(node: string, name: string): Promise<PacketCapture> {
    const topology = await Topology.attach(join(sandbox.dir, sandbox.name));
    const n = topology.node(node);
    return topology.capture(n.netnsPath, { name: `${name}-${process.pid}`, iface: 'eth0', filter: 'tcp' });
  }

  async function podUid(name: string): Promise<string> {
    const pods = JSON.parse(await readFile(sandbox.podsFilePath, 'utf8')) as { pods: Array<{ name: string; uid: string }> };
    const uid = pods.pods.find((p) => p.name === name)?.uid;
    if (!uid) throw new Error(`no uid for ${name} in ${sandbox.podsFilePath}`);
    return uid;
  }

  describe('the main job: weirctl sandbox up, then the seed\'s debugging steps', () => {
    // Cross-node first: it must see the first HBONE connection's handshake (later ones reuse the pool).
    it('status shows both nodes running agent and ztunnel, and the demo pods captured', async () => {
      const status = await sandbox.status();
      for (const node of status.nodes) {
        expect(node.agentPid, `${node.name} cni-agent`).toEqual(expect.any(Number));
        expect(node.ztunnelPid, `${node.name} ztunnel`).toEqual(expect.any(Number));
      }
      expect(status.pods.map((p) => [`${p.namespace}/${p.name}`, p.node, p.enrolled, p.captured])).toEqual([
        ['demo/sleep', 'node-1', true, true],
        ['demo/httpbin', 'node-2', true, true],
        ['legacy/legacy-client', 'node-1', false, false],
      ]);
      expect(status.controlPlane.mode).toBe(mode);
    });

    it(mode === 'xds' ? 'ztunnels got workloads and certificates over xDS and the CA API from the control plane, not LOCAL_XDS_PATH' : 'ztunnels read LOCAL_XDS_PATH and the CA on disk', async () => {
      await expectConfigSource(sandbox);
    });

    it('cross-node: sleep -> httpbin is HBONE between the nodes; the node link carries only TLS 1.3 on 15008', async () => {
      const wire = await captureNode('node-1', 'hbone');
      let r;
      try {
        r = await curl('sleep', `http://${httpbin.ip}:8000/hbone-probe-path`);
      } finally {
        await wire.stop();
      }
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ path: '/hbone-probe-path', client: { address: sleep.ip } });

      const raw = await wire.bytes();
      expect(raw.includes('hbone-probe-path'), 'the request crossed node-1 eth0 in plaintext').toBe(false);
      const streams = tcpStreams(parsePcap(raw)).filter((s) => [s.src, s.dst].includes(sleep.ip) || [s.src, s.dst].includes(httpbin.ip));
      expect(streams.length, 'no pod traffic seen on node-1 eth0').toBeGreaterThan(0);
      for (const s of streams) expect(s.dport === 15008 || s.sport === 15008, `${s.key} is not to or from 15008`).toBe(true);
      const toServer = streams.filter((s) => s.dport === 15008 && s.bytes.length > 0);
      const toClient = streams.filter((s) => s.sport === 15008 && s.bytes.length > 0);
      expect(toServer.length).toBeGreaterThan(0);
      // The first request of the sandbox: the HBONE connection is new, so each direction starts with a record.
      for (const s of [...toServer, ...toClient]) {
        expect(s.fromStart, `${s.key}: SYN not captured`).toBe(true);
        const tls = parseTlsRecords(s.bytes);
        expect(tls.error, `${s.key}: ${tls.error}`).toBeUndefined();
        expect(tls.records.length).toBeGreaterThan(0);
      }
      // A new HBONE connection shows its handshake (ClientHello, ServerHello choosing TLS 1.3); a pooled one only data.
      const hellos = toServer.map((s) => parseTlsRecords(s.bytes).records[0]).filter((rec) => rec?.type === 22);
      const serverHellos = toClient.map((s) => parseTlsRecords(s.bytes).records[0]).filter((rec) => rec?.type === 22);
      expect(hellos.every((h) => h?.handshakeType === 1)).toBe(true);
      expect(serverHellos.length).toBeGreaterThan(0);
      expect(serverHellos.every((h) => h?.handshakeType === 2 && h.selectedVersion === 0x0304), JSON.stringify(serverHellos)).toBe(true);
      expect(toServer.some((s) => parseTlsRecords(s.bytes).records.some((rec) => rec.type === 23))).toBe(true);
      expect(toClient.some((s) => parseTlsRecords(s.bytes).records.some((rec) => rec.type === 23))).toBe(true);

      const outbound = await sandbox.logs('node-1', 'ztunnel');
      expect(outbound).toMatch(new RegExp(`connection complete .*src\\.workload=sleep .*dst\\.addr=${escape(httpbin.ip)}:8000 .*dst\\.hbone_addr=${escape(httpbin.ip)}:15008 .*direction=outbound`));
      const inbound = await sandbox.logs('node-2', 'ztunnel');
      expect(inbound).toMatch(new RegExp(`connection complete .*src\\.addr=${escape(sleep.ip)}:\\d+ .*src\\.identity=spiffe://cluster\\.local/ns/demo/sa/default .*dst\\.addr=${escape(httpbin.ip)}:8000 .*direction=inbound`));
    });

    it('exec sleep -- curl http://<httpbin>:8000/ returns httpbin\'s echo with sleep\'s pod IP as the client', async () => {
      const r = await curl('sleep', `http://${httpbin.ip}:8000/`);
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ server: 'httpbin', method: 'GET', path: '/', client: { address: sleep.ip }, local: { address: httpbin.ip, port: 8000 } });
    });

    it('exec sleep -- ss -ntlp shows ztunnel listening on 15001, 15006 and 15008 in the pod', async () => {
      for (const pod of ['sleep', 'httpbin']) {
        const ss = await sandbox.execOk(pod, ['ss', '-ntlp']);
        for (const port of [15001, 15006, 15008]) expect(ss, `${pod}: ${ss}`).toMatch(new RegExp(`LISTEN .*:${port}\\s.*users:\\(\\("ztunnel"`));
      }
      // Not enrolled: nothing listens in legacy-client.
      expect(await sandbox.execOk('legacy-client', ['ss', '-ntlp'])).not.toMatch(/:1500[168]\s/);
    });

    it('exec sleep -- iptables-save shows exactly the seed\'s in-pod rules', async () => {
      const saved = savedRules(await sandbox.execOk('sleep', ['iptables-save']));
      expect(saved.mangle).toEqual(SEED_INPOD_RULES.mangle);
      expect(saved.nat).toEqual(SEED_INPOD_RULES.nat);
      expect(Object.keys(saved).sort()).toEqual(['mangle', 'nat']);
      expect(savedRules(await sandbox.execOk('legacy-client', ['iptables-save']))).toEqual({});
    });

    it('the ztunnel log shows the seed\'s in-pod events for sleep', async () => {
      const uid = await podUid('sleep');
      const log = await sandbox.logs('node-1', 'ztunnel');
      for (const line of ['inpod_enabled: true', 'inpod_uds: ', 'inpod_port_reuse: true', 'inpod_mark: 1337']) expect(log).toContain(line);
      const events = [/inpod.*handling new stream/, new RegExp(`inpod.*pod WorkloadUid\\("${uid}"\\) received netns, starting proxy`), /inpod.*pod received snapshot sent/];
      let at = -1;
      for (const event of events) {
        const m = event.exec(log);
        expect(m, `ztunnel log lacks ${event}:\n${log}`).not.toBeNull();
        // The seed's order for a pod that comes after ztunnel: stream, snapshot, then the pod.
        if (event === events[0]) at = m?.index ?? -1;
        else expect(m?.index ?? -1).toBeGreaterThan(at);
      }
    });
  });

  describe('traffic', () => {
    it('a DENY policy blocks sleep -> httpbin (logged and counted as DENY at the destination); removing it restores access', async () => {
      await sandbox.applyPolicy({ name: 'e2e-deny-sleep', namespace: 'demo', scope: 'Namespace', action: 'Deny', rules: [[[{ principals: ['cluster.local/ns/demo/sa/default'], destinationPorts: [8000] }]]] });
      if (mode === 'xds') {
        // It reached ztunnel as an xDS Authorization resource, pushed by the control plane on the file change.
        for (const node of ['node-1', 'node-2']) expect(await xdsPolicies(sandbox, node), node).toEqual([expect.stringContaining('e2e-deny-sleep')]);
        expect(await sandbox.controlPlaneLog()).toMatch(/"policies":1,"msg":"config reloaded, pushed"/);
      }
      await eventually('sleep -> httpbin to be denied', async () => ((await curl('sleep', `http://${httpbin.ip}:8000/denied`)).code !== 0 ? true : undefined), 30_000);
      const denied = await curl('sleep', `http://${httpbin.ip}:8000/denied`);
      expect(denied.code).not.toBe(0);
      expect(denied.out).not.toContain('httpbin');
      const httpbinLog = await sandbox.logs('node-2', 'ztunnel');
      expect(httpbinLog).toMatch(/connection failed|DENY|denied/i);
      expect(await sandbox.metrics('node-2')).toMatch(/istio_tcp_connections_(opened|failed)_total\{reporter="destination",source_workload="sleep".*response_flags="DENY"\} [1-9]/);

      await sandbox.deletePolicy('demo/e2e-deny-sleep');
      if (mode === 'xds') expect(await xdsPolicies(sandbox, 'node-2')).toEqual([]);
      const ok = await eventually('sleep -> httpbin to be allowed again', async () => {
        const r = await curl('sleep', `http://${httpbin.ip}:8000/allowed`);
        return r.code === 0 ? r : undefined;
      });
      expect(JSON.parse(ok.out)).toMatchObject({ path: '/allowed', client: { address: sleep.ip } });
    });

    it('a DENY policy added while a connection is open closes that connection (live connections are re-checked)', async () => {
      const server = sandbox.background('httpbin', ['socat', '-d', '-d', 'TCP-LISTEN:9200,reuseaddr,fork', 'SYSTEM:while true; do echo tick; sleep 0.5; done']);
      await server.waitForOutput(/listening on/);
      const client = sandbox.background('sleep', ['socat', '-u', `TCP:${httpbin.ip}:9200`, '-']);
      try {
        await client.waitForOutput(/tick\ntick\n/, 20_000);
        await sandbox.applyPolicy({ name: 'e2e-deny-9200', namespace: 'demo', scope: 'Namespace', action: 'Deny', rules: [[[{ destinationPorts: [9200] }]]] });
        const ticks = (): number => (client.output().match(/tick/g) ?? []).length;
        // Ticks must stop: the open connection is closed once the policy is loaded.
        await eventually('the open connection to be closed by the new DENY policy', async () => {
          const n = ticks();
          await new Promise((r) => setTimeout(r, 2_000));
          return ticks() === n ? true : undefined;
        }, 30_000);
      } finally {
        await client.stop();
        await server.stop();
        await sandbox.deletePolicy('demo/e2e-deny-9200');
      }
    });

    it('legacy-client -> httpbin is plaintext on the wire, enters httpbin through 15006, and is subject to policy', async () => {
      const wire = await captureNode('node-1', 'legacy');
      let r;
      try {
        r = await curl('legacy-client', `http://${httpbin.ip}:8000/legacy-path`);
      } finally {
        await wire.stop();
      }
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ path: '/legacy-path', client: { address: legacy.ip } });
      expect((await wire.bytes()).includes('GET /legacy-path'), 'legacy request must cross in plaintext').toBe(true);
      const streams = tcpStreams(parsePcap(await wire.bytes())).filter((s) => s.src === legacy.ip);
      expect(streams.map((s) => s.dport)).toContain(8000);
      expect(streams.map((s) => s.dport)).not.toContain(15008);
      // Captured at httpbin by the inbound plaintext listener: ztunnel logs it, without a peer identity.
      const log = await eventually('node-2 ztunnel to log the legacy connection', async () => {
        const text = await sandbox.logs('node-2', 'ztunnel');
        return new RegExp(`connection complete .*src\\.addr=${escape(legacy.ip)}:`).test(text) ? text : undefined;
      });
      const line = log.split('\n').find((l) => l.includes(`src.addr=${legacy.ip}:`)) ?? '';
      expect(line).toMatch(new RegExp(`dst\\.addr=${escape(httpbin.ip)}:8000 `));
      expect(line).toMatch(/direction=inbound/);
      expect(line).not.toMatch(/src\.identity=spiffe/);

      await sandbox.applyPolicy({ name: 'e2e-deny-legacy', namespace: 'demo', scope: 'Namespace', action: 'Deny', rules: [[[{ sourceIps: [`${legacy.ip}/32`] }]]] });
      await eventually('legacy -> httpbin to be denied', async () => ((await curl('legacy-client', `http://${httpbin.ip}:8000/x`)).code !== 0 ? true : undefined));
      // Sleep is unaffected by a policy on legacy's address.
      expect((await curl('sleep', `http://${httpbin.ip}:8000/`)).code).toBe(0);
      await sandbox.deletePolicy('demo/e2e-deny-legacy');
      await eventually('legacy -> httpbin to be allowed again', async () => ((await curl('legacy-client', `http://${httpbin.ip}:8000/x`)).code === 0 ? true : undefined));
    });

    it('weirctl sandbox has commands for policies and labels (policy apply FILE, label ns/demo KEY-)', async () => {
      const help = await sandbox.weirctl('--help');
      expect(help.out).toMatch(/\bpolicy apply FILE\b/);
      expect(help.out).toMatch(/\blabel ns\/NAME/);
      expect(await sandbox.weirctlOk('policy', ['list'], 30_000)).not.toContain('e2e-deny');
    });

    it('un-labelling namespace demo releases the pods: rules and listeners gone, traffic direct and plain', async () => {
      const versionsBefore = mode === 'xds' ? await addressVersions(sandbox, 'node-1') : undefined;
      await sandbox.label('ns/demo', 'istio.io/dataplane-mode-');
      if (versionsBefore) {
        // The workloads' protocol changed (HBONE -> TCP): the control plane pushed new versions of exactly the demo pods.
        const uids = { sleep: await podUid('sleep'), httpbin: await podUid('httpbin'), legacy: await podUid('legacy-client') };
        const after = await eventually('node-1 ztunnel to receive the demo workloads again over xDS', async () => {
          const v = await addressVersions(sandbox, 'node-1');
          return v.get(uids.sleep) !== versionsBefore.get(uids.sleep) && v.get(uids.httpbin) !== versionsBefore.get(uids.httpbin) ? v : undefined;
        });
        expect(after.get(uids.legacy)).toBe(versionsBefore.get(uids.legacy));
      }
      for (const pod of ['sleep', 'httpbin']) {
        await eventually(`${pod} to be released (no ISTIO_ rules, IPv4 or IPv6)`, async () => (/ISTIO_/.test(await sandbox.execOk(pod, ['sh', '-c', 'iptables-save; ip6tables-save'])) ? undefined : true), 60_000);
        await eventually(`${pod}'s ztunnel listeners to close`, async () => (/:1500[168]\s/.test(await sandbox.execOk(pod, ['ss', '-ntl'])) ? undefined : true), 30_000);
      }
      expect(await sandbox.logs('node-1', 'ztunnel')).toMatch(/pod delete request, draining proxy/);
      const status = await sandbox.status();
      expect(status.pods.map((p) => [p.name, p.captured])).toEqual([
        ['sleep', false],
        ['httpbin', false],
        ['legacy-client', false],
      ]);

      const wire = await captureNode('node-1', 'released');
      let r;
      try {
        r = await curl('sleep', `http://${httpbin.ip}:8000/released-path`);
      } finally {
        await wire.stop();
      }
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ path: '/released-path', client: { address: sleep.ip } });
      const raw = await wire.bytes();
      expect(raw.includes('GET /released-path')).toBe(true);
      expect(tcpStreams(parsePcap(raw)).some((s) => s.src === sleep.ip && s.dport === 8000)).toBe(true);
      expect(await sandbox.logs('node-1', 'ztunnel')).not.toContain(`/released-path`);
    });

    it('labelling demo again captures the running pods again; a pod labelled none opts out and is then captured only at its peer', async () => {
      await sandbox.label('ns/demo', 'istio.io/dataplane-mode=ambient');
      for (const pod of ['sleep', 'httpbin']) {
        await eventually(`${pod} to be captured again`, async () => (savedRules(await sandbox.execOk(pod, ['iptables-save'])).nat?.join('\n') === SEED_INPOD_RULES.nat.join('\n') ? true : undefined), 60_000);
        await eventually(`${pod}'s listeners to be back`, async () => (/:15001\s/.test(await sandbox.execOk(pod, ['ss', '-ntl'])) ? true : undefined), 30_000);
      }
      const again = await eventually('sleep -> httpbin over HBONE again', async () => {
        const r = await curl('sleep', `http://${httpbin.ip}:8000/relabelled`);
        const log = await sandbox.logs('node-1', 'ztunnel');
        return r.code === 0 && new RegExp(`dst\\.addr=${escape(httpbin.ip)}:8000 dst\\.hbone_addr=`).test(log.slice(log.lastIndexOf('received netns'))) ? r : undefined;
      });
      expect(JSON.parse(again.out)).toMatchObject({ client: { address: sleep.ip } });

      await sandbox.label('pod/demo/sleep', 'istio.io/dataplane-mode=none');
      await eventually('sleep to opt out (no ISTIO_ rules)', async () => (/ISTIO_/.test(await sandbox.execOk('sleep', ['iptables-save'])) ? undefined : true), 60_000);
      expect(await sandbox.execOk('httpbin', ['iptables-save'])).toMatch(/ISTIO_PRERT/);
      const node2Before = (await sandbox.logs('node-2', 'ztunnel')).length;
      const r = await curl('sleep', `http://${httpbin.ip}:8000/opted-out`);
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out)).toMatchObject({ client: { address: sleep.ip } });
      // Plaintext from a client outside the mesh: httpbin's 15006 takes it, without a peer identity.
      const line = await eventually('node-2 ztunnel to log the plaintext connection from sleep', async () =>
        (await sandbox.logs('node-2', 'ztunnel'))
          .slice(node2Before)
          .split('\n')
          .find((l) => l.includes(`src.addr=${sleep.ip}:`) && l.includes('connection complete')),
      );
      expect(line).toMatch(/direction=inbound/);
      expect(line).not.toMatch(/src\.identity=spiffe/);
    });

    it('down leaves the host exactly as before (netns, links, iptables, routes of the root netns)', async () => {
      const down = await sandbox.down();
      expect(down.code, down.err).toBe(0);
      expect(down.out).toMatch(/^sandbox down: stopped \d+ processes/);
      const after = await hostSnapshot();
      // Other packages' tests make namespaces concurrently: ours must be gone, theirs are not our business.
      expect(after.netns.filter((n) => n === sandbox.name || n.startsWith(`${sandbox.name}-`))).toEqual([]);
      expect(before.netns.filter((n) => n.startsWith(`${sandbox.name}`))).toEqual([]);
      expect(after.links).toEqual(before.links);
      expect(after.iptables).toEqual(before.iptables);
      expect(after.ip6tables).toEqual(before.ip6tables);
      expect(after.rules).toEqual(before.rules);
      expect(after.routes).toEqual(before.routes);
      expect(existsSync(sandbox.dir), `${sandbox.dir} left behind`).toBe(false);
      expect(existsSync(`/sys/fs/cgroup/weir-topology/${sandbox.name}`), 'pod cgroups left behind').toBe(false);
      expect((await sandbox.weirctl('down')).out).toBe('nothing to remove: no sandbox is up\n');
    });
  });
});
