import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { parseArgs } from 'node:util';
import { netnsCommand } from '@weir/topology';
import { z } from 'zod';
import { UsageError, type Command, type Io } from '../command.js';
import { flagIssueError, parseArgsError } from '../flags.js';
import {
  DEFAULT_SANDBOX_DIR,
  DEFAULT_SANDBOX_NAME,
  SandboxError,
  componentLog,
  followComponentLog,
  resolveTarget,
  sandboxDown,
  sandboxStatus,
  sandboxUp,
  type SandboxLocation,
  type SandboxStatus,
} from '../sandbox/sandbox.js';
import { sandboxRestart } from '../sandbox/restart.js';
import { parseLabelChange, parseLabelTarget, sandboxAddPod, sandboxLabel, sandboxPolicies, sandboxPolicyApply, sandboxPolicyDelete } from '../sandbox/live.js';

const HELP = `usage: weirctl sandbox <up|status|exec|logs|label|policy|pod|restart|down> [flags]

A local cluster in network namespaces on this machine (needs root): nodes node-1..N, namespace demo
(enrolled: sleep on node-1, httpbin HTTP echo on :8000 on node-2) and namespace legacy (legacy-client on
node-1), with weir-cni-agent and weir-ztunnel on every node and weir-cni in each node's CNI chain.

  up [--nodes N]                build it (default 2 nodes); reports components that are not built yet
     [--control-plane local|xds]   local (default): ztunnels read LOCAL_XDS_PATH and share a CA on disk;
                                xds: weir-test-control-plane on node-1 serves that file over Delta xDS and issues
                                certificates as Istio's CA (TLS, bearer token); ztunnels get XDS_ADDRESS/CA_ADDRESS
     [--agent-bin F] [--ztunnel-bin F] [--cni-bin F] [--control-plane-bin F]   use these binaries instead of the repo's builds
  status [--json]               control plane (mode, health), nodes (netns, address, ZDS socket, agent/ztunnel pids) and pods
  exec POD|NODE -- CMD [ARG…]   run CMD in a pod's (name or namespace/name) or node's netns; exit status passed through
  logs NODE ztunnel|cni-agent [-f|-p]   print that component's log (-f: keep printing until it exits;
                                -p/--previous: the log of the process a restart replaced)
  logs control-plane [-f]       the test control plane's log (xds mode)
  label ns/NAME|pod/NS/NAME|pod/NAME [-n NS] KEY=VALUE|KEY- …
                                set or remove labels live (istio.io/dataplane-mode=ambient enrolls, none opts a pod
                                out); returns once the agents captured/released the pods whose enrollment changed
  policy apply FILE             add or replace authorization policies (ztunnel local-config schema: {policies: […]},
                                a list or one policy); returns once every ztunnel's /config_dump shows them
  policy delete NAME|NS/NAME [-n NS]   remove one; returns once no ztunnel has it
  policy list [--json]          the policies the sandbox holds
  pod add NAME [-n NS] [--node NODE] [--http-echo PORT] [--label K=V]…
                                a pod on that node (default demo, node-1; sleep unless --http-echo); returns once
                                it is captured when enrolled
  restart NODE ztunnel|cni-agent   stop it if it runs and start it again, as a DaemonSet would after a crash;
                                returns once the node's enrolled pods are captured and ztunnel is ready
  down                          remove everything up made; safe twice and after a crash

Every subcommand takes these, before or after it (and its verb):
  --state-dir DIR               default ${DEFAULT_SANDBOX_DIR}
  --name NAME                   netns prefix, default ${DEFAULT_SANDBOX_NAME}
`;

const common = { 'state-dir': { type: 'string' }, name: { type: 'string' } } as const;

const SUBCOMMANDS = ['up', 'status', 'exec', 'logs', 'label', 'policy', 'pod', 'restart', 'down'];

/**
 * `--state-dir` and `--name` go anywhere before `--`: before the subcommand, between it and its verb
 * (`policy --name x apply F`) or after. They are moved to the end of the subcommand's own flags
 * (before `--`), where every subcommand parses them.
 */
function hoistCommonFlags(argv: readonly string[]): string[] {
  const end = argv.includes('--') ? argv.indexOf('--') : argv.length;
  const kept: string[] = [];
  const hoisted: string[] = [];
  for (let i = 0; i < end; i++) {
    const arg = argv[i] as string;
    const flag = Object.keys(common).find((name) => arg === `--${name}` || arg.startsWith(`--${name}=`));
    if (flag === undefined) {
      kept.push(arg);
    } else if (arg.includes('=')) {
      hoisted.push(arg);
    } else {
      const value = argv[i + 1];
      if (value === undefined || i + 1 >= end) throw new UsageError(`--${flag} needs a value`);
      hoisted.push(arg, value);
      i++;
    }
  }
  return [...kept, ...hoisted, ...argv.slice(end)];
}

const Location = z.object({
  'state-dir': z.string().min(1).default(DEFAULT_SANDBOX_DIR),
  name: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/, 'lowercase letters, digits and -, at most 32 characters')
    .default(DEFAULT_SANDBOX_NAME),
});

const UpFlags = Location.extend({
  nodes: z.coerce.number({ error: 'expected a whole number from 1 to 9' }).int('expected a whole number from 1 to 9').min(1, 'at least 1 node').max(9, 'at most 9 nodes').default(2),
  'agent-bin': z.string().min(1).optional(),
  'ztunnel-bin': z.string().min(1).optional(),
  'cni-bin': z.string().min(1).optional(),
  'control-plane': z.enum(['local', 'xds']).default('local'),
  'control-plane-bin': z.string().min(1).optional(),
});

const StatusFlags = Location.extend({ json: z.boolean().default(false) });

const LogsFlags = Location.extend({ follow: z.boolean().default(false), previous: z.boolean().default(false) });

const LabelFlags = Location.extend({ namespace: z.string().min(1).optional() });

const PodFlags = Location.extend({
  namespace: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a DNS label').default('demo'),
  node: z.string().min(1).default('node-1'),
  'http-echo': z.coerce.number({ error: 'expected a TCP port, 1 to 65535' }).int('expected a TCP port, 1 to 65535').min(1, 'expected a TCP port, 1 to 65535').max(65535, 'expected a TCP port, 1 to 65535').optional(),
  label: z.array(z.string()).default([]),
});

export interface SandboxCommandOptions {
  /** `inherit` (default): exec'd commands own the terminal. `io`: their output goes through Io (tests). */
  execStdio?: 'inherit' | 'io';
}

export function createSandboxCommand(options: SandboxCommandOptions = {}): Command {
  return {
    summary: 'a local cluster in network namespaces: up, status, exec, logs, label, policy, pod, restart, down',
    async run(argv, io) {
      const [sub, ...rest] = hoistCommonFlags(argv);
      const own = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
      if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h' || own.includes('--help') || own.includes('-h')) {
        (sub === undefined ? io.err : io.out)(HELP);
        return sub === undefined ? 2 : 0;
      }
      try {
        switch (sub) {
          case 'up':
            return await up(rest, io);
          case 'status':
            return await status(rest, io);
          case 'exec':
            return await exec(rest, io, options.execStdio ?? 'inherit');
          case 'logs':
            return await logs(rest, io);
          case 'label':
            return await label(rest, io);
          case 'policy':
            return await policy(rest, io);
          case 'pod':
            return await pod(rest, io);
          case 'restart':
            return await restart(rest, io);
          case 'down':
            return await down(rest, io);
          default:
            throw new UsageError(`unknown subcommand '${sub}' (one of: ${SUBCOMMANDS.join(', ')})`);
        }
      } catch (err) {
        if (err instanceof SandboxError) {
          io.err(`weirctl sandbox ${sub}: ${err.message}\n`);
          return 1;
        }
        // Name the subcommand the bad flag belongs to: `weirctl sandbox up: unknown flag --node …`.
        if (err instanceof UsageError && err.command === undefined && SUBCOMMANDS.includes(sub)) err.command = `sandbox ${sub}`;
        throw err;
      }
    },
  };
}

export const sandboxCommand = createSandboxCommand();

async function up(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parse(
    argv,
    UpFlags,
    { nodes: { type: 'string' }, 'agent-bin': { type: 'string' }, 'ztunnel-bin': { type: 'string' }, 'cni-bin': { type: 'string' }, 'control-plane': { type: 'string' }, 'control-plane-bin': { type: 'string' } },
    0,
  );
  const binaries = {
    ...(flags['agent-bin'] !== undefined ? { 'weir-cni-agent': flags['agent-bin'] } : {}),
    ...(flags['ztunnel-bin'] !== undefined ? { 'weir-ztunnel': flags['ztunnel-bin'] } : {}),
    ...(flags['cni-bin'] !== undefined ? { 'weir-cni': flags['cni-bin'] } : {}),
    ...(flags['control-plane-bin'] !== undefined ? { 'weir-test-control-plane': flags['control-plane-bin'] } : {}),
  };
  if (flags['control-plane-bin'] !== undefined && flags['control-plane'] !== 'xds') throw new UsageError('--control-plane-bin needs --control-plane xds');
  const { state, ips } = await sandboxUp(location(flags), { nodes: flags.nodes, binaries, controlPlane: flags['control-plane'] }, (line) => io.out(`${line}\n`));
  const httpbin = ips['demo/httpbin'];
  const mode = state.controlPlane.mode === 'xds' ? `, control plane ${state.controlPlane.address}` : '';
  io.out(`sandbox up (${state.nodes.length} nodes${mode}). Try:\n  weirctl sandbox exec sleep -- curl -s http://${httpbin ?? '<httpbin ip>'}:8000/get\n  weirctl sandbox status\n`);
  return 0;
}

async function status(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parse(argv, StatusFlags, { json: { type: 'boolean' } }, 0);
  const result = await sandboxStatus(location(flags));
  if (result === undefined) {
    if (flags.json) io.out(`${JSON.stringify({ up: false })}\n`);
    else io.err(`no sandbox is up (state dir ${flags['state-dir']})\n`);
    return 1;
  }
  io.out(flags.json ? `${JSON.stringify({ up: true, ...result }, null, 2)}\n` : formatStatus(result));
  return 0;
}

function formatStatus(s: SandboxStatus): string {
  const pid = (p: number | null): string => (p === null ? '-' : String(p));
  const cp = s.controlPlane;
  const controlPlane =
    cp.mode === 'local'
      ? `control plane: local (ztunnels read ${cp.localXdsPath}, CA ${cp.caCert})`
      : `control plane: xds ${cp.address}, weir-test-control-plane on ${cp.node} pid ${pid(cp.pid)}, ${cp.detail}; ztunnels connected: ${cp.connected.join(', ') || 'none'}`;
  const lines = [`sandbox ${s.name} (since ${s.createdAt}, state ${s.dir})`, controlPlane, '', 'NODE      ADDRESS       AGENT    ZTUNNEL  NETNS'];
  for (const n of s.nodes) lines.push(`${n.name.padEnd(9)} ${n.ip.padEnd(13)} ${pid(n.agentPid).padEnd(8)} ${pid(n.ztunnelPid).padEnd(8)} ${n.netns}`);
  lines.push('', 'POD                   NODE      IP            ENROLLED  CAPTURED  NETNS');
  for (const p of s.pods) {
    lines.push(`${`${p.namespace}/${p.name}`.padEnd(21)} ${p.node.padEnd(9)} ${(p.ip ?? '-').padEnd(13)} ${(p.enrolled ? 'yes' : 'no').padEnd(9)} ${(p.captured ? 'yes' : 'no').padEnd(9)} ${p.netns ?? '-'}`);
  }
  const absent = s.components.filter((c) => !c.present);
  if (absent.length > 0) lines.push('', ...absent.map((c) => `${c.name}: NOT PRESENT, ${c.detail}`));
  const notes = s.nodes.flatMap((n) => [
    ...n.notes.map((note) => `${n.name}: ${note}`),
    // Stopped since up (a crash, a kill): what that means for the node's pods, and how to bring it back.
    ...(n.agentPid === null && !n.notes.some((note) => note.startsWith('weir-cni-agent'))
      ? [`${n.name}: weir-cni-agent is not running: new pods on ${n.name} fail their CNI ADD and drifted rules are not repaired; weirctl sandbox restart ${n.name} cni-agent`]
      : []),
    ...(n.ztunnelPid === null && !n.notes.some((note) => note.startsWith('weir-ztunnel'))
      ? [`${n.name}: weir-ztunnel is not running: traffic of its captured pods is refused; weirctl sandbox restart ${n.name} ztunnel`]
      : []),
  ]);
  if (notes.length > 0) lines.push('', ...notes);
  return `${lines.join('\n')}\n`;
}

async function exec(argv: readonly string[], io: Io, stdio: 'inherit' | 'io'): Promise<number> {
  const split = argv.indexOf('--');
  if (split < 0) throw new UsageError('exec needs POD -- CMD [ARG…]');
  const { flags, positionals } = parse(argv.slice(0, split), Location, {}, 1, 'exec POD|NODE -- CMD [ARG…]');
  const command = argv.slice(split + 1);
  if (command.length === 0) throw new UsageError('exec needs a command after --');
  const target = await resolveTarget(location(flags), positionals[0] as string);
  const wrapped = netnsCommand(target.netns, command[0] as string, command.slice(1));
  return new Promise((resolve, reject) => {
    const child = spawn(wrapped.cmd, wrapped.args, { stdio: stdio === 'inherit' ? 'inherit' : ['inherit', 'pipe', 'pipe'] });
    child.stdout?.on('data', (chunk: Buffer) => io.out(chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => io.err(chunk.toString()));
    child.on('error', (err) => reject(new SandboxError(`cannot run ${command[0]} in ${target.label}: ${err.message}`, { cause: err })));
    // A signal death reads as 128+n, as in a shell.
    child.on('close', (code, signal) => resolve(code ?? 128 + signalNumber(signal)));
  });
}

async function logs(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, LogsFlags, { follow: { type: 'boolean', short: 'f' }, previous: { type: 'boolean', short: 'p' } }, -1);
  // `logs control-plane` (one per sandbox) or `logs NODE ztunnel|cni-agent`.
  const [node, name] = positionals.length === 1 && positionals[0] === 'control-plane' ? [undefined, 'control-plane'] : positionals;
  if (positionals.length !== (node === undefined ? 1 : 2)) throw new UsageError(`logs needs NODE ztunnel|cni-agent or control-plane (got ${positionals.length === 1 ? '1 argument' : `${positionals.length} arguments`})`);
  const component = z.enum(['ztunnel', 'cni-agent', 'control-plane']).safeParse(name);
  if (!component.success || (node !== undefined && component.data === 'control-plane')) throw new UsageError(`logs NODE ztunnel|cni-agent: unknown component '${name}' (the control plane: logs control-plane)`);
  if (flags.follow && flags.previous) throw new UsageError('--previous: the previous process has exited, there is nothing to follow (drop -f)');
  if (flags.follow) {
    await followComponentLog(location(flags), node, component.data, io.out);
  } else {
    io.out(await componentLog(location(flags), node, component.data, flags.previous));
  }
  return 0;
}

async function label(argv: readonly string[], io: Io): Promise<number> {
  // Any number of KEY=VALUE / KEY- after the target; `-` ends a label, so parseArgs must not see them as flags.
  const { flags, positionals } = parse(argv, LabelFlags, { namespace: { type: 'string', short: 'n' } }, -1);
  const [ref, ...changes] = positionals;
  if (ref === undefined || changes.length === 0) throw new UsageError('label needs a target and at least one KEY=VALUE or KEY-');
  const target = parseLabelTarget(ref, flags.namespace);
  await sandboxLabel(location(flags), target, changes.map(parseLabelChange), (line) => io.out(`${line}\n`));
  return 0;
}

async function policy(argv: readonly string[], io: Io): Promise<number> {
  const [verb, ...rest] = argv;
  const say = (line: string): void => io.out(`${line}\n`);
  switch (verb) {
    case 'apply': {
      const { flags, positionals } = parse(rest, Location, {}, 1, 'policy apply FILE');
      const file = positionals[0] as string;
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        throw new SandboxError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
      }
      await sandboxPolicyApply(location(flags), text, file, say);
      return 0;
    }
    case 'delete': {
      const { flags, positionals } = parse(rest, LabelFlags, { namespace: { type: 'string', short: 'n' } }, 1, 'policy delete NAME|NS/NAME [-n NS]');
      await sandboxPolicyDelete(location(flags), positionals[0] as string, flags.namespace, say);
      return 0;
    }
    case 'list': {
      const { flags } = parse(rest, StatusFlags, { json: { type: 'boolean' } }, 0);
      const policies = await sandboxPolicies(location(flags));
      if (flags.json) io.out(`${JSON.stringify(policies, null, 2)}\n`);
      else if (policies.length === 0) io.out('no policies\n');
      else {
        const lines = ['NAMESPACE   NAME                      ACTION  SCOPE'];
        for (const p of policies) {
          const str = (v: unknown, d: string): string => (typeof v === 'string' && v !== '' ? v : d);
          lines.push(`${str(p.namespace, '-').padEnd(11)} ${str(p.name, '?').padEnd(25)} ${str(p.action, 'Allow').padEnd(7)} ${str(p.scope, 'Namespace')}`);
        }
        io.out(`${lines.join('\n')}\n`);
      }
      return 0;
    }
    default:
      throw new UsageError(`policy needs apply FILE, delete NAME or list (got '${verb ?? ''}')`);
  }
}

async function pod(argv: readonly string[], io: Io): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb !== 'add') throw new UsageError(`pod needs add NAME (got '${verb ?? ''}')`);
  const { flags, positionals } = parse(
    rest,
    PodFlags,
    { namespace: { type: 'string', short: 'n' }, node: { type: 'string' }, 'http-echo': { type: 'string' }, label: { type: 'string', multiple: true } },
    1,
    'pod add NAME [-n NS] [--node NODE] [--http-echo PORT] [--label K=V]…',
  );
  const labels: Record<string, string> = {};
  for (const arg of flags.label) {
    const change = parseLabelChange(arg);
    if (change.value === undefined) throw new UsageError(`--label ${arg}: give KEY=VALUE`);
    labels[change.key] = change.value;
  }
  const app = flags['http-echo'] !== undefined ? { kind: 'http-echo' as const, port: flags['http-echo'] } : { kind: 'sleep' as const };
  await sandboxAddPod(location(flags), { name: positionals[0] as string, namespace: flags.namespace, node: flags.node, labels, app }, (line) => io.out(`${line}\n`));
  return 0;
}

async function restart(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, Location, {}, 2, 'restart NODE ztunnel|cni-agent');
  const component = z.enum(['ztunnel', 'cni-agent']).safeParse(positionals[1]);
  if (!component.success) throw new UsageError(`restart NODE ztunnel|cni-agent: unknown component '${positionals[1]}'`);
  await sandboxRestart(location(flags), positionals[0] as string, component.data, (line) => io.out(`${line}\n`));
  return 0;
}

async function down(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parse(argv, Location, {}, 0);
  const report = await sandboxDown(location(flags));
  if (report.netns.length === 0 && report.stopped.length === 0 && report.killed.length === 0) {
    io.out('nothing to remove: no sandbox is up\n');
  } else {
    io.out(`sandbox down: stopped ${report.stopped.length} processes${report.killed.length ? ` (and killed ${report.killed.length} leftovers)` : ''}, removed ${report.netns.length} network namespaces\n`);
  }
  return 0;
}

type Options = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

/** parseArgs + zod: a bad flag or value is a UsageError naming it. Exactly `positionalCount` positionals (-1: any). */
function parse<S extends z.ZodType>(argv: readonly string[], schema: S, options: Options, positionalCount: number, usage?: string): { flags: z.output<S>; positionals: string[] } {
  let values: Record<string, unknown>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: [...argv], strict: true, allowPositionals: true, options: { ...common, ...options } }));
  } catch (err) {
    throw parseArgsError(err, [...Object.keys(common), ...Object.keys(options)]);
  }
  if (positionalCount >= 0 && positionals.length !== positionalCount) {
    if (positionalCount === 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    const count = (n: number): string => `${n} argument${n === 1 ? '' : 's'}`;
    throw new UsageError(`expected ${count(positionalCount)}, got ${positionals.length}${usage !== undefined ? `: ${usage}` : ''}; see weirctl sandbox --help`);
  }
  const parsed = schema.safeParse(values);
  if (!parsed.success) throw flagIssueError(parsed.error, values);
  return { flags: parsed.data, positionals };
}

function location(flags: { 'state-dir': string; name: string }): SandboxLocation {
  return { dir: flags['state-dir'], name: flags.name };
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal === null ? 0 : constants.signals[signal];
}
