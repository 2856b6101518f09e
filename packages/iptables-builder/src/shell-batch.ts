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
 * Sysctls of the netns a direct executor runs in (see {@link NetnsApplierOptions.sysctls}): with
 * these, a batch runs without a shell, each command exec'd on its own in the netns.
 */
export interface NetnsSysctls {
  /** Values of `keys` (a key may have one `*` component, e.g. `net.ipv6.conf.*.disable_ipv6`); keys the kernel lacks are absent. */
  read(keys: readonly string[]): Promise<ReadonlyMap<string, string>> | ReadonlyMap<string, string>;
  /** Writes `key`; false when the kernel lacks it (skipped, as the shell does). */
  write(key: string, value: string): Promise<boolean> | boolean;
}

/** The script as data: rendered to one `sh -c`, or interpreted step by step. */
type Node =
  | { readonly kind: 'step'; readonly step: BatchStep; readonly stop: boolean; readonly unless: string | undefined }
  | { readonly kind: 'sysctl'; readonly id: string; readonly key: string; readonly value: string; readonly stop: boolean }
  | { readonly kind: 'if'; readonly test: 'v6' | 'fresh'; readonly then: Node[]; readonly else: Node[] };

const IPV6_KEY = 'net.ipv6.conf.*.disable_ipv6';

/**
 * A batch of marked steps for one netns. It starts by reading whether IPv6 is on (any
 * `disable_ipv6` is 0) and the given sysctls, then runs its steps; `$fresh` starts at 1 and an
 * `unless` step can clear it. Run as ONE `sh -c` script through an executor (with
 * `netnsExecutor`: one nsenter for all of it; IPv6 and sysctls read with shell builtins; each
 * step's stdout, stderr and exit code delimited by random markers), or with {@link runDirect}
 * step by step through an executor that runs commands in the netns directly (no shell at all).
 * Internal to this package: the script language (conditions, the `fresh` flag) stays here.
 */
export class BatchScript {
  readonly #token = `__wb${randomBytes(6).toString('hex')}_`;
  readonly #sysctls: readonly string[];
  readonly #root: Node[] = [];
  #current: Node[] = this.#root;
  readonly #ids = new Set<string>();

  constructor(sysctls: readonly string[] = []) {
    for (const key of sysctls) sysctlPath(key);
    this.#sysctls = sysctls;
  }

  /** Steps added in `then` run only when `test` (`$v6` or `$fresh`) is 1, those in `otherwise` only when it is 0. */
  when(test: 'v6' | 'fresh', then: (s: this) => void, otherwise?: (s: this) => void): this {
    const node: Node = { kind: 'if', test, then: [], else: [] };
    this.#current.push(node);
    const outer = this.#current;
    try {
      this.#current = node.then;
      then(this);
      this.#current = node.else;
      otherwise?.(this);
    } finally {
      this.#current = outer;
    }
    return this;
  }

  /**
   * A command step. `stop`: a failure ends the script. `unless`: when its stdout contains this
   * (shell-safe) text, or it fails, `$fresh` becomes 0 (the output is handed back all the same).
   */
  step(step: BatchStep, opts: { stop?: boolean; unless?: string } = {}): this {
    if (opts.unless !== undefined && !/^[A-Za-z0-9_ -]+$/.test(opts.unless)) {
      throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid batch marker text ${opts.unless}`);
    }
    this.#id(step.id);
    this.#current.push({ kind: 'step', step, stop: opts.stop ?? false, unless: opts.unless });
    return this;
  }

  /** Writes a sysctl when the kernel has it (skipped otherwise); a step like the others. */
  writeSysctl(key: string, value: string, opts: { stop?: boolean; tag?: string } = {}): this {
    sysctlPath(key);
    checkValue(key, value);
    const id = `${opts.tag === undefined ? '' : `${opts.tag}-`}sysctl:${key}`;
    this.#id(id);
    this.#current.push({ kind: 'sysctl', id, key, value, stop: opts.stop ?? false });
    return this;
  }

  #id(id: string): void {
    if (!/^[A-Za-z0-9_.:-]+$/.test(id) || this.#ids.has(id)) throw new IptablesError('ERR_IPTABLES_INVALID_RULE', `invalid or repeated batch step id ${id}`);
    this.#ids.add(id);
  }

  /** The `sh` script. */
  #render(): string {
    const t = this.#token;
    const lines = [
      'fresh=1',
      'v6=0',
      'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do if [ -r "$f" ]; then read x < "$f"; [ "$x" = 0 ] && v6=1; fi; done',
      `printf '%s\\n' "${t}ipv6 $v6"`,
    ];
    for (const key of this.#sysctls) {
      const path = sysctlPath(key);
      lines.push(`if [ -r ${path} ]; then read x < ${path}; printf '%s\\n' "${t}sysctl ${key} $x"; fi`);
    }
    const block = (id: string, body: string, stop: boolean): string => {
      const start = `printf '\\n%s\\n' '${t}b ${id}'; printf '\\n%s\\n' '${t}b ${id}' >&2`;
      const end = `printf '\\n%s %d\\n' '${t}e ${id}' "$rc"; printf '\\n%s\\n' '${t}e ${id}' >&2${stop ? `; [ "$rc" = 0 ] || exit 0` : ''}`;
      return `${start}\n${body}\n${end}`;
    };
    const emit = (nodes: readonly Node[]): void => {
      for (const n of nodes) {
        if (n.kind === 'if') {
          // A shell `if … else fi` needs a command in each branch.
          lines.push(`if [ "$${n.test}" = 1 ]; then`, ':');
          emit(n.then);
          lines.push('else', ':');
          emit(n.else);
          lines.push('fi');
        } else if (n.kind === 'sysctl') {
          const path = sysctlPath(n.key);
          lines.push(block(n.id, `[ ! -e ${path} ] || printf '%s\\n' '${n.value}' > ${path}\nrc=$?`, n.stop));
        } else {
          const { step } = n;
          const cmd = step.argv.map(shellQuote).join(' ');
          const stdin =
            step.input === undefined ? ' </dev/null' : ` <<'${t}in'\n${withNewline(step.input)}${t}in`;
          // With `unless`, the output goes through a variable to be matched ($(…) drops trailing newlines: put one back).
          const body =
            n.unless === undefined
              ? `${cmd}${stdin}\nrc=$?`
              : `out=$(${cmd}${stdin}\n)\nrc=$?\nprintf '%s\\n' "$out"\n[ "$rc" = 0 ] || fresh=0\ncase "$out" in *'${n.unless}'*) fresh=0;; esac`;
          const b = block(step.id, body, n.stop);
          lines.push(step.ipv6 === undefined ? b : `if [ "$v6" = ${step.ipv6 ? 1 : 0} ]; then\n${b}\nfi`);
        }
      }
    };
    emit(this.#root);
    return `${lines.join('\n')}\n`;
  }

  async run(executor: CommandExecutor): Promise<BatchOutput> {
    const r = await executor.run('sh', ['-c', this.#render()]);
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

  /**
   * The same batch without a shell: `executor` runs each command itself in the netns (one exec
   * per command, nothing else), `sysctls` reads IPv6 state and sysctls and writes sysctls there.
   * Same results as {@link run}; an executor call that rejects counts as that step failing.
   */
  async runDirect(executor: CommandExecutor, sysctls: NetnsSysctls): Promise<BatchOutput> {
    let read: ReadonlyMap<string, string>;
    try {
      read = await sysctls.read([IPV6_KEY, ...this.#sysctls]);
    } catch (cause) {
      throw new IptablesError('ERR_IPTABLES_COMMAND_FAILED', `command batch did not run: reading IPv6 state and sysctls failed: ${(cause as Error).message}`, { cause });
    }
    // Any interface, dotted names included (`net1.100`: a VLAN sub-interface), as the shell's glob.
    const ipv6Re = /^net\.ipv6\.conf\..+\.disable_ipv6$/;
    const ipv6 = [...read].some(([k, v]) => ipv6Re.test(k) && v === '0');
    const values = new Map<string, string>();
    for (const key of this.#sysctls) {
      const v = read.get(key);
      if (v !== undefined) values.set(key, v.trim());
    }
    const results = new Map<string, CommandResult>();
    let fresh = true;
    const failed = (e: unknown): CommandResult => ({ stdout: '', stderr: e instanceof Error ? e.message : String(e), code: 127 });
    // Resolves true when a `stop` step failed: the batch ends there, as the shell's `exit 0`.
    const walk = async (nodes: readonly Node[]): Promise<boolean> => {
      for (const n of nodes) {
        if (n.kind === 'if') {
          if (await walk((n.test === 'v6' ? ipv6 : fresh) ? n.then : n.else)) return true;
          continue;
        }
        let r: CommandResult;
        if (n.kind === 'sysctl') {
          try {
            await sysctls.write(n.key, n.value);
            r = { stdout: '', stderr: '', code: 0 };
          } catch (e) {
            r = { ...failed(e), code: 1 };
          }
          results.set(n.id, r);
        } else {
          if (n.step.ipv6 !== undefined && n.step.ipv6 !== ipv6) continue;
          const [cmd = '', ...args] = n.step.argv;
          try {
            r = await executor.run(cmd, args, n.step.input === undefined ? {} : { input: withNewline(n.step.input) });
          } catch (e) {
            r = failed(e);
          }
          results.set(n.step.id, r);
          if (n.unless !== undefined && (r.code !== 0 || r.stdout.includes(n.unless))) fresh = false;
        }
        if (n.stop && r.code !== 0) return true;
      }
      return false;
    };
    await walk(this.#root);
    return { ipv6, sysctls: values, results, ran: [...results.keys()] };
  }
}

/** Stdin as the shell's here-document hands it over: ending in a newline (unless empty). */
function withNewline(input: string): string {
  return input.endsWith('\n') || input === '' ? input : `${input}\n`;
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
 * With `direct`, `executor` runs commands in the netns itself: no shell, see BatchScript.runDirect.
 */
export async function runShellBatch(
  executor: CommandExecutor,
  steps: readonly BatchStep[],
  opts: { sysctls?: readonly string[]; writeSysctls?: ReadonlyMap<string, string>; stopOnFailure?: boolean; direct?: NetnsSysctls } = {},
): Promise<BatchOutput> {
  const script = new BatchScript(opts.sysctls);
  for (const step of steps) script.step(step, { stop: opts.stopOnFailure ?? false });
  for (const [key, value] of opts.writeSysctls ?? []) script.writeSysctl(key, value, { stop: opts.stopOnFailure ?? false });
  return opts.direct ? script.runDirect(executor, opts.direct) : script.run(executor);
}
