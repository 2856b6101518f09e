import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { assertPrerequisites } from '@weir/topology';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { doctorCommand } from '../src/commands/doctor.js';
import { createSandboxCommand } from '../src/commands/sandbox.js';
import type { Command } from '../src/command.js';

// One real sandbox (2 nodes, the repo's built agent, ztunnel and plugin) for the whole file: label,
// policy and doctor change it live. Run as root.
const name = `wlv${randomBytes(2).toString('hex')}-${process.pid}`;
const dir = join(tmpdir(), `${name}-state`);
const where = ['--state-dir', dir, '--name', name];
const sandboxCommand = createSandboxCommand({ execStdio: 'io' });
/** Policy files of the tests (not in the state dir: down removes only what the sandbox wrote). */
const files = join(tmpdir(), `${name}-files`);

async function call(command: Command, argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await command.run(argv, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}
const sandbox = (...argv: string[]) => call(sandboxCommand, [...argv, ...where]);
const doctor = (...argv: string[]) => call(doctorCommand, [...argv, ...where]);

async function exec(pod: string, ...cmd: string[]): Promise<string> {
  const r = await call(sandboxCommand, ['exec', pod, ...where, '--', ...cmd]);
  if (r.code !== 0) throw new Error(`${cmd.join(' ')} in ${pod} exited ${r.code}: ${r.err}`);
  return r.out;
}

let httpbinIp = '';

/** sleep -> httpbin:8000: the HTTP status (000: the connection failed), and whether node-1's ztunnel logged it as HBONE. */
async function httpThroughZtunnel(path: string): Promise<{ status: string; viaZtunnel: boolean }> {
  const logged = async (): Promise<boolean> => {
    const lines = (await sandbox('logs', 'node-1', 'ztunnel')).out.split('\n');
    const fresh = lines.filter((l) => l.includes(`dst.addr=${httpbinIp}:8000 dst.hbone_addr=`) && !seen.has(l));
    for (const l of fresh) seen.add(l);
    return fresh.length > 0;
  };
  await logged();
  const r = await call(sandboxCommand, ['exec', 'sleep', ...where, '--', 'curl', '-s', '-m', '5', '-o', '/dev/null', '-w', '%{http_code}', `http://${httpbinIp}:8000${path}`]);
  // The access log line is written when the connection ends, just after curl returns; 5 s for a
  // loaded machine (2 s was not always enough for ztunnel's log to reach \`sandbox logs\`).
  let viaZtunnel = false;
  for (let i = 0; i < 25 && !viaZtunnel; i++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    viaZtunnel = await logged();
  }
  return { status: r.out, viaZtunnel };
}
const seen = new Set<string>();
const weirctlBin = fileURLToPath(new URL('../dist/main.js', import.meta.url));
/** The iptables backend node-1's agent detected (its /debug/config). */
let backend = '';

async function captured(pod: string): Promise<boolean> {
  return /ISTIO_/.test(await exec(pod, 'iptables-save'));
}

beforeAll(async () => {
  await assertPrerequisites();
  await mkdir(files, { recursive: true });
  const up = await sandbox('up');
  if (up.code !== 0) throw new Error(`sandbox up failed: ${up.err}`);
  httpbinIp = /http:\/\/([\d.]+):8000/.exec(up.out)?.[1] ?? '';
  expect(httpbinIp).not.toBe('');
  const config = await call(sandboxCommand, ['exec', 'node-1', ...where, '--', 'curl', '-sf', 'http://127.0.0.1:8000/debug/config']);
  backend = (JSON.parse(config.out) as { capture: { backend: string } }).capture.backend;
}, 300_000);

afterAll(async () => {
  await rm(files, { recursive: true, force: true });
  await call(sandboxCommand, ['down', ...where]);
}, 120_000);

describe('weirctl sandbox label', () => {
  it('un-labelling namespace demo releases its pods (rules gone, traffic direct); labelling it again captures them', { timeout: 180_000 }, async () => {
    const off = await sandbox('label', 'ns/demo', 'istio.io/dataplane-mode-');
    expect(off.err).toBe('');
    expect(off.code).toBe(0);
    expect(off.out).toContain('namespace demo: istio.io/dataplane-mode ambient -> (unset)');
    expect(off.out).toMatch(/demo\/sleep: released \(in-pod rules removed, ztunnel on node-1 dropped it\)/);
    expect(off.out).toMatch(/demo\/httpbin: released/);
    expect(await captured('sleep')).toBe(false);
    expect(await captured('httpbin')).toBe(false);
    expect(await exec('sleep', 'ss', '-ntl')).not.toMatch(/:15001\s/);
    const status = JSON.parse((await sandbox('status', '--json')).out) as { pods: Array<{ name: string; enrolled: boolean; captured: boolean }> };
    expect(status.pods.map((p) => [p.name, p.enrolled, p.captured])).toEqual([
      ['sleep', false, false],
      ['httpbin', false, false],
      ['legacy-client', false, false],
    ]);
    const direct = await httpThroughZtunnel('/direct');
    expect(direct).toEqual({ status: '200', viaZtunnel: false });

    const on = await sandbox('label', 'ns/demo', 'istio.io/dataplane-mode=ambient');
    expect(on.code).toBe(0);
    expect(on.out).toMatch(/demo\/sleep: captured \(in-pod rules in place, ztunnel on node-1 has its proxy Up\)/);
    expect(on.out).toMatch(/demo\/httpbin: captured/);
    // Back exactly: doctor diffs the rules against the desired set.
    expect((await doctor('sleep')).out).toMatch(/^PASS {2}rules/m);
    expect(await httpThroughZtunnel('/meshed')).toEqual({ status: '200', viaZtunnel: true });
  });

  it('a pod label none opts one pod out (its peer stays captured); removing it enrolls the pod again', { timeout: 120_000 }, async () => {
    const none = await sandbox('label', 'pod/sleep', '-n', 'demo', 'istio.io/dataplane-mode=none');
    expect(none.code).toBe(0);
    expect(none.out).toContain('pod demo/sleep: istio.io/dataplane-mode (unset) -> none');
    expect(none.out).toMatch(/demo\/sleep: released/);
    expect(none.out).not.toContain('httpbin');
    expect(await captured('sleep')).toBe(false);
    expect(await captured('httpbin')).toBe(true);

    const back = await sandbox('label', 'pod/demo/sleep', 'istio.io/dataplane-mode-');
    expect(back.code).toBe(0);
    expect(back.out).toMatch(/demo\/sleep: captured/);
    expect(await captured('sleep')).toBe(true);

    const same = await sandbox('label', 'ns/demo', 'istio.io/dataplane-mode=ambient');
    expect(same.out).toContain('already ambient, unchanged');
  });

  it('names what is wrong with a target or a label', async () => {
    expect(await sandbox('label', 'ns/nope', 'a=b')).toMatchObject({ code: 1, err: expect.stringContaining('no namespace nope (namespaces: demo, legacy)') });
    expect(await sandbox('label', 'pod/ghost', 'a=b')).toMatchObject({ code: 1, err: expect.stringContaining('no pod */ghost') });
    expect(await sandbox('label', 'deploy/x', 'a=b')).toMatchObject({ code: 1, err: expect.stringContaining("cannot label 'deploy/x'") });
    expect(await sandbox('label', 'ns/demo', 'bad key=1')).toMatchObject({ code: 1, err: expect.stringContaining("label key 'bad key'") });
    await expect(sandbox('label', 'ns/demo')).rejects.toThrow('label needs a target and at least one KEY=VALUE or KEY-');
  });
});

describe('weirctl sandbox pod add', () => {
  it('adds an enrolled pod on a chosen node, captured and reachable through ztunnel', { timeout: 120_000 }, async () => {
    const add = await sandbox('pod', 'add', 'echo2', '--node', 'node-1', '--http-echo', '9000', '--label', 'app=echo2');
    expect(add.err).toBe('');
    expect(add.code).toBe(0);
    const ip = /pod demo\/echo2 on node-1: ([\d.]+) \(enrolled: ambient\), HTTP echo on :9000/.exec(add.out)?.[1];
    expect(ip, add.out).toBeDefined();
    expect(add.out).toMatch(/demo\/echo2: captured \(in-pod rules in place, ztunnel on node-1 has its proxy Up\)/);
    expect(await exec('sleep', 'curl', '-s', '-m', '5', '-o', '/dev/null', '-w', '%{http_code}', `http://${ip}:9000/same-node`)).toBe('200');
    const doc = await doctor('echo2');
    expect(doc.code, doc.out).toBe(0);
    expect((await sandbox('pod', 'add', 'echo2')).err).toContain('pod demo/echo2 exists already');
    expect((await sandbox('pod', 'add', 'x', '--node', 'node-9')).err).toContain('no node node-9');
  });
});

describe('weirctl sandbox policy', () => {
  it('apply with a DENY blocks sleep -> httpbin, delete restores it; list shows what is held', { timeout: 120_000 }, async () => {
    const file = join(files, 'deny.yaml');
    await writeFile(file, 'policies:\n  - name: deny-httpbin\n    namespace: demo\n    action: Deny\n    rules:\n      - - - destinationPorts: [8000]\n');
    expect(await httpThroughZtunnel('/before-deny')).toMatchObject({ status: '200' });

    const apply = await sandbox('policy', 'apply', file);
    expect(apply.err).toBe('');
    expect(apply.code).toBe(0);
    expect(apply.out).toContain('policy demo/deny-httpbin: created (Deny Namespace)');
    expect(apply.out).toMatch(/seen in \/config_dump of ztunnel on node-1, node-2 after/);
    expect((await httpThroughZtunnel('/denied')).status).toBe('000');
    expect((await sandbox('policy', 'list')).out).toMatch(/demo\s+deny-httpbin\s+Deny\s+Namespace/);
    expect((await sandbox('policy', 'apply', file)).out).toContain('policy demo/deny-httpbin: unchanged');

    const del = await sandbox('policy', 'delete', 'deny-httpbin');
    expect(del.code).toBe(0);
    expect(del.out).toContain('policy demo/deny-httpbin: deleted');
    expect((await httpThroughZtunnel('/allowed-again')).status).toBe('200');
    expect((await sandbox('policy', 'list')).out).toBe('no policies\n');
  });

  it('refuses a file that does not fit ztunnel’s policy schema, naming the field', async () => {
    const file = join(files, 'bad.yaml');
    await writeFile(file, 'name: x\naction: Maybe\n');
    const bad = await sandbox('policy', 'apply', file);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain(`${file}: policies[0].action: Invalid option`);
    await writeFile(file, 'workloads: []\npolicies: []\n');
    expect((await sandbox('policy', 'apply', file)).err).toContain('holds workloads; policy apply takes policies only');
    expect((await sandbox('policy', 'delete', 'nope')).err).toContain('no policy nope');
  });
});

describe('weirctl doctor', () => {
  it("passes on a healthy pod with the agent's own capture options, in the sandbox and with --netns on a node", { timeout: 60_000 }, async () => {
    const ok = await doctor('sleep');
    expect(ok.code, ok.out).toBe(0);
    expect(ok.out.split('\n').filter((l) => l.startsWith('PASS')).length).toBe(4);
    // Read from node-1's agent (the sandbox runs it with DNS_CAPTURE=false): no --no-dns-capture needed.
    expect(ok.out.split('\n')[1]).toBe(
      `capture options of weir-cni-agent (http://127.0.0.1:8000/debug/config in /var/run/netns/${name}-node-1): mode tproxy, DNS capture off, IPv6 auto, probe SNAT 169.254.7.127 and fd16:9254:7127:1337:ffff:ffff:ffff:ffff, iptables backend ${backend}`,
    );
    expect(ok.out).toMatch(/PASS {2}rules {6}in-pod rules equal the desired set \(tproxy, ipv4\+ipv6, DNS capture off\)/);
    expect(ok.out).toMatch(/PASS {2}probe {6}connection from the pod to [\d.]+:1 accepted by ztunnel's 15001 and counted/);

    // On a node: the weirctl binary in node-2's netns (where its agent and ztunnel listen), the pod by its netns path.
    const status = JSON.parse((await sandbox('status', '--json')).out) as { nodes: Array<{ name: string; netns: string }>; pods: Array<{ name: string; netns: string }> };
    const podNetns = status.pods.find((p) => p.name === 'httpbin')?.netns as string;
    const nodeNetns = status.nodes.find((n) => n.name === 'node-2')?.netns as string;
    const node = await promisify(execFile)('nsenter', [`--net=${nodeNetns}`, process.execPath, weirctlBin, 'doctor', '--netns', podNetns]).catch((err: unknown) => err as { code: number; stdout: string; stderr: string });
    expect(node.stdout, node.stderr).toContain(`weirctl doctor ${podNetns}\ncapture options of weir-cni-agent (http://127.0.0.1:8000/debug/config): mode tproxy, DNS capture off`);
    expect('code' in node ? node.code : 0, node.stdout).toBe(0);
  });

  it('without an agent to ask, says so and checks against its defaults; explicit flags override the agent', { timeout: 60_000 }, async () => {
    const status = JSON.parse((await sandbox('status', '--json')).out) as { nodes: Array<{ name: string; netns: string }>; pods: Array<{ name: string; netns: string }> };
    const podNetns = status.pods.find((p) => p.name === 'httpbin')?.netns as string;
    const nodeNetns = status.nodes.find((n) => n.name === 'node-2')?.netns as string;
    // From this netns no agent answers on port 1: the agent's defaults (DNS capture on) do not match the sandbox's pods.
    const noAgent = ['--netns', podNetns, '--ztunnel-netns', nodeNetns, '--agent-url', 'http://127.0.0.1:1'];
    const fallback = await call(doctorCommand, noAgent);
    expect(fallback.code).toBe(1);
    expect(fallback.out).toMatch(/^weir-cni-agent does not answer \(GET http:\/\/127\.0\.0\.1:1\/debug\/config: .+\): using the agent's defaults: mode tproxy, DNS capture on, IPv6 auto/m);
    expect(fallback.out).toMatch(/^FAIL {2}rules {6}\d+ difference\(s\) from the desired set \(tproxy, ipv4\+ipv6, DNS capture on\): missing .*--dport 53/m);
    expect(fallback.out).toMatch(/^ {6}fix: weir-cni-agent did not answer, so nothing repairs drifted rules: start it .*pass its address \(--agent-url\) or them \(--mode, --\[no-\]dns-capture/m);
    const flagged = await call(doctorCommand, [...noAgent, '--no-dns-capture']);
    expect(flagged.out).toContain("using --[no-]dns-capture from the command line and the agent's defaults: mode tproxy, DNS capture off");
    expect(flagged.code, flagged.out).toBe(0);

    // A flag wins over what the agent says.
    const over = await doctor('sleep', '--dns-capture');
    expect(over.code).toBe(1);
    expect(over.out).toContain(`capture options of weir-cni-agent (http://127.0.0.1:8000/debug/config in /var/run/netns/${name}-node-1), --[no-]dns-capture from the command line: mode tproxy, DNS capture on`);
    expect(over.out).toMatch(/^FAIL {2}rules/m);
  });

  it('fails the rules and probe checks, with the fix, after one in-pod rule is deleted by hand', { timeout: 60_000 }, async () => {
    const rule = ['ISTIO_OUTPUT', '!', '-d', '127.0.0.1/32', '-p', 'tcp', '-m', 'mark', '!', '--mark', '0x539/0xfff', '-j', 'REDIRECT', '--to-ports', '15001'];
    try {
      // The agent's drift check (every 30 s) may put the rule back while doctor runs (before its rules check,
      // or between it and the probe): then delete it again.
      let r = { code: 0, out: '', err: '' };
      for (let attempt = 0; attempt < 3 && !/^FAIL {2}probe/m.test(r.out); attempt++) {
        await exec('sleep', 'iptables', '-t', 'nat', '-D', ...rule);
        r = await doctor('sleep');
      }
      expect(r.code, r.out).toBe(1);
      expect(r.out).toContain('FAIL  rules      1 difference(s) from the desired set (tproxy, ipv4+ipv6, DNS capture off): missing in iptables nat: -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
      expect(r.out).toMatch(/^ {6}fix: weir-cni-agent puts drifted rules back .*weirctl sandbox logs node-1 cni-agent/m);
      expect(r.out).toMatch(/^PASS {2}listeners/m);
      expect(r.out).toMatch(/^PASS {2}ztunnel/m);
      expect(r.out).toMatch(/^FAIL {2}probe .*ztunnel did not count it/m);
      expect(r.out).toContain('2 of 4 checks failed');
    } finally {
      // Put it back (unless the agent's drift check already did).
      if (!(await exec('sleep', 'iptables-save', '-t', 'nat')).includes('--to-ports 15001')) await exec('sleep', 'iptables', '-t', 'nat', '-A', ...rule);
    }
    expect((await doctor('sleep')).code).toBe(0);
  });

  it('fails the listeners, ztunnel and probe checks once ztunnel is killed; meanwhile a new pod fails closed and traffic is refused; restart brings it back', { timeout: 180_000 }, async () => {
    const status = JSON.parse((await sandbox('status', '--json')).out) as { nodes: Array<{ name: string; ztunnelPid: number }> };
    const pid = status.nodes.find((n) => n.name === 'node-1')?.ztunnelPid as number;
    process.kill(pid, 'SIGKILL');
    await expect.poll(async () => (JSON.parse((await sandbox('status', '--json')).out) as typeof status).nodes.find((n) => n.name === 'node-1')?.ztunnelPid, { timeout: 10_000 }).toBeNull();
    expect((await sandbox('status')).out).toContain('node-1: weir-ztunnel is not running: traffic of its captured pods is refused; weirctl sandbox restart node-1 ztunnel');
    const r = await doctor('sleep');
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^PASS {2}rules/m);
    expect(r.out).toContain('FAIL  listeners  nothing listens on 15001; nothing listens on 15006; nothing listens on 15008');
    expect(r.out).toMatch(/^FAIL {2}ztunnel {4}ztunnel's admin does not answer: GET http:\/\/127\.0\.0\.1:15000\/config_dump/m);
    expect(r.out).toContain(`fix: start ztunnel: weirctl sandbox restart node-1 ztunnel --state-dir ${dir} --name ${name}`);
    expect(r.out).toMatch(/^FAIL {2}probe/m);
    expect(r.out).toContain('3 of 4 checks failed');

    // The captured pod's traffic is refused, not sent around ztunnel (curl 7: connection refused by the rules' target).
    const refused = await call(sandboxCommand, ['exec', 'sleep', ...where, '--', 'curl', '-s', '-m', '5', '-o', '/dev/null', `http://${httpbinIp}:8000/get`]);
    expect(refused.code).not.toBe(0);
    // An enrolled pod created now does not start: its CNI ADD fails, and nothing of it is left.
    const whileDown = await sandbox('pod', 'add', 'while-down', '--node', 'node-1');
    expect(whileDown.code).toBe(1);
    expect(whileDown.err).toMatch(/^weirctl sandbox pod: pod demo\/while-down was not created on node-1: CNI plugin weir-cni ADD .*not started uncaptured/);
    expect((await sandbox('status', '--json')).out).not.toContain('while-down');

    const restarted = await sandbox('restart', 'node-1', 'ztunnel');
    expect(restarted.code, restarted.err).toBe(0);
    expect(restarted.out).toMatch(/^node-1: weir-ztunnel restarted \(pid \d+\) after [\d.]+ s; the node serves its enrolled pods again$/m);
    expect((await doctor('sleep')).code).toBe(0);
    expect(await httpThroughZtunnel('/get')).toEqual({ status: '200', viaZtunnel: true });
    expect((await sandbox('logs', 'node-1', 'ztunnel')).out).toMatch(/received netns, starting proxy uid=\S+ name=sleep namespace=demo/);
    // The killed ztunnel's log stays readable, as kubectl logs --previous.
    const previous = await sandbox('logs', 'node-1', 'ztunnel', '--previous');
    expect(previous.code).toBe(0);
    expect(previous.out).toMatch(/ztunnel started/);
    expect(previous.out).not.toBe((await sandbox('logs', 'node-1', 'ztunnel')).out);
    expect((await sandbox('logs', 'node-2', 'ztunnel', '-p')).err).toContain('ztunnel on node-2 has not been restarted: there is no previous log');
  });

  it('with the agent killed: existing pods keep working, a new pod fails closed, doctor judges the rules by the sandbox options; restart repairs drift', { timeout: 180_000 }, async () => {
    const status = JSON.parse((await sandbox('status', '--json')).out) as { nodes: Array<{ name: string; agentPid: number }> };
    const pid = status.nodes.find((n) => n.name === 'node-2')?.agentPid as number;
    process.kill(pid, 'SIGKILL');
    await expect.poll(async () => (JSON.parse((await sandbox('status', '--json')).out) as typeof status).nodes.find((n) => n.name === 'node-2')?.agentPid, { timeout: 10_000 }).toBeNull();
    expect((await sandbox('status')).out).toContain('node-2: weir-cni-agent is not running: new pods on node-2 fail their CNI ADD');
    const agentless = await sandbox('pod', 'add', 'agentless', '--node', 'node-2');
    expect(agentless.code).toBe(1);
    expect(agentless.err).toMatch(/^weirctl sandbox pod: pod demo\/agentless was not created on node-2: CNI plugin weir-cni ADD .*fail closed/);
    expect(await httpThroughZtunnel('/get')).toEqual({ status: '200', viaZtunnel: true });

    const rule = ['ISTIO_OUTPUT', '!', '-d', '127.0.0.1/32', '-p', 'tcp', '-m', 'mark', '!', '--mark', '0x539/0xfff', '-j', 'REDIRECT', '--to-ports', '15001'];
    await exec('httpbin', 'iptables', '-t', 'nat', '-D', ...rule);
    const r = await doctor('httpbin');
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^weir-cni-agent does not answer .*: using the options the sandbox starts it with: mode tproxy, DNS capture off/m);
    expect(r.out).toContain('FAIL  rules      1 difference(s) from the desired set (tproxy, ipv4+ipv6, DNS capture off)');
    expect(r.out).toContain(`fix: weir-cni-agent did not answer, so nothing repairs drifted rules: start it (weirctl sandbox restart node-2 cni-agent --state-dir ${dir} --name ${name}`);

    const restarted = await sandbox('restart', 'node-2', 'cni-agent');
    expect(restarted.code, restarted.err).toBe(0);
    expect(restarted.out).toMatch(/^node-2: weir-cni-agent restarted \(pid \d+\)/m);
    // Its start-up reconciliation put the rule back.
    expect(await exec('httpbin', 'iptables-save', '-t', 'nat')).toContain('--to-ports 15001');
    expect((await doctor('httpbin')).code).toBe(0);
  });
});
