import { randomBytes } from 'node:crypto';

import { IptablesError } from './errors.js';
import type { CommandExecutor, CommandResult } from './executor.js';

/** One command of a batch: argv (no shell), optional stdin, optional condition on the netns's IPv6. */
export interface BatchStep {
  readonly id: string;
  readonly argv: readonly string[];
  readonly input?: string;
  /** Run only when IPv6 is on (`true`) or off (`false`) in the netns; default always. */
  readonly ipv6?: boolean;
}

/** What one batch saw: IPv6 on, sysctl values (absent: no such key), each step's result. */
export interface BatchOutput {
  readonly ipv6: boolean;
  readonly sysctls: ReadonlyMap<string, string>;
  readonly results: ReadonlyMap<string, CommandResult>;
}

const SAFE = /^[A-Za-z0-9_./:=@%+,-]+$/;
function quote(word: string): string {
  return SAFE.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** `net.ipv4.tcp_migrate_req` → its /proc/sys path; rejects anything that is not a plain key. */
export function sysctlPath(key: string): string {
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/.test(key)) {
    throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid sysctl key ${JSON.stringify(key)}`);
  }
  return `/proc/sys/${key.replace(/\./g, '/')}`;
}

/**
 * Runs several commands as ONE `sh -c` script through `executor` (one process round trip, one
 * netns entry with `netnsExecutor`), instead of one executor call per command: on a node, each
 * exec costs milliseconds of CPU, and a capture used to pay for nsenter once per command.
 * The script first reads whether IPv6 is on (any `disable_ipv6` is 0) and the given sysctls with
 * shell builtins (no process), then runs the steps in order. Each step's stdout, stderr and exit
 * code come back separately, delimited by random markers. With `stopOnFailure` the first failing
 * step ends the batch (later steps are absent from `results`); sysctl writes are steps too.
 */
export async function runShellBatch(
  executor: CommandExecutor,
  steps: readonly BatchStep[],
  opts: { sysctls?: readonly string[]; writeSysctls?: ReadonlyMap<string, string>; stopOnFailure?: boolean } = {},
): Promise<BatchOutput> {
  const token = `__wb${randomBytes(6).toString('hex')}_`;
  const lines: string[] = [
    'v6=0',
    'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do if [ -r "$f" ]; then read x < "$f"; [ "$x" = 0 ] && v6=1; fi; done',
    `printf '%s\\n' "${token}ipv6 $v6"`,
  ];
  for (const key of opts.sysctls ?? []) {
    const path = sysctlPath(key);
    lines.push(`if [ -r ${path} ]; then read x < ${path}; printf '%s\\n' "${token}sysctl ${key} $x"; fi`);
  }
  const run = (id: string, body: string, cond: boolean | undefined): void => {
    const start = `printf '\\n%s\\n' '${token}b ${id}'; printf '\\n%s\\n' '${token}b ${id}' >&2`;
    const end = `rc=$?; printf '\\n%s %d\\n' '${token}e ${id}' "$rc"; printf '\\n%s\\n' '${token}e ${id}' >&2`;
    const stop = opts.stopOnFailure ? `; [ "$rc" = 0 ] || exit 0` : '';
    const block = `${start}\n${body}\n${end}${stop}`;
    lines.push(cond === undefined ? block : `if [ "$v6" = ${cond ? 1 : 0} ]; then\n${block}\nfi`);
  };
  for (const step of steps) {
    if (!/^[A-Za-z0-9_.:-]+$/.test(step.id)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid batch step id ${step.id}`);
    const cmd = step.argv.map(quote).join(' ');
    const stdin =
      step.input === undefined
        ? ' </dev/null'
        : ` <<'${token}in'\n${step.input}${step.input.endsWith('\n') || step.input === '' ? '' : '\n'}${token}in`;
    run(step.id, `${cmd}${stdin}`, step.ipv6);
  }
  for (const [key, value] of opts.writeSysctls ?? []) {
    if (!/^[A-Za-z0-9 ._-]*$/.test(value)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid sysctl value ${JSON.stringify(value)} for ${key}`);
    const path = sysctlPath(key);
    // A builtin write: `echo` into /proc/sys resolves in the netns the shell runs in.
    run(`sysctl:${key}`, `printf '%s\\n' '${value}' > ${path}`, undefined);
  }
  const r = await executor.run('sh', ['-c', `${lines.join('\n')}\n`]);
  return parseBatch(token, r, steps, opts.writeSysctls);
}

function parseBatch(
  token: string,
  r: CommandResult,
  steps: readonly BatchStep[],
  writes: ReadonlyMap<string, string> | undefined,
): BatchOutput {
  const v6 = new RegExp(`${token}ipv6 ([01])\\n`).exec(r.stdout);
  if (r.code !== 0 || !v6) {
    // The shell itself did not run (nsenter could not enter the netns, no sh): nothing is known.
    throw new IptablesError(
      r.code === 127 ? 'ERR_IPTABLES_BACKEND_UNAVAILABLE' : 'ERR_IPTABLES_COMMAND_FAILED',
      `command batch did not run (exit ${r.code}): ${r.stderr.trim() || '(no stderr)'}`,
    );
  }
  const sysctls = new Map<string, string>();
  for (const m of r.stdout.matchAll(new RegExp(`${token}sysctl (\\S+) ([^\\n]*)\\n`, 'g'))) sysctls.set(m[1] as string, (m[2] as string).trim());
  const results = new Map<string, CommandResult>();
  const between = (text: string, id: string): { body: string; rc: number | undefined } | undefined => {
    const b = `\n${token}b ${id}\n`;
    const i = text.indexOf(b);
    if (i < 0) return undefined;
    const from = i + b.length;
    const e = new RegExp(`\\n${token}e ${id.replace(/[.:-]/g, '\\$&')}(?: (\\d+))?\\n`).exec(text.slice(from));
    if (!e) return undefined;
    return { body: text.slice(from, from + e.index), rc: e[1] === undefined ? undefined : Number(e[1]) };
  };
  const ids = [...steps.map((s) => s.id), ...[...(writes?.keys() ?? [])].map((k) => `sysctl:${k}`)];
  for (const id of ids) {
    const out = between(r.stdout, id);
    const err = between(r.stderr, id);
    if (!out || out.rc === undefined) continue;
    results.set(id, { stdout: out.body, stderr: err?.body ?? '', code: out.rc });
  }
  return { ipv6: v6[1] === '1', sysctls, results };
}
