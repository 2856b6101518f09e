import { stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { Topology } from '@weir/topology';
import { z } from 'zod';
import { UsageError, type Command, type Io } from '../command.js';
import { flagIssueError, parseArgsError } from '../flags.js';
import type { CaptureConfig } from '@weir/cni-agent/capture-rules';
import { AGENT_DEFAULT_CAPTURE, resolveCapture, type CaptureFallback, type ResolvedCapture } from '../doctor/capture-options.js';
import { formatResults, runDoctor, type DoctorTarget } from '../doctor/doctor.js';
import { SANDBOX_AGENT_CAPTURE, ZTUNNEL_ADMIN_ADDRESS, ZTUNNEL_METRICS_ADDRESS } from '../sandbox/components.js';
import { DEFAULT_SANDBOX_DIR, DEFAULT_SANDBOX_NAME, requireState, resolveTarget, SandboxError } from '../sandbox/sandbox.js';

/** weir-cni-agent's --ready-address default, reached in the node's netns. */
const DEFAULT_AGENT_URL = 'http://127.0.0.1:8000';

const HELP = `usage: weirctl doctor POD [--state-dir DIR] [--name NAME]          (a pod of weirctl sandbox)
       weirctl doctor --netns PATH [--ztunnel-netns PATH] [--ztunnel-admin ADDR] [--ztunnel-metrics ADDR]
                      [--probe IP:PORT] [--agent-url URL]                (a pod on a node)

Checks that one pod is really in the mesh, printing PASS/FAIL per check and the fix for each failure:
  rules      the in-pod iptables rules equal the set weir-cni-agent installs (iptables-save diffed in the pod)
  listeners  15001, 15006 and 15008 listen in the pod, owned by ztunnel (ss -ntlp; ztunnel = owner of its admin port)
  ztunnel    ztunnel's /config_dump has the pod (matched by netns inode) in state Up
  probe      a TCP connection from the pod to the probe address is counted by ztunnel
             (istio_tcp_connections_opened_total{reporter="source"} moves; a closed port is fine: 15001 accepts first)
Exit status 0 only when every check passes (1 otherwise). Needs root.

Sandbox: POD is NAME or NAMESPACE/NAME; ztunnel is the one on the pod's node; the probe goes to a closed port (1)
  of another pod.
On a node: --netns is the pod's netns (e.g. /var/run/netns/cni-…, or /proc/<pid of a pod process>/ns/net);
  --ztunnel-netns is where ztunnel's admin and metrics listen (default: this netns; e.g. /proc/<ztunnel pid>/ns/net
  when ztunnel runs in a pod of its own), e.g.
    weirctl doctor --netns /var/run/netns/cni-1234 --ztunnel-netns /proc/$(pgrep -of ztunnel/dist/main.js)/ns/net
  --ztunnel-admin ADDR    default ${ZTUNNEL_ADMIN_ADDRESS}
  --ztunnel-metrics ADDR  default ${ZTUNNEL_METRICS_ADDRESS}
  --probe IP:PORT         default 192.0.2.1:9 (TEST-NET-1: nothing answers; only ztunnel's 15001 accepts)

The desired rules are built from the node agent's own capture options: GET <agent-url>/debug/config
(weir-cni-agent's --ready-address listener), in the node's netns (sandbox: the pod's node; on a node: this netns).
  --agent-url URL         default ${DEFAULT_AGENT_URL}
Only when the agent does not answer (the output says so) are its defaults used. Flags override either:
  --mode tproxy|redirect  --dns-capture|--no-dns-capture  --ipv6|--no-ipv6 (default auto: as the pod's netns)
  --probe-snat-ip IP  --probe-snat-ipv6 IP  --iptables-backend auto|legacy|nft|nftables
`;

const address = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'expected HOST:PORT, e.g. 127.0.0.1:15000');

const Flags = z.strictObject({
  'state-dir': z.string().min(1).default(DEFAULT_SANDBOX_DIR),
  name: z.string().min(1).default(DEFAULT_SANDBOX_NAME),
  netns: z.string().min(1).optional(),
  'ztunnel-netns': z.string().min(1).optional(),
  'ztunnel-admin': address.default(ZTUNNEL_ADMIN_ADDRESS),
  'ztunnel-metrics': address.default(ZTUNNEL_METRICS_ADDRESS),
  probe: z
    .string()
    .regex(/^(\[[0-9a-fA-F:]+\]|[0-9.]+):\d{1,5}$/, 'expected IP:PORT, e.g. 10.244.2.2:8000')
    .refine((s) => isIP(s.slice(0, s.lastIndexOf(':')).replace(/^\[|\]$/g, '')) !== 0, 'expected IP:PORT with an IP address, e.g. 10.244.2.2:8000')
    .optional(),
  'agent-url': z.url({ protocol: /^https?$/, error: 'expected an http:// URL, e.g. http://127.0.0.1:8000' }).default(DEFAULT_AGENT_URL),
  mode: z.enum(['tproxy', 'redirect']).optional(),
  'dns-capture': z.boolean().optional(),
  ipv6: z.boolean().optional(),
  'probe-snat-ip': z.ipv4().optional(),
  'probe-snat-ipv6': z.ipv6().optional(),
  'iptables-backend': z.enum(['auto', 'legacy', 'nft', 'nftables']).optional(),
  help: z.boolean().default(false),
});

export const doctorCommand: Command = {
  summary: 'check one pod: its rules, ztunnel listeners and proxy, and that traffic goes through ztunnel',
  async run(argv: readonly string[], io: Io): Promise<number> {
    let values: Record<string, unknown>;
    let positionals: string[];
    try {
      ({ values, positionals } = parseArgs({
        args: [...argv],
        strict: true,
        allowPositionals: true,
        allowNegative: true,
        options: {
          'state-dir': { type: 'string' },
          name: { type: 'string' },
          netns: { type: 'string' },
          'ztunnel-netns': { type: 'string' },
          'ztunnel-admin': { type: 'string' },
          'ztunnel-metrics': { type: 'string' },
          probe: { type: 'string' },
          'agent-url': { type: 'string' },
          mode: { type: 'string' },
          'dns-capture': { type: 'boolean' },
          ipv6: { type: 'boolean' },
          'probe-snat-ip': { type: 'string' },
          'probe-snat-ipv6': { type: 'string' },
          'iptables-backend': { type: 'string' },
          help: { type: 'boolean', short: 'h' },
        },
      }));
    } catch (err) {
      throw parseArgsError(err, [...Object.keys(Flags.shape), 'no-dns-capture', 'no-ipv6']);
    }
    const parsed = Flags.safeParse(values);
    if (!parsed.success) throw flagIssueError(parsed.error, values);
    const flags = parsed.data;
    if (flags.help) {
      io.out(HELP);
      return 0;
    }
    if ((positionals.length === 1) === (flags.netns !== undefined) || positionals.length > 1) {
      throw new UsageError('give one POD (sandbox) or --netns PATH (node); see weirctl doctor --help');
    }
    const overrides: Partial<CaptureConfig> = {
      ...(flags.mode !== undefined ? { mode: flags.mode } : {}),
      ...(flags['dns-capture'] !== undefined ? { dnsCapture: flags['dns-capture'] } : {}),
      ...(flags.ipv6 !== undefined ? { ipv6: flags.ipv6 } : {}),
      ...(flags['probe-snat-ip'] !== undefined ? { probeSnatIp: flags['probe-snat-ip'] } : {}),
      ...(flags['probe-snat-ipv6'] !== undefined ? { probeSnatIpv6: flags['probe-snat-ipv6'] } : {}),
      ...(flags['iptables-backend'] !== undefined ? { backend: flags['iptables-backend'] } : {}),
    };
    // The agent listens in the node's netns: the pod's node in the sandbox, this netns on a node.
    const capture = (nodeNetns: string | undefined, fallback?: CaptureFallback): Promise<ResolvedCapture> => resolveCapture(nodeNetns, flags['agent-url'], overrides, fallback);
    let target: DoctorTarget;
    let note: string;
    try {
      let resolved: ResolvedCapture;
      if (flags.netns !== undefined) {
        resolved = await capture(undefined);
        target = nodeTarget(flags.netns, flags, resolved);
      } else {
        ({ target, resolved } = await sandboxTarget(positionals[0] as string, flags, capture));
      }
      note = resolved.note;
    } catch (err) {
      if (err instanceof SandboxError) {
        io.err(`weirctl doctor: ${err.message}\n`);
        return 1;
      }
      throw err;
    }
    if (!(await stat(target.podNetns).then((st) => !st.isDirectory(), () => false))) {
      io.err(`weirctl doctor: ${target.podNetns} is not a network namespace file\n`);
      return 1;
    }
    const results = await runDoctor(target);
    io.out(formatResults(target.label, results, [note]));
    return results.every((r) => r.ok) ? 0 : 1;
  },
};

type Flags = z.output<typeof Flags>;

function splitProbe(probe: string): { host: string; port: number } {
  const i = probe.lastIndexOf(':');
  return { host: probe.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(probe.slice(i + 1)) };
}

function nodeTarget(netns: string, flags: Flags, resolved: ResolvedCapture): DoctorTarget {
  return {
    label: netns,
    podNetns: netns,
    ztunnelNetns: flags['ztunnel-netns'],
    ztunnelAdmin: flags['ztunnel-admin'],
    ztunnelMetrics: flags['ztunnel-metrics'],
    capture: resolved.capture,
    captureFromAgent: resolved.fromAgent,
    probe: splitProbe(flags.probe ?? '192.0.2.1:9'),
    hints: {
      agentLog: 'see the istio-cni / weir-cni-agent log on this node',
      ztunnelLog: "see ztunnel's log on this node",
      restartZtunnel: 'restart the ztunnel pod/process of this node',
      restartAgent: 'restart the weir-cni-agent (istio-cni) pod/process of this node',
      enroll: 'label its namespace or the pod istio.io/dataplane-mode=ambient',
    },
  };
}

async function sandboxTarget(
  ref: string,
  flags: Flags,
  capture: (nodeNetns: string, fallback: CaptureFallback) => Promise<ResolvedCapture>,
): Promise<{ target: DoctorTarget; resolved: ResolvedCapture }> {
  const where = { dir: flags['state-dir'], name: flags.name };
  const state = await requireState(where);
  const pod = await resolveTarget(where, ref);
  const spec = state.pods.find((p) => `${p.namespace}/${p.name}` === pod.label);
  if (!spec) throw new SandboxError(`${ref} is a node, not a pod; doctor checks a pod`);
  const topology = await Topology.attach(state.topologyStateDir);
  // A closed port of another pod, preferably on another node (through HBONE); ztunnel's 15001 accepts it anyway.
  const peers = topology.pods.filter((p) => `${p.namespace}/${p.name}` !== pod.label);
  const peer = peers.find((p) => p.node.name !== spec.node) ?? peers[0];
  const nodeNetns = topology.node(spec.node).netnsPath;
  // The sandbox starts every agent with known options: a stopped one is judged by those, not by the defaults.
  const resolved = await capture(nodeNetns, { capture: { ...AGENT_DEFAULT_CAPTURE, ...SANDBOX_AGENT_CAPTURE }, label: 'the options the sandbox starts it with' });
  const sandboxFlags = `${flags['state-dir'] !== DEFAULT_SANDBOX_DIR ? ` --state-dir ${flags['state-dir']}` : ''}${flags.name !== DEFAULT_SANDBOX_NAME ? ` --name ${flags.name}` : ''}`;
  const target: DoctorTarget = {
    label: pod.label,
    podNetns: pod.netns,
    ztunnelNetns: nodeNetns,
    ztunnelAdmin: flags['ztunnel-admin'],
    ztunnelMetrics: flags['ztunnel-metrics'],
    capture: resolved.capture,
    captureFromAgent: resolved.fromAgent,
    probe: flags.probe !== undefined ? splitProbe(flags.probe) : { host: peer?.ip ?? '192.0.2.1', port: peer ? 1 : 9 },
    hints: {
      agentLog: `weirctl sandbox logs ${spec.node} cni-agent${sandboxFlags}`,
      ztunnelLog: `weirctl sandbox logs ${spec.node} ztunnel${sandboxFlags}`,
      restartZtunnel: `weirctl sandbox restart ${spec.node} ztunnel${sandboxFlags}`,
      restartAgent: `weirctl sandbox restart ${spec.node} cni-agent${sandboxFlags}`,
      enroll: `weirctl sandbox label ns/${spec.namespace} istio.io/dataplane-mode=ambient${sandboxFlags}, and no istio.io/dataplane-mode=none on the pod`,
    },
  };
  return { target, resolved };
}
