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
  /** Ids of the steps that ran (reported a result), in script order. */
  readonly ran: readonly string[];
}

const SAFE = /^[A-Za-z0-9_./:=@%+,-]+$/;
/** One word for `sh`: as is when plainly safe, else single-quoted. */
export function shellQuote(word: string): string {
  return SAFE.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** `net.ipv4.tcp_migrate_req` → its /proc/sys path; rejects anything that is not a plain key. */
export function sysctlPath(key: string): string {
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/.test(key)) {
    throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid sysctl key ${JSON.stringify(key)}`);
  }
  return `/proc/sys/${key.replace(/\./g, '/')}`;
}

function checkValue(key: string, value: string): string {
  if (!/^[A-Za-z0-9 ._-]*$/.test(value)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid sysctl value ${JSON.stringify(value)} for ${key}`);
  return value;
}

/**
 * A shell script of marked steps, run as ONE `sh -c` through an executor (with `netnsExecutor`:
 * one nsenter for all of it). It starts by reading whether IPv6 is on (any `disable_ipv6` is 0)
 * and the given sysctls with shell builtins, no process. Each step's stdout, stderr and exit code
 * come back separately, delimited by random markers. Internal to this package: the script
 * language (conditions, the `fresh` flag) stays here.
 */
export class BatchScript {
  readonly #token = `__wb${randomBytes(6).toString('hex')}_`;
  readonly #lines: string[];
  readonly #ids = new Set<string>();

  constructor(sysctls: readonly string[] = []) {
    const t = this.#token;
    this.#lines = [
      'v6=0',
      'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do if [ -r "$f" ]; then read x < "$f"; [ "$x" = 0 ] && v6=1; fi; done',
      `printf '%s\\n' "${t}ipv6 $v6"`,
    ];
    for (const key of sysctls) {
      const path = sysctlPath(key);
      this.#lines.push(`if [ -r ${path} ]; then read x < ${path}; printf '%s\\n' "${t}sysctl ${key} $x"; fi`);
    }
  }

  /** A shell line of the script's own control flow (if/else/fi on `$v6`, `$fresh`). */
  raw(line: string): this {
    this.#lines.push(line);
    return this;
  }

  /**
   * A command step. `stop`: a failure ends the script. `unless`: when its stdout contains this
   * (shell-safe) text, or it fails, `$fresh` becomes 0 (the output is handed back all the same).
   */
  step(step: BatchStep, opts: { stop?: boolean; unless?: string } = {}): this {
    const cmd = step.argv.map(shellQuote).join(' ');
    const t = this.#token;
    const stdin =
      step.input === undefined
        ? ' </dev/null'
        : ` <<'${t}in'\n${step.input}${step.input.endsWith('\n') || step.input === '' ? '' : '\n'}${t}in`;
    if (opts.unless !== undefined && !/^[A-Za-z0-9_ -]+$/.test(opts.unless)) {
      throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid batch marker text ${opts.unless}`);
    }
    // With `unless`, the output goes through a variable to be matched ($(…) drops trailing newlines: put one back).
    const body =
      opts.unless === undefined
        ? `${cmd}${stdin}\nrc=$?`
        : `out=$(${cmd}${stdin}\n)\nrc=$?\nprintf '%s\\n' "$out"\n[ "$rc" = 0 ] || fresh=0\ncase "$out" in *'${opts.unless}'*) fresh=0;; esac`;
    return this.#block(step.id, body, step.ipv6, opts.stop ?? false);
  }

  /** Writes a sysctl with a builtin when the kernel has it; a step like the others. */
  writeSysctl(key: string, value: string, opts: { stop?: boolean; tag?: string } = {}): this {
    const path = sysctlPath(key);
    return this.#block(`${opts.tag === undefined ? '' : `${opts.tag}-`}sysctl:${key}`, `[ ! -e ${path} ] || printf '%s\\n' '${checkValue(key, value)}' > ${path}\nrc=$?`, undefined, opts.stop ?? false);
  }

  #block(id: string, body: string, ipv6: boolean | undefined, stop: boolean): this {
    if (!/^[A-Za-z0-9_.:-]+$/.test(id) || this.#ids.has(id)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid or repeated batch step id ${id}`);
    this.#ids.add(id);
    const t = this.#token;
    const start = `printf '\\n%s\\n' '${t}b ${id}'; printf '\\n%s\\n' '${t}b ${id}' >&2`;
    const end = `printf '\\n%s %d\\n' '${t}e ${id}' "$rc"; printf '\\n%s\\n' '${t}e ${id}' >&2${stop ? `; [ "$rc" = 0 ] || exit 0` : ''}`;
    const block = `${start}\n${body}\n${end}`;
    this.#lines.push(ipv6 === undefined ? block : `if [ "$v6" = ${ipv6 ? 1 : 0} ]; then\n${block}\nfi`);
    return this;
  }

  async run(executor: CommandExecutor): Promise<BatchOutput> {
    const r = await executor.run('sh', ['-c', `fresh=1\n${this.#lines.join('\n')}\n`]);
    const t = this.#token;
    const v6 = new RegExp(`${t}ipv6 ([01])\\n`).exec(r.stdout);
    if (r.code !== 0 || !v6) {
      // The shell itself did not run (nsenter could not enter the netns, no sh): nothing is known.
      throw new IptablesError(
        r.code === 127 ? 'ERR_IPTABLES_BACKEND_UNAVAILABLE' : 'ERR_IPTABLES_COMMAND_FAILED',
        `command batch did not run (exit ${r.code}): ${r.stderr.trim() || '(no stderr)'}`,
      );
    }
    const sysctls = new Map<string, string>();
    for (const m of r.stdout.matchAll(new RegExp(`${t}sysctl (\\S+) ([^\\n]*)\\n`, 'g'))) sysctls.set(m[1] as string, (m[2] as string).trim());
    const results = new Map<string, CommandResult>();
    for (const id of this.#ids) {
      const out = section(r.stdout, t, id);
      if (!out) continue;
      const rc = /^ (\d+)\n/.exec(out.rest);
      if (!rc) continue;
      results.set(id, { stdout: out.body, stderr: section(r.stderr, t, id)?.body ?? '', code: Number(rc[1]) });
    }
    return { ipv6: v6[1] === '1', sysctls, results, ran: [...results.keys()] };
  }
}

/** The text between a step's begin and end markers, and what follows the end marker. */
function section(text: string, token: string, id: string): { body: string; rest: string } | undefined {
  const begin = `\n${token}b ${id}\n`;
  const i = text.indexOf(begin);
  if (i < 0) return undefined;
  const from = i + begin.length;
  const end = `\n${token}e ${id}`;
  const j = text.indexOf(end, from);
  if (j < 0) return undefined;
  return { body: text.slice(from, j), rest: text.slice(j + end.length, j + end.length + 16) };
}

/**
 * Runs several commands as ONE `sh -c` script through `executor` (one process round trip, one
 * netns entry with `netnsExecutor`), instead of one executor call per command: on a node, each
 * exec costs milliseconds of CPU, and a capture used to pay for nsenter once per command.
 * With `stopOnFailure` the first failing step ends the batch (later steps are absent from
 * `results`); sysctl writes (builtins, skipped for a key the kernel lacks) run after the steps.
 */
export async function runShellBatch(
  executor: CommandExecutor,
  steps: readonly BatchStep[],
  opts: { sysctls?: readonly string[]; writeSysctls?: ReadonlyMap<string, string>; stopOnFailure?: boolean } = {},
): Promise<BatchOutput> {
  const script = new BatchScript(opts.sysctls);
  for (const step of steps) script.step(step, { stop: opts.stopOnFailure ?? false });
  for (const [key, value] of opts.writeSysctls ?? []) script.writeSysctl(key, value, { stop: opts.stopOnFailure ?? false });
  return script.run(executor);
}
