/* global process, console */
// weir-cni benchmark: exec-to-exit time of the single executable as a runtime runs it (env + stdin),
// against baselines measured in the same run: Node's own start-up (`node -e 0`) and Debian's Go
// `tuning` plugin chained the same way (pass-through of prevResult). The plugin asks the node agent
// first (here a unix-socket server answering as the agent does); only with the agent down does it look
// the pod up in the API (HTTPS, fake API server). Goals: ADD for a pod outside the mesh ≤ 100 ms,
// enrolled ≤ 150 ms. Needs root (netns).
// Prints a table, then one JSON line. `CNI_BENCH_RUNS` sets iterations (default 30).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const BIN = join(root, 'apps/cni-plugin/dist/weir-cni');
const BUNDLE = join(root, 'apps/cni-plugin/dist/weir-cni.cjs');
const RUNS = Number(process.env.CNI_BENCH_RUNS ?? 30);

if (process.getuid() !== 0) {
  console.error('cni-plugin bench needs root (it creates a network namespace)');
  process.exit(1);
}
if (!existsSync(BIN)) {
  console.error(`build first: npm run build -w @weir/app-cni-plugin (${BIN} missing)`);
  process.exit(1);
}
let fake;
try {
  fake = await import('@weir/fake-apiserver');
} catch (err) {
  console.error(`build first: npm run build -w @weir/fake-apiserver (${err.message})`);
  process.exit(1);
}

const dir = mkdtempSync(join(tmpdir(), 'weir-bench-cni-'));
const netnsName = `wbench${process.pid % 100000}`;
let api;
let agent;
const cleanup = () => {
  spawnSync('ip', ['netns', 'del', netnsName]);
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const ns = spawnSync('ip', ['netns', 'add', netnsName]);
if (ns.status !== 0) {
  console.error(`ip netns add failed: ${ns.stderr}`);
  process.exit(1);
}
const netns = `/var/run/netns/${netnsName}`;

// HTTPS with CA verification and a bearer token, as on a real node.
const pki = await fake.createTestPki();
api = await fake.FakeApiServer.start({ tls: { cert: pki.serverCert, key: pki.serverKey, ca: pki.ca }, token: 'bench' });
await api.kubeconfig(join(dir, 'istio-cni-kubeconfig'));
api.setNamespaceLabels('plain', {});
api.setNamespaceLabels('mesh', { 'istio.io/dataplane-mode': 'ambient' });
api.createPod({ metadata: { name: 'web-0', namespace: 'plain' } });
api.createPod({ metadata: { name: 'web-0', namespace: 'mesh' } });
api.createPod({ metadata: { name: 'web-0', namespace: 'kube-system' } });
// Answers as the node agent does: it decides enrollment from its own pod cache (here: the namespace).
agent = createServer((req, res) => {
  let body = '';
  req.on('data', (b) => (body += b));
  req.on('end', () => res.end(JSON.parse(body).PodNamespace === 'mesh' ? 'pod captured\n' : 'pod not enrolled\n'));
});
await new Promise((r) => agent.listen(join(dir, 'pluginevent.sock'), r));
// A run dir with the plugin's kubeconfig but no agent socket: the agent-down fallback (API lookup).
const downDir = join(dir, 'agent-down');
mkdirSync(downDir);
await api.kubeconfig(join(downDir, 'istio-cni-kubeconfig'));

const prevResult = {
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cni0', mac: '0a:58:0a:f4:01:01' },
    { name: 'veth1234', mac: '0a:58:0a:f4:01:02' },
    { name: 'eth0', mac: '0a:58:0a:f4:01:05', sandbox: netns },
  ],
  ips: [{ interface: 2, address: '10.244.1.5/24', gateway: '10.244.1.1' }],
  routes: [{ dst: '0.0.0.0/0', gw: '10.244.1.1' }],
  dns: {},
};
const conf = (type, runDir = dir) =>
  JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type, cni_agent_run_dir: runDir, exclude_namespaces: ['kube-system'], prevResult });
const env = (command, namespace) => ({
  PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
  CNI_COMMAND: command,
  CNI_CONTAINERID: 'bench',
  CNI_NETNS: netns,
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/usr/lib/cni',
  CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=bench`,
});

function execOnce(cmd, args, environment, stdin) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const p = spawn(cmd, args, { env: environment, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (b) => (out += b));
    p.stderr.resume();
    p.on('error', reject);
    p.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (code !== 0) reject(new Error(`${cmd} exited ${code}: ${out}`));
      else resolve(ms);
    });
    p.stdin.end(stdin);
  });
}

async function measure(label, cmd, args, environment, stdin) {
  await execOnce(cmd, args, environment, stdin); // warm the page cache
  const times = [];
  for (let i = 0; i < RUNS; i++) times.push(await execOnce(cmd, args, environment, stdin));
  times.sort((a, b) => a - b);
  const pick = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
  return { label, median: pick(0.5), p90: pick(0.9), min: times[0] };
}

const rows = [];
rows.push(await measure('node -e 0 (Node start-up floor)', process.execPath, ['-e', '0'], { PATH: process.env.PATH }, ''));
rows.push(await measure('Go tuning plugin ADD, pass-through', '/usr/lib/cni/tuning', [], env('ADD', 'plain'), conf('tuning')));
rows.push(await measure('weir-cni VERSION', BIN, [], env('VERSION', 'plain'), '{"cniVersion":"1.0.0"}'));
rows.push(await measure('weir-cni ADD, excluded namespace (no calls)', BIN, [], env('ADD', 'kube-system'), conf('weir-cni')));
rows.push(await measure('weir-cni ADD, pod outside the mesh (agent: not enrolled)', BIN, [], env('ADD', 'plain'), conf('weir-cni')));
rows.push(await measure('weir-cni ADD, enrolled pod (agent: captured)', BIN, [], env('ADD', 'mesh'), conf('weir-cni')));
rows.push(await measure('weir-cni ADD, outside the mesh, agent down (HTTPS API lookup)', BIN, [], env('ADD', 'plain'), conf('weir-cni', downDir)));
await api.close();
agent.close();

const floor = rows[0].median;
const goTuning = rows[1].median;
const goals = { 'weir-cni ADD, pod outside the mesh (agent: not enrolled)': 100, 'weir-cni ADD, enrolled pod (agent: captured)': 150 };
const load = (await import('node:os')).loadavg()[0];
console.log(`weir-cni: binary ${(statSync(BIN).size / 1048576).toFixed(1)} MiB, bundle ${(statSync(BUNDLE).size / 1024).toFixed(0)} KiB; ${RUNS} runs each; load average ${load.toFixed(2)}`);
console.log(`${'case'.padEnd(62)} ${'median ms'.padStart(10)} ${'p90 ms'.padStart(8)} ${'×node'.padStart(7)} ${'×Go'.padStart(6)}  goal`);
for (const r of rows) {
  const goal = goals[r.label];
  const verdict = goal === undefined ? '' : `${r.median <= goal ? 'met' : 'MISSED'} (≤ ${goal} ms)`;
  console.log(
    `${r.label.padEnd(62)} ${r.median.toFixed(1).padStart(10)} ${r.p90.toFixed(1).padStart(8)} ${(r.median / floor).toFixed(2).padStart(7)} ${(r.median / goTuning).toFixed(2).padStart(6)}  ${verdict}`,
  );
}
console.log(
  JSON.stringify({
    bench: 'cni-plugin',
    binaryBytes: statSync(BIN).size,
    bundleBytes: statSync(BUNDLE).size,
    runs: RUNS,
    loadAverage: load,
    results: rows.map((r) => ({ ...r, ratioToNode: r.median / floor, ratioToGoTuning: r.median / goTuning })),
  }),
);
