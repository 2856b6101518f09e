import { parseArgs } from 'node:util';
import { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { flagIssueError, parseArgsError } from './flags.js';

const options = { nodes: { type: 'string' }, 'control-plane': { type: 'string' }, json: { type: 'boolean' } } as const;
const known = Object.keys(options);

function argsError(args: string[]): string {
  try {
    parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (err) {
    return parseArgsError(err, known).message;
  }
  throw new Error(`parseArgs accepted ${args.join(' ')}`);
}

describe('flag errors', () => {
  it("name the flag in weirctl's words and suggest the one meant", () => {
    expect(argsError(['--node', '3'])).toBe('unknown flag --node (did you mean --nodes?)');
    expect(argsError(['--jsn'])).toBe('unknown flag --jsn (did you mean --json?)');
    expect(argsError(['--controlplane', 'xds'])).toBe('unknown flag --controlplane (did you mean --control-plane?)');
    expect(argsError(['--frobnicate'])).toBe('unknown flag --frobnicate');
    expect(argsError(['--nodes'])).toBe('flag --nodes needs a value');
    expect(argsError(['--json=yes'])).toBe('flag --json takes no value');
    expect(argsError(['extra'])).toBe('unexpected argument extra');
  });

  it('quote the value that broke the rule', () => {
    const schema = z.object({ nodes: z.coerce.number({ error: 'expected a whole number' }).int(), json: z.boolean().default(false) });
    const values = { nodes: 'two', json: true };
    const parsed = schema.safeParse(values);
    expect(parsed.success).toBe(false);
    if (!parsed.success) expect(flagIssueError(parsed.error, values).message).toBe('--nodes: expected a whole number (got "two")');
  });
});
