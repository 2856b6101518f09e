#!/usr/bin/env node
import { runCli, type Command } from './command.js';
import { doctorCommand } from './commands/doctor.js';
import { rulesCommand } from './commands/rules.js';
import { sandboxCommand } from './commands/sandbox.js';

/** Subcommands: one line each. */
const commands: Record<string, Command> = {
  rules: rulesCommand,
  sandbox: sandboxCommand,
  doctor: doctorCommand,
};

const io = { out: (t: string) => process.stdout.write(t), err: (t: string) => process.stderr.write(t) };
runCli(commands, process.argv.slice(2), io).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`weirctl: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
