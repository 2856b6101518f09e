/**
 * `weirctl doctor`: is one pod really in the mesh? Four checks, each with the fix for its failure:
 * its in-pod rules equal the desired set, ztunnel owns its listeners, ztunnel has its proxy Up, and a
 * probe connection from the pod is counted by ztunnel.
 */
import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { inpodCapture, podHasIpv6, type CaptureConfig } from '@weir/cni-agent/capture-rules';
import { netnsExecutor, RuleApplier, type RuleChange } from '@weir/iptables-builder';
import { httpGet, runIn, ztunnelDump, type ZtunnelDump } from '../in-netns.js';

/** The pod ports ztunnel listens on: outbound, inbound plaintext, inbound HBONE. */
export const POD_LISTENER_PORTS = [15001, 15006, 15008] as const;

export interface DoctorTarget {
  /** How the pod is named in the output (`demo/sleep`, or the netns path). */
  label: string;
  podNetns: string;
  /** The netns where ztunnel's admin and metrics listen; undefined: this process's. */
  ztunnelNetns: string | undefined;
  ztunnelAdmin: string;
  ztunnelMetrics: string;
  /** The node agent's capture options (its `/debug/config`, else flags and its defaults): the desired rule set. */
  capture: CaptureConfig;
  /** Whether `capture` came from the agent; when not, the rules check says to pass the agent's options. */
  captureFromAgent: boolean;
  /** Where the probe connects from the pod (a closed port is fine: 15001 accepts first). */
  probe: { host: string; port: number };
  /** How to reach the logs and restart things here (sandbox commands, or generic words on a node). */
  hints: { agentLog: string; ztunnelLog: string; restartZtunnel: string; restartAgent: string; enroll: string };
}

export interface CheckResult {
  name: 'rules' | 'listeners' | 'ztunnel' | 'probe';
  ok: boolean;
  detail: string;
  /** What to do about a failure. */
  fix?: string;
}

export async function runDoctor(t: DoctorTarget): Promise<CheckResult[]> {
  const dump = await ztunnelDump(t.ztunnelNetns, t.ztunnelAdmin);
  const ino = (await stat(t.podNetns)).ino;
  const entry = dump.ok ? dump.dump.pods.find((p) => p.netns.ino === ino) : undefined;
  return [await checkRules(t), await checkListeners(t), checkZtunnel(t, dump, entry), await checkProbe(t, dump.ok, entry?.name)];
}

async function checkRules(t: DoctorTarget): Promise<CheckResult> {
  const c = t.capture;
  const exec = netnsExecutor(t.podNetns);
  let changes: readonly RuleChange[];
  let what: string;
  let chains: string[];
  try {
    // The agent's own rule: IPv6 captured or guarded by what the pod's netns has (ipv6 auto/false).
    const has6 = c.ipv6 === true || (await podHasIpv6(exec));
    const family = has6 ? (c.ipv6 === false ? 'ipv4 + IPv6 guard' : 'ipv4+ipv6') : 'ipv4';
    what = `${c.mode}, ${family}, DNS capture ${c.dnsCapture ? 'on' : 'off'}`;
    const { rules } = inpodCapture(c, { dnsCapture: c.dnsCapture, podHasIpv6: has6 });
    changes = (await new RuleApplier({ executor: exec, backend: c.backend }).diff(rules)).changes;
    chains = rules.families.flatMap((f) => f.tables.flatMap((tb) => tb.chains.filter((ch) => ch.name.startsWith('ISTIO_')).map((ch) => `${f.family} ${tb.name} ${ch.name}`)));
  } catch (err) {
    return { name: 'rules', ok: false, detail: `cannot read the rules in ${t.podNetns}: ${(err as Error).message}`, fix: 'run as root, with iptables-save (or nft) installed' };
  }
  if (changes.length === 0) return { name: 'rules', ok: true, detail: `in-pod rules equal the desired set (${what})` };
  // Not captured: none of Weir's chains is there (a pod missing only some, e.g. the DNS ones, is captured differently).
  const missing = new Set(changes.filter((ch) => ch.kind === 'missing-chain').map((ch) => `${ch.family} ${ch.table} ${ch.chain}`));
  const notCaptured = chains.length > 0 && chains.every((ch) => missing.has(ch));
  const shown = changes.slice(0, 6).map(formatChange);
  const more = changes.length > shown.length ? `; and ${changes.length - shown.length} more` : '';
  if (notCaptured) {
    return {
      name: 'rules',
      ok: false,
      detail: `the pod has none of Weir's chains: it is not captured (${changes.length} differences from ${what})`,
      fix: `enroll it (${t.hints.enroll}); if it is enrolled, the agent failed it: ${t.hints.agentLog}`,
    };
  }
  return {
    name: 'rules',
    ok: false,
    detail: `${changes.length} difference(s) from the desired set (${what}): ${shown.join('; ')}${more}`,
    fix: t.captureFromAgent
      ? `weir-cni-agent puts drifted rules back on its drift check (--drift-interval, default 30 s) and when it restarts; if they stay wrong, its log says why: ${t.hints.agentLog}. A pod annotated ambient.istio.io/dns-capture: "false" has no DNS rules: check it with --no-dns-capture`
      : // Nothing repairs drift while the agent is down, and its options were guessed: both say so.
        `weir-cni-agent did not answer, so nothing repairs drifted rules: start it (${t.hints.restartAgent}; ${t.hints.agentLog}); it reconciles every pod's rules when it starts. If it runs elsewhere or with other options, pass its address (--agent-url) or them (--mode, --[no-]dns-capture, --[no-]ipv6, --probe-snat-ip, --iptables-backend)`,
  };
}

function formatChange(c: RuleChange): string {
  const where = `${c.family === 'ipv6' ? 'ip6' : 'ip'}tables ${c.table}`;
  switch (c.kind) {
    case 'missing-rule':
      return `missing in ${where}: -A ${c.chain} ${c.rule}`;
    case 'extra-rule':
      return `unexpected in ${where}: -A ${c.chain} ${c.rule}`;
    case 'missing-chain':
      return `missing chain ${c.chain} (${where})`;
    case 'extra-chain':
      return `unexpected chain ${c.chain} (${where})`;
    case 'misordered':
      return `chain ${c.chain} (${where}) out of order`;
  }
}

/** `ss -ntlpH` lines as port and owner pids. */
function listeners(ssOutput: string): Array<{ port: number; address: string; pids: number[]; users: string }> {
  return ssOutput
    .split('\n')
    .map((line) => /^\S+\s+\d+\s+\d+\s+(\S+):(\d+)\s+\S+\s*(.*)$/.exec(line.trim()))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ address: m[1] as string, port: Number(m[2]), users: m[3] ?? '', pids: [...(m[3] ?? '').matchAll(/pid=(\d+)/g)].map((p) => Number(p[1])) }));
}

/** ztunnel's pid: the owner of its admin listener. */
async function ztunnelPid(t: DoctorTarget): Promise<number | undefined> {
  const port = Number(t.ztunnelAdmin.slice(t.ztunnelAdmin.lastIndexOf(':') + 1));
  const r = await runIn(t.ztunnelNetns, 'ss', ['-ntlpH']);
  return listeners(r.stdout).find((l) => l.port === port)?.pids[0];
}

async function checkListeners(t: DoctorTarget): Promise<CheckResult> {
  const r = await runIn(t.podNetns, 'ss', ['-ntlpH']);
  if (r.code !== 0) return { name: 'listeners', ok: false, detail: `ss -ntlp in ${t.podNetns} failed: ${r.stderr.trim()}`, fix: 'run as root, with ss (iproute2) installed' };
  const pid = await ztunnelPid(t);
  const found = listeners(r.stdout);
  const problems: string[] = [];
  const fixes = new Set<string>();
  for (const port of POD_LISTENER_PORTS) {
    const l = found.find((x) => x.port === port);
    if (!l) {
      problems.push(`nothing listens on ${port}`);
      fixes.add(pid === undefined ? `ztunnel is not running (nothing listens on its admin ${t.ztunnelAdmin}): ${t.hints.restartZtunnel}` : `ztunnel has no proxy in this pod: see the ztunnel check and ${t.hints.ztunnelLog}`);
    } else if (pid === undefined) {
      problems.push(`${port} is held by ${l.users || 'an unknown process'}, and ztunnel's pid is unknown (nothing listens on its admin ${t.ztunnelAdmin})`);
      fixes.add(`start ztunnel: ${t.hints.restartZtunnel}`);
    } else if (!l.pids.includes(pid)) {
      problems.push(`${port} is held by ${l.users || 'an unknown process'}, not ztunnel (pid ${pid})`);
      fixes.add(`stop the process holding ${port} in the pod; ztunnel must own the pod's ports`);
    }
  }
  if (problems.length === 0) return { name: 'listeners', ok: true, detail: `${POD_LISTENER_PORTS.join(', ')} listen in the pod, owned by ztunnel (pid ${pid})` };
  return { name: 'listeners', ok: false, detail: problems.join('; '), fix: [...fixes].join('; ') };
}

function checkZtunnel(t: DoctorTarget, dump: { ok: true; dump: ZtunnelDump } | { ok: false; error: string }, entry: ZtunnelDump['pods'][number] | undefined): CheckResult {
  if (!dump.ok) return { name: 'ztunnel', ok: false, detail: `ztunnel's admin does not answer: ${dump.error}`, fix: `start ztunnel: ${t.hints.restartZtunnel}; ${t.hints.ztunnelLog}` };
  if (!entry) {
    return {
      name: 'ztunnel',
      ok: false,
      detail: `ztunnel has no proxy for this pod's netns (it has ${dump.dump.pods.length} pod(s))`,
      fix: `the node agent has not handed the pod to ztunnel: is it enrolled (${t.hints.enroll})? ${t.hints.agentLog}`,
    };
  }
  const name = entry.namespace !== undefined ? `${entry.namespace}/${entry.name ?? '?'}` : entry.uid;
  if (entry.state !== 'Up') {
    return { name: 'ztunnel', ok: false, detail: `ztunnel has pod ${name} in state ${entry.state}${entry.lastError ? `: ${entry.lastError}` : ''}`, fix: `ztunnel retries; its log says why it cannot start the proxy: ${t.hints.ztunnelLog}` };
  }
  return { name: 'ztunnel', ok: true, detail: `ztunnel has pod ${name} (uid ${entry.uid}) Up` };
}

/** Sum of ztunnel's outbound opened-connection counters for this workload (all when the name is unknown). */
async function outboundOpened(t: DoctorTarget, workload: string | undefined): Promise<number | undefined> {
  const r = await httpGet(t.ztunnelNetns, t.ztunnelMetrics, '/metrics');
  if (!r.ok) return undefined;
  let sum = 0;
  for (const line of r.body.split('\n')) {
    if (!line.startsWith('istio_tcp_connections_opened_total{') || !line.includes('reporter="source"')) continue;
    if (workload !== undefined && !line.includes(`source_workload="${workload}"`)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1)) || 0;
  }
  return sum;
}

async function checkProbe(t: DoctorTarget, ztunnelUp: boolean, workload: string | undefined): Promise<CheckResult> {
  const dst = `${t.probe.host.includes(':') ? `[${t.probe.host}]` : t.probe.host}:${t.probe.port}`;
  const before = await outboundOpened(t, workload);
  // bash's /dev/tcp: a connect and nothing else, from inside the pod, with the pod's rules.
  const r = await runIn(t.podNetns, 'timeout', ['5', 'bash', '-c', `exec 3<>/dev/tcp/${t.probe.host}/${t.probe.port}`]).catch((err: unknown) => ({ code: 1, stdout: '', stderr: (err as Error).message }));
  const connected = r.code === 0;
  const why = connected ? 'accepted' : r.code === 124 ? 'timed out' : `failed (${r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`})`;
  if (before === undefined) {
    return {
      name: 'probe',
      ok: false,
      detail: `connection from the pod to ${dst} ${why}; ztunnel's metrics ${t.ztunnelMetrics} do not answer, so it cannot be told whether it went through ztunnel`,
      fix: ztunnelUp ? `make ztunnel's metrics reachable (--ztunnel-metrics ADDR)` : `start ztunnel: ${t.hints.restartZtunnel}`,
    };
  }
  let after = before;
  for (let i = 0; i < 15 && after <= before; i++) {
    await sleep(200);
    after = (await outboundOpened(t, workload)) ?? after;
  }
  const counter = `istio_tcp_connections_opened_total{reporter="source"${workload !== undefined ? `,source_workload="${workload}"` : ''}} ${before} -> ${after}`;
  if (after > before) return { name: 'probe', ok: true, detail: `connection from the pod to ${dst} ${why} by ztunnel's 15001 and counted: ${counter}` };
  return {
    name: 'probe',
    ok: false,
    detail: `connection from the pod to ${dst} ${why}, and ztunnel did not count it (${counter}): the pod's traffic bypasses ztunnel`,
    fix: `outbound capture (ISTIO_OUTPUT -> 15001) is not in effect: fix the rules and listeners checks above`,
  };
}

/** Lines for the terminal: PASS/FAIL per check, then its fix. */
export function formatResults(label: string, results: readonly CheckResult[], notes: readonly string[] = []): string {
  const lines = [`weirctl doctor ${label}`, ...notes];
  for (const r of results) {
    lines.push(`${r.ok ? 'PASS' : 'FAIL'}  ${r.name.padEnd(9)}  ${r.detail}`);
    if (!r.ok && r.fix !== undefined) lines.push(`      fix: ${r.fix}`);
  }
  const failed = results.filter((r) => !r.ok).length;
  lines.push(failed === 0 ? 'all checks passed' : `${failed} of ${results.length} checks failed`);
  return `${lines.join('\n')}\n`;
}
