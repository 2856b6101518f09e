import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openNetns, connectTcp, type Netns } from '@weir/netns';
import { ZdsServer } from '@weir/redirect-protocol';
import { Topology, type SupervisedProcess, type TopologyNode, type TopologyPod } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EchoApp, capturePod, echoTransfer, execFileP, localConfigYaml, podListeners, requireRoot, tryConnect, uniqueName, waitFor, zdsAddPod } from './support.js';

// The real `weir-ztunnel` binary, one per simulated node (each in its node's netns), fed by a node
// agent stand-in over ZDS: ZdsServer, and a Python peer that writes the protobuf records by hand.

const here = dirname(fileURLToPath(import.meta.url));
const BIN = join(here, '../../../apps/ztunnel/dist/main.js');
const MiB = 1 << 20;

let topo: Topology;
let dir: string;
let n1: TopologyNode, n2: TopologyNode;
let a: TopologyPod, b: TopologyPod, c: TopologyPod, outside: TopologyPod;
let zds1: ZdsServer, zds2: ZdsServer;
let zt1: SupervisedProcess, zt2: SupervisedProcess;
let appB: EchoApp, appC: EchoApp;
let nsA: Netns, nsOutside: Netns;
let configPath: string;
let seq = 0;

const workloads = () => [
  { pod: a, serviceAccount: 'sa-a', node: 'n1' },
  { pod: b, serviceAccount: 'sa-b', node: 'n1' },
  { pod: c, serviceAccount: 'sa-c', node: 'n2' },
];
const sa: Record<string, string> = { a: 'sa-a', b: 'sa-b', c: 'sa-c' };

function startZtunnel(node: TopologyNode, udsPath: string, extra: Record<string, string> = {}): Promise<SupervisedProcess> {
  return topo.spawn({
    name: `ztunnel-${node.name}-${++seq}`,
    netns: node.netnsPath,
    cmd: process.execPath,
    args: [BIN],
    env: {
      INPOD_UDS: udsPath,
      LOCAL_XDS_PATH: configPath,
      NODE_NAME: node.name,
      WEIR_CA_CERT: join(dir, 'ca', 'root-cert.pem'),
      WEIR_CA_KEY: join(dir, 'ca', 'ca-key.pem'),
      CONNECTION_TERMINATION_DEADLINE: '2s',
      ...extra,
    },
  });
}

async function enroll(zds: ZdsServer, pod: TopologyPod): Promise<void> {
  // No ztunnel yet (the add is not acked): the pod rides the next snapshot.
  await zdsAddPod(zds, pod, sa[pod.name] ?? 'default').catch(() => {});
}

/** HTTP GET from inside a node's netns (the ztunnel's admin/metrics/readiness live there). */
async function nodeGet(node: TopologyNode, url: string): Promise<{ status: number; body: string }> {
  const r = await node.exec('curl', ['-s', '-m', '5', '-w', '\n%{http_code}', url]);
  const i = r.stdout.lastIndexOf('\n');
  return { status: Number(r.stdout.slice(i + 1)), body: r.stdout.slice(0, i) };
}

/** Waits until the process has logged `n` local config reloads after its first load. */
async function waitForReload(proc: SupervisedProcess, n: number): Promise<void> {
  await waitFor(`local config reload #${n}`, async () => ((await proc.readLog()).match(/local config loaded/g)?.length ?? 0) >= n + 1);
}

const ready = async (node: TopologyNode, port = 15021) => (await nodeGet(node, `http://127.0.0.1:${port}/healthz/ready`)).status === 200;

beforeAll(async () => {
  requireRoot();
  // The binary lives in apps/ztunnel, which depends on this package: build it when a fresh tree lacks it.
  if (!(await readFile(BIN).then(() => true, () => false))) {
    await execFileP('npm', ['run', 'build', '-w', '@weir/app-ztunnel'], { cwd: join(here, '../../..'), timeout: 120_000 });
  }
  dir = await mkdtemp(join(tmpdir(), 'wzt-bin-'));
  topo = await Topology.create({ name: uniqueName('b') });
  n1 = await topo.addNode({ name: 'n1' });
  n2 = await topo.addNode({ name: 'n2' });
  a = await n1.addPod({ name: 'a', namespace: 'ns1' });
  b = await n1.addPod({ name: 'b', namespace: 'ns2' });
  outside = await n1.addPod({ name: 'outside', namespace: 'ns3' });
  c = await n2.addPod({ name: 'c', namespace: 'ns2' });
  for (const p of [a, b, c]) await capturePod(p);
  configPath = join(dir, 'local.yaml');
  await writeFile(configPath, localConfigYaml(workloads()));
  zds1 = new ZdsServer({ path: join(dir, 'n1', 'ztunnel.sock') });
  zds2 = new ZdsServer({ path: join(dir, 'n2', 'ztunnel.sock') });
  await zds1.start();
  await zds2.start();
  await enroll(zds1, a);
  await enroll(zds1, b);
  await enroll(zds2, c);
  // Both start at once against one (not yet existing) CA: they must end up sharing it.
  [zt1, zt2] = await Promise.all([
    startZtunnel(n1, zds1.path, { WEIR_DNS_UPSTREAMS: `${outside.ip}:53` }),
    startZtunnel(n2, zds2.path, { DNS_PROXY: 'false' }),
  ]);
  await waitFor('n1 ztunnel ready', () => ready(n1), 30_000);
  await waitFor('n2 ztunnel ready', () => ready(n2), 30_000);
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
  await zds1?.close();
  await zds2?.close();
  await topo?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe('weir-ztunnel process', () => {
  it('prints its effective config and owns 15001/15006/15008 in every pod it was handed', async () => {
    const log = await zt1.readLog();
    expect(log).toMatch(/^inpod_enabled: true$/m);
    expect(log).toMatch(/^inpod_uds: .*n1\/ztunnel\.sock$/m);
    expect(log).toMatch(/^inpod_port_reuse: true$/m);
    expect(log).toMatch(/^inpod_mark: 1337$/m);
    expect(log).toMatch(/\d{6}Z {2}INFO inpod: handling new stream/);
    expect(log).toContain(`INFO inpod: pod WorkloadUid("${a.uid}") received netns, starting proxy uid=${a.uid}`);
    expect(log).toContain('pod received snapshot sent');
    for (const [pod, proc] of [[a, zt1], [b, zt1], [c, zt2]] as const) {
      const l = await podListeners(pod);
      for (const port of [15001, 15006, 15008]) expect(l.get(port), `${pod.name}:${port}`).toEqual([proc.pid]);
    }
  });

  it('runs the DNS proxy on 15053 in its pods unless DNS_PROXY=false, forwarding to WEIR_DNS_UPSTREAMS', async () => {
    expect(await zt1.readLog()).toMatch(/^dns_proxy: true$/m);
    expect(await zt1.readLog()).toContain(`dns_upstreams: ${outside.ip}:53`);
    expect(await zt2.readLog()).toMatch(/^dns_proxy: false$/m);
    // TCP on 127.0.0.1:15053 and [::1]:15053, both the process's.
    for (const pod of [a, b]) expect(new Set((await podListeners(pod)).get(15053)), pod.name).toEqual(new Set([zt1.pid]));
    expect((await podListeners(c)).has(15053)).toBe(false);
    // Nothing serves DNS on the configured upstream: the proxy answers SERVFAIL, over UDP and TCP.
    for (const transport of ['+notcp', '+tcp']) {
      const r = await a.exec('dig', ['@127.0.0.1', '-p', '15053', transport, 'nowhere.example', '+tries=1', '+time=8']);
      expect(r.stdout, transport).toMatch(/status: SERVFAIL/);
    }
  });

  it('crosses nodes as TLS 1.3 with ALPN h2 and no plaintext on the wire', async () => {
    const pcap = join(dir, 'underlay.pcap');
    const dump = spawn('ip', ['netns', 'exec', n1.netns, 'tcpdump', '--immediate-mode', '-i', 'eth0', '-U', '-s', '0', '-w', pcap, 'tcp port 15008'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let dumpErr = '';
    dump.stderr.on('data', (d: Buffer) => (dumpErr += String(d)));
    await waitFor('tcpdump listening', async () => dumpErr.includes('listening on'), 10_000).catch((err: Error) => {
      throw new Error(`tcpdump did not start (is tcpdump installed?): ${err.message} ${dumpErr}`);
    });
    const marker = `WEIR-PLAINTEXT-${randomBytes(8).toString('hex')}`;
    const socket = await connectTcp({ netns: nsA, family: 4, host: c.ip, port: 8080 });
    const echoed = await new Promise<string>((resolve, reject) => {
      let got = '';
      socket.on('data', (d: Buffer) => (got += String(d)));
      socket.on('end', () => resolve(got));
      socket.on('error', reject);
      socket.end(marker.repeat(1000));
    });
    socket.destroy();
    expect(echoed).toBe(marker.repeat(1000));
    await waitFor('packets written', async () => (await readFile(pcap)).length > 10_000, 5000).catch(() => {});
    dump.kill('SIGINT');
    await new Promise((r) => dump.once('exit', r));
    const wire = await readFile(pcap);
    expect(wire.length, `capture (${dumpErr.trim()})`).toBeGreaterThan(10_000);
    expect(wire.includes(Buffer.from(marker.slice(0, 20)))).toBe(false);
    // ClientHello's ALPN extension offering exactly "h2", and a ServerHello selecting TLS 1.3.
    expect(wire.includes(Buffer.from([0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, 0x68, 0x32]))).toBe(true);
    expect(wire.includes(Buffer.from([0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]))).toBe(true);
    // The destination ztunnel saw and logged the source's SPIFFE identity.
    await zt2.waitForOutput(/connection complete.*src\.identity=spiffe:\/\/cluster\.local\/ns\/ns1\/sa\/sa-a.*direction=inbound/);
  });

  it('carries 64 MiB each way intact, same node and across nodes, with the client address preserved', async () => {
    for (const [dst, app] of [[b, appB], [c, appC]] as const) {
      const r = await echoTransfer(nsA, dst.ip, 8080, 64 * MiB, 120_000);
      expect(r.bytes, `${dst.name}`).toBe(64 * MiB);
      expect(r.received, `${dst.name}`).toBe(r.sent);
      expect(app.clients.at(-1)).toBe(a.ip);
    }
    await zt1.waitForOutput(/connection complete.*src\.identity=spiffe:\/\/cluster\.local\/ns\/ns1\/sa\/sa-a.*bytes_sent=67108864 bytes_recv=67108864/);
  }, 300_000);

  it('applies a DENY policy to HBONE and plaintext (15006) alike, and counts it', async () => {
    expect(await tryConnect(nsOutside, b.ip, 8080)).toBe('ok');
    expect(appB.clients.at(-1)).toBe(outside.ip);
    await writeFile(configPath, localConfigYaml(workloads(), '- {name: deny-8080, namespace: ns2, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}'));
    await waitForReload(zt1, 1);
    expect(await tryConnect(nsA, b.ip, 8080)).not.toBe('ok');
    expect(await tryConnect(nsOutside, b.ip, 8080)).not.toBe('ok');
    const m = (await nodeGet(n1, 'http://127.0.0.1:15020/metrics')).body;
    expect(m).toMatch(/istio_tcp_connections_closed_total\{reporter="destination",source_workload="a"[^}]*destination_workload="b"[^}]*response_flags="DENY"\} 1/);
    expect(m).toMatch(/istio_tcp_connections_closed_total\{reporter="destination",source_workload="unknown"[^}]*connection_security_policy="unknown",response_flags="DENY"\} 1/);
    await writeFile(configPath, localConfigYaml(workloads()));
    await waitForReload(zt1, 2);
    expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
  });

  it('serves config_dump and changes the log level at runtime', async () => {
    const dump = JSON.parse((await nodeGet(n1, 'http://127.0.0.1:15000/config_dump')).body) as {
      pods: { uid: string; state: string }[];
      certificates: { identity: string; state: string }[];
    };
    expect(dump.pods.map((p) => [p.uid, p.state]).sort()).toEqual([[a.uid, 'Up'], [b.uid, 'Up']].sort());
    expect(dump.certificates.map((x) => x.identity).sort()).toEqual(['spiffe://cluster.local/ns/ns1/sa/sa-a', 'spiffe://cluster.local/ns/ns2/sa/sa-b']);
    const r = await n1.exec('curl', ['-s', '-X', 'POST', 'http://127.0.0.1:15000/logging?level=debug']);
    expect(r.stdout).toContain('current log level is debug');
  });

  it('fails closed when killed, and a restart with the snapshot replayed restores service without touching the rules', async () => {
    const rulesBefore = (await a.exec('iptables-save', [])).stdout.replace(/\[\d+:\d+\]/g, '').replace(/^#.*$/gm, '');
    await zt1.stop('SIGKILL');
    const probe = await a.probeTcp({ host: b.ip, port: 8080, timeoutMs: 3000 });
    expect(probe).toMatchObject({ ok: false, code: 'ECONNREFUSED' });
    zt1 = await startZtunnel(n1, zds1.path);
    await waitFor('restarted ztunnel ready', () => ready(n1), 30_000);
    expect(await tryConnect(nsA, b.ip, 8080)).toBe('ok');
    expect(await tryConnect(nsA, c.ip, 8080)).toBe('ok');
    const rulesAfter = (await a.exec('iptables-save', [])).stdout.replace(/\[\d+:\d+\]/g, '').replace(/^#.*$/gm, '');
    expect(rulesAfter).toBe(rulesBefore);
  }, 60_000);

  it('hands over to a second ztunnel started beside the first with zero failed new connections', async () => {
    // An established connection through the old ztunnel: it must keep working while the old one drains.
    const longLived = await connectTcp({ netns: nsA, family: 4, host: b.ip, port: 8080 });
    longLived.on('error', () => {});
    const longClosed = new Promise<number>((r) => longLived.once('close', () => r(Date.now())));
    const roundTrip = (text: string): Promise<string> =>
      new Promise((resolve) => {
        longLived.once('data', (d: Buffer) => resolve(String(d)));
        longLived.write(text);
      });
    expect(await roundTrip('before')).toBe('before');
    const successor = await startZtunnel(n1, zds1.path, {
      WEIR_ADMIN_ADDR: '127.0.0.1:16000',
      WEIR_METRICS_ADDR: '[::]:16020',
      WEIR_READINESS_ADDR: '[::]:16021',
    });
    await waitFor('successor ready', () => ready(n1, 16021), 30_000);
    const both = await podListeners(a);
    expect(both.get(15001)?.sort()).toEqual([zt1.pid, successor.pid].sort());
    let stop = false;
    const results: string[] = [];
    const loop = async (dst: TopologyPod): Promise<void> => {
      while (!stop) results.push(await tryConnect(nsA, dst.ip, 8080));
    };
    const loops = [loop(b), loop(c)];
    await new Promise((r) => setTimeout(r, 500));
    const sigterm = Date.now();
    const exited = zt1.stop('SIGTERM', 10_000);
    await zt1.waitForOutput('shutting down');
    expect(await roundTrip('during drain')).toBe('during drain');
    await exited;
    // CONNECTION_TERMINATION_DEADLINE=2s: the old process cut what was left when it ended.
    expect((await longClosed) - sigterm).toBeGreaterThanOrEqual(1500);
    await new Promise((r) => setTimeout(r, 1000));
    stop = true;
    await Promise.all(loops);
    expect(results.length).toBeGreaterThan(10);
    expect(results.filter((r) => r !== 'ok')).toEqual([]);
    expect((await podListeners(a)).get(15001)).toEqual([successor.pid]);
    zt1 = successor;
  }, 60_000);

  it('takes pods from a node agent written in Python (raw SEQPACKET + SCM_RIGHTS, hand-encoded protobuf)', async () => {
    const n3 = await topo.addNode({ name: 'n3' });
    const d = await n3.addPod({ name: 'd', namespace: 'ns4' });
    const e = await n3.addPod({ name: 'e', namespace: 'ns4' });
    for (const p of [d, e]) await capturePod(p);
    const sock = join(dir, 'py', 'ztunnel.sock');
    const script = join(dir, 'agent.py');
    await writeFile(script, PY_AGENT);
    const agent = await topo.spawn({
      name: 'py-agent',
      netns: n3.netnsPath,
      cmd: '/usr/bin/python3',
      args: ['-u', script, sock, `${d.netnsPath},${d.uid},${d.name}`, `${e.netnsPath},${e.uid},${e.name}`],
    });
    await agent.waitForOutput('listening');
    const zt3 = await startZtunnel(n3, sock);
    await agent.waitForOutput('snapshot acked', 30_000);
    const log = await agent.readLog();
    expect(log).toContain('hello version=1');
    expect(log).toContain(`add ${d.uid} acked ok`);
    expect(log).toContain(`add ${e.uid} acked ok`);
    for (const pod of [d, e]) {
      const l = await podListeners(pod);
      for (const port of [15001, 15006, 15008]) expect(l.get(port), `${pod.name}:${port}`).toEqual([zt3.pid]);
    }
    await zt3.waitForOutput(`pod WorkloadUid("${e.uid}") received netns, starting proxy`);
    await zt3.stop('SIGTERM');
    await agent.stop('SIGTERM');
  }, 60_000);
});

// A node agent that shares no code with Weir: protobuf bytes by hand, the netns fd as SCM_RIGHTS.
const PY_AGENT = String.raw`
import os, socket, sys, time
path, pods = sys.argv[1], [a.split(",") for a in sys.argv[2:]]
os.makedirs(os.path.dirname(path), exist_ok=True)
if os.path.exists(path): os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
srv.bind(path); srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
hello = conn.recv(1024)
assert hello[:1] == b"\x08", hello  # ZdsHello.version, varint
print("hello version=%d" % hello[1], flush=True)
def field(num, payload):  # length-delimited field (all lengths here < 128)
    return bytes([(num << 3) | 2, len(payload)]) + payload
for netns_path, uid, name in pods:
    info = field(1, name.encode()) + field(2, b"ns4") + field(3, b"sa-" + name.encode())
    add = field(1, field(1, uid.encode()) + field(2, info))  # WorkloadRequest.add
    fd = os.open(netns_path, os.O_RDONLY)
    conn.sendmsg([add], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
    os.close(fd)
    ack = conn.recv(1024)  # WorkloadResponse{ack: Ack{}} is 0a 00; a nack carries an error string
    print("add %s acked %s" % (uid, "ok" if ack == b"\x0a\x00" else repr(ack)), flush=True)
conn.send(bytes([0x1a, 0x00]))  # WorkloadRequest.snapshot_sent
ack = conn.recv(1024)
print("snapshot acked", repr(ack), flush=True)
while True: time.sleep(1)
`;
