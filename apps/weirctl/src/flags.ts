import type { z } from 'zod';
import { UsageError } from './command.js';

/**
 * One line for a `parseArgs` error, in weirctl's words rather than Node's (`unknown flag --node (did you
 * mean --nodes?)` instead of "Unknown option '--node'. To specify a positional argument starting with a '-' …").
 * `known` are the long flag names the command takes, without `--`.
 */
export function parseArgsError(err: unknown, known: readonly string[]): UsageError {
  const e = err as { code?: string; message?: string };
  const message = e.message ?? String(err);
  const quoted = /'([^']+)'/.exec(message)?.[1] ?? '';
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION': {
      const suggestion = closest(quoted.replace(/^-+/, '').split('=')[0] ?? '', known);
      return new UsageError(`unknown flag ${quoted}${suggestion !== undefined ? ` (did you mean --${suggestion}?)` : ''}`);
    }
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return new UsageError(`flag ${quoted.split(' ')[0]} ${/argument missing/.test(message) ? 'needs a value' : 'takes no value'}`);
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return new UsageError(`unexpected argument ${quoted}`);
    default:
      return new UsageError(message.split('\n')[0] ?? 'bad arguments');
  }
}

/** The first zod issue as `--flag: why (got "value")`: the flag, the rule and what was typed. */
export function flagIssueError(error: z.ZodError, values: Readonly<Record<string, unknown>>): UsageError {
  const issue = error.issues[0];
  const flag = String(issue?.path[0] ?? '');
  const seen = values[flag];
  const got = seen === undefined || typeof seen === 'boolean' ? '' : ` (got ${JSON.stringify(seen)})`;
  return new UsageError(`--${flag}: ${issue?.message ?? 'invalid'}${got}`);
}

/** The known flag a typo most likely meant: a prefix either way, or at most two edits away. */
function closest(typed: string, known: readonly string[]): string | undefined {
  if (typed === '') return undefined;
  let best: { name: string; distance: number } | undefined;
  for (const name of known) {
    const distance = name.startsWith(typed) || typed.startsWith(name) ? 1 : editDistance(typed, name);
    if (distance <= 2 && (best === undefined || distance < best.distance)) best = { name, distance };
  }
  return best?.name;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length] as number;
}
