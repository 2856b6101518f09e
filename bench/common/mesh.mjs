/* global process, console, setTimeout */
// Shared by the data-path benches: the sandbox topology (two simulated nodes, pods in netns, the
// in-pod rules), the real `weir-ztunnel` binary on each node fed over ZDS by this process, and the
// peer tunnels (Go HTTP/2 CONNECT, stunnel) run in the node netns in place of the ztunnels.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { allocProfArgs, cpuProfArgs, cpuProfDir, printCpuProfiles } from './profiling.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const root = join(here, '..', '..');
// BENCH_ZTUNNEL_BIN: another build's main.js (e.g. a copy of the tree before a change, for an A/B on the same machine).
const ZTUNNEL_BIN = process.env.BENCH_ZTUNNEL_BIN || join(root, 'apps/ztunnel/dist/main.js');
// Young-generation tuning passthrough: BENCH_ZTUNNEL_V8_FLAGS becomes the ztunnels' WEIR_V8_FLAGS (set even when
// empty: no flags), BENCH_ZTUNNEL_NODE_ARGS goes on their node command line (--max/--min-semi-space-size only act there).
const ztunnelV8Flags = process.env.BENCH_ZTUNNEL_V8_FLAGS === undefined ? {} : { WEIR_V8_FLAGS: process.env.BENCH_ZTUNNEL_V8_FLAGS };
const ztunnelNodeArgs = (process.env.BENCH_ZTUNNEL_NODE_ARGS ?? '').split(/\s+/).filter((a) => a !== '');

async function load() {
  try {
    return {
      topology: await import('@weir/topology'),
      iptables: await import('@weir/iptables-builder'),
      zds: await import('@weir/redirect-protocol'),
      netns: await import('@weir/netns'),
      pki: await import('@weir/pki'),
    };
  } catch (err) {
    console.error(`build first: npm run build -w @weir/topology -w @weir/iptables-builder -w @weir/redirect-protocol -w @weir/netns -w @weir/pki -w @weir/app-ztunnel (${err.message})`);
    process.exit(1);
  }
}

export function requireRootAndTools(tools) {
  if (process.getuid?.() !== 0) {
    console.error('this bench needs root (network namespaces, iptables)');
    process.exit(1);
  }
  const missing = tools.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
  if (missing.length) {
    console.error(`missing tools: ${missing.join(', ')} (apt-get install ${missing.join(' ')})`);
    process.exit(1);
  }
  if (!existsSync(ZTUNNEL_BIN)) {
    console.error(`missing ${ZTUNNEL_BIN}: npm run build -w @weir/app-ztunnel`);
    process.exit(1);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what, fn, timeoutMs = 30_000) {
  const until = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(100);
  }
}

/** CPU seconds (user + system, all threads) used so far by a pid. */
export function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** Peak resident set size (VmHWM) of a pid, KiB; 0 when it is gone. */
export function peakRssKiB(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Resident set size of a pid, KiB. */
export function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

export const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
export const round = (n, d = 3) => Number(n.toFixed(d));
export const machine = () => `load average ${loadavg().map((l) => l.toFixed(1)).join(' ')} on ${cpus().length} cores`;

/** One `- {...}` local-config workload line per pod: every enrolled pod is an HBONE workload. */
function localConfigYaml(entries) {
  return `workloads:\n${entries
    .map(
      ({ pod, node }) =>
        `- {uid: "${pod.uid}", name: ${pod.name}, namespace: ${pod.namespace}, serviceAccount: sa-${pod.name}, ` +
        `trustDomain: cluster.local, workloadIps: ["${pod.ip}"], protocol: HBONE, node: ${node}}`,
    )
    .join('\n')}\n`;
}

/**
 * Two nodes, the given pods on each, a weir-ztunnel per node (shared CA, one local config naming every
 * pod), every pod handed to its node's ztunnel over ZDS. Capture (the in-pod rules) is per pod and
 * toggled with `capture(pod, on)`, so the same pods serve the direct and peer-tunnel paths too.
 * Pods named in `defer` are created and in the local config but left for the caller to `enroll`.
 */
export async function createMesh({ tag, pods, defer = [] }) {
  const m = await load();
  const name = `wb${tag}${process.pid % 1000}${randomBytes(1).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), `weir-bench-${tag}-`));
  // The signal handlers are in place before Topology.create first yields, so a SIGINT during set-up
  // tears down whatever exists by then (destroy waits for the creation to settle).
  const creating = m.topology.Topology.create({ name });
  const zdsServers = [];
  let destroying;
  const mesh = {
    m,
    dir,
    topo: undefined,
    nodes: [],
    pods: {},
    ztunnels: [],
    /** Set on SIGINT/SIGTERM: the teardown under way makes the bench's steps fail, which is no error. */
    interrupted: false,
    /** Idempotent: the bench's finally and a signal may both call it. */
    destroy() {
      destroying ??= (async () => {
        try {
          for (const z of zdsServers) await z.close().catch(() => {});
          const topo = await creating.catch(() => undefined);
          await topo?.destroy();
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      })();
      return destroying;
    },
  };
  const onSignal = () => {
    mesh.interrupted = true;
    void mesh.destroy().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const topo = await creating;
    mesh.topo = topo;
    const entries = [];
    for (const nodeName of ['n1', 'n2']) {
      const node = await topo.addNode({ name: nodeName });
      mesh.nodes.push(node);
      for (const p of pods[nodeName] ?? []) {
        const pod = await node.addPod({ name: p, namespace: 'bench' });
        mesh.pods[p] = pod;
        entries.push({ pod, node: nodeName });
      }
    }
    const configPath = join(dir, 'local.yaml');
    writeFileSync(configPath, localConfigYaml(entries));
    for (const node of mesh.nodes) {
      const zds = new m.zds.ZdsServer({ path: join(dir, node.name, 'ztunnel.sock') });
      await zds.start();
      zdsServers.push(zds);
      const alloc = allocProfArgs(`ztunnel-${node.name}`);
      const zt = await topo.spawn({
        name: `ztunnel-${node.name}`,
        netns: node.netnsPath,
        cmd: process.execPath,
        args: [...cpuProfArgs(`ztunnel-${node.name}`), ...alloc.args, ...ztunnelNodeArgs, ZTUNNEL_BIN],
        env: {
          ...ztunnelV8Flags,
          ...alloc.env,
          INPOD_UDS: zds.path,
          LOCAL_XDS_PATH: configPath,
          NODE_NAME: node.name,
          WEIR_CA_CERT: join(dir, 'ca', 'root-cert.pem'),
          WEIR_CA_KEY: join(dir, 'ca', 'ca-key.pem'),
          LOG_LEVEL: 'warn',
          CONNECTION_TERMINATION_DEADLINE: '1s',
        },
      });
      mesh.ztunnels.push(zt);
      node.zds = zds;
      node.ztunnel = zt;
    }
    for (const node of mesh.nodes) {
      await waitFor(`${node.name} ztunnel ready`, async () => (await node.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:15021/healthz/ready'])).stdout === '200', 60_000);
    }
    for (const node of mesh.nodes) for (const pod of node.pods) if (!defer.includes(pod.name)) await enroll(mesh, node, pod);
    for (const node of mesh.nodes) await waitFor(`${node.name} pods ready`, async () => (await node.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:15021/healthz/ready'])).stdout === '200', 60_000);
    return mesh;
  } catch (err) {
    await mesh.destroy();
    throw err;
  }
}

/** Hands a pod to its node's ztunnel (as the node agent does), waiting for the ack. */
export async function enroll(mesh, node, pod) {
  const ns = mesh.m.netns.openNetns(pod.netnsPath);
  try {
    await node.zds.addWorkload(pod.uid, { name: pod.name, namespace: pod.namespace, serviceAccount: `sa-${pod.name}` }, ns);
  } finally {
    ns.close();
  }
}

/**
 * `setCapture(on)` for a set of pods: the in-pod rules on or off in all of them, applied only when the
 * state changes (the benches switch paths round by round). Starts from off, as createMesh leaves pods.
 */
export function captureToggle(mesh, pods) {
  let captured = false;
  return async (on) => {
    if (on === captured) return;
    for (const pod of pods) await capture(mesh, pod, on);
    captured = on;
  };
}

/** In-pod rules on (the seed's TPROXY set and its routing) or off (rules removed, listeners stay). */
export async function capture(mesh, pod, on) {
  const { RuleApplier, RoutingApplier, inpodRules, inpodRouting, netnsExecutor } = mesh.m.iptables;
  const executor = netnsExecutor(pod.netnsPath);
  if (on) {
    await new RuleApplier({ executor }).apply(inpodRules({ mode: 'tproxy', dnsCapture: false }));
    await new RoutingApplier({ executor }).apply(inpodRouting());
  } else {
    await new RuleApplier({ executor }).cleanup(['ipv4', 'ipv6']);
  }
}

/** Workload certificates for the peer tunnels, from the same kind of CA (ECDSA P-256, @weir/pki). */
export async function peerCerts(mesh) {
  const ca = await mesh.m.pki.LocalCa.create({ trustDomain: 'cluster.local' });
  const serverId = 'spiffe://cluster.local/ns/bench/sa/server';
  const server = await ca.issueWorkloadCertificate({ identity: serverId });
  const client = await ca.issueWorkloadCertificate({ identity: 'spiffe://cluster.local/ns/bench/sa/client' });
  const f = { serverId };
  for (const [k, text] of Object.entries({ serverKey: server.keyPem, serverCrt: server.chainPem, clientKey: client.keyPem, clientCrt: client.chainPem, root: ca.rootPem })) {
    f[k] = join(mesh.dir, `${k}.pem`);
    writeFileSync(f[k], text);
  }
  return f;
}

/** Builds packages/hbone/test/peers/hbonepeer.go (Go standard library only), as bench/hbone does. */
export function buildGoPeer(dir) {
  const bin = join(dir, 'hbonepeer');
  const env = { ...process.env, GO111MODULE: 'off', GOFLAGS: '', GOCACHE: join(tmpdir(), 'weir-hbone-gocache'), GOPATH: join(tmpdir(), 'weir-hbone-gopath') };
  const r = spawnSync('go', ['build', '-o', bin, join(root, 'packages/hbone/test/peers/hbonepeer.go')], { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`go build of hbonepeer failed (golang-go installed?): ${r.stderr || r.error}`);
  return bin;
}

/**
 * A peer tunnel in place of both ztunnels: client side in the source node's netns listening on
 * <node ip>:<port>, server side in the destination node's netns, which dials `target` (the pod). The
 * source pod is configured explicitly to connect to the client side (capture off).
 * Returns { host, port, procs }.
 */
export async function startPeerTunnel(mesh, kind, { from, to, target, certs, goBin, port = 16001 }) {
  const tag = `${kind}-${port}`;
  if (kind === 'go') {
    const s = await mesh.topo.spawn({ name: `go-server-${tag}`, netns: to.netnsPath, cmd: goBin, args: ['-mode', 'server', '-listen', `${to.ip}:${port + 1}`, '-cert', certs.serverCrt, '-key', certs.serverKey, '-ca', certs.root] });
    await s.waitForOutput(/LISTENING/, 30_000);
    const c = await mesh.topo.spawn({
      name: `go-client-${tag}`,
      netns: from.netnsPath,
      cmd: goBin,
      args: ['-mode', 'client-front', '-listen', `${from.ip}:${port}`, '-peer', `${to.ip}:${port + 1}`, '-target', target, '-cert', certs.clientCrt, '-key', certs.clientKey, '-ca', certs.root, '-expect', certs.serverId],
    });
    await c.waitForOutput(/LISTENING/, 30_000);
    return { host: from.ip, port, procs: [c, s] };
  }
  if (kind === 'stunnel') {
    const common = ['foreground = yes', 'pid =', 'debug = 3', 'sslVersionMin = TLSv1.3', 'ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384', `CAfile = ${certs.root}`, 'verifyChain = yes', 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1'];
    const sconf = join(mesh.dir, `stunnel-server-${port}.conf`);
    writeFileSync(sconf, [...common, '[t]', `accept = ${to.ip}:${port + 1}`, `connect = ${target}`, `cert = ${certs.serverCrt}`, `key = ${certs.serverKey}`, ''].join('\n'));
    const cconf = join(mesh.dir, `stunnel-client-${port}.conf`);
    writeFileSync(cconf, [...common, '[t]', 'client = yes', `accept = ${from.ip}:${port}`, `connect = ${to.ip}:${port + 1}`, `cert = ${certs.clientCrt}`, `key = ${certs.clientKey}`, ''].join('\n'));
    const s = await mesh.topo.spawn({ name: `stunnel-server-${tag}`, netns: to.netnsPath, cmd: 'stunnel4', args: [sconf] });
    const c = await mesh.topo.spawn({ name: `stunnel-client-${tag}`, netns: from.netnsPath, cmd: 'stunnel4', args: [cconf] });
    await waitFor('stunnel listening', async () => (await listening(from, port)) && (await listening(to, port + 1)), 30_000);
    return { host: from.ip, port, procs: [c, s] };
  }
  throw new Error(`unknown peer tunnel ${kind}`);
}

async function listening(node, port) {
  return (await node.exec('ss', ['-Hltn', `sport = :${port}`])).stdout.trim() !== '';
}

/** A bench's last line: one JSON object. */
/**
 * Both ztunnels' GCs so far (major and minor counts, seconds), from their /metrics (prom-client's
 * nodejs_gc_duration_seconds, by kind). Scrape it outside a CPU-measured stretch.
 */
export async function ztunnelGc(nodes) {
  const gc = { major: 0, minor: 0, seconds: 0 };
  for (const node of nodes) {
    const r = await node.exec('curl', ['-s', '--max-time', '5', 'http://127.0.0.1:15020/metrics'], { check: false });
    for (const m of r.stdout.matchAll(/^nodejs_gc_duration_seconds_(count|sum)\{kind="(\w+)"\} (\S+)$/gm)) {
      const v = Number(m[3]);
      if (m[1] === 'sum') gc.seconds += v;
      else if (m[2] === 'major') gc.major += v;
      else if (m[2] === 'minor') gc.minor += v;
    }
  }
  return gc;
}

export function printJson(obj) {
  console.log(JSON.stringify(obj));
}

/**
 * A mesh bench's main: checks root and `tools`, creates the mesh (createMesh's options), runs
 * `bench(mesh)` (which prints its table and goal lines and returns its figures) and prints what it
 * returns as the last line, one JSON object. The mesh is torn down whatever happens (every process
 * stopped, every netns deleted), also on SIGINT/SIGTERM (exit 130); exit 0, or 1 after printing the
 * error. With BENCH_CPU_PROF the ztunnels are stopped before the JSON line so that their profiles are
 * written and summarized above it.
 */
export async function runMeshBench({ tools, ...options }, bench) {
  requireRootAndTools([...tools, ...(process.env.BENCH_PERF ? ['perf'] : [])]);
  let mesh;
  let code = 0;
  try {
    mesh = await createMesh(options);
    const result = await bench(mesh);
    // Each ztunnel's peak resident set over the whole bench (VmHWM), e.g. to compare V8 flags under bulk data.
    const peak = mesh.ztunnels.map((z) => [z.name, peakRssKiB(z.pid)]);
    console.log(`ztunnels' peak RSS (VmHWM, whole bench): ${peak.map(([n, k]) => `${n} ${(k / 1024).toFixed(1)} MiB`).join(', ')}`);
    result.ztunnel_peak_rss_mib = Object.fromEntries(peak.map(([n, k]) => [n, round(k / 1024, 1)]));
    if (cpuProfDir() !== undefined) {
      await Promise.all(mesh.ztunnels.map((z) => z.stop('SIGTERM', 10_000)));
      printCpuProfiles();
    }
    printJson(result);
  } catch (err) {
    if (!mesh?.interrupted) console.error(err);
    code = 1;
  } finally {
    await mesh?.destroy().catch((err) => {
      console.error(`mesh teardown failed: ${err.message}`);
      code = 1;
    });
  }
  process.exit(code);
}
