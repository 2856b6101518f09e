/** Where a command writes; tests pass collectors, main passes the process streams. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
}

/** One `weirctl <name>` subcommand: its one-line summary and its runner returning the exit code. */
export interface Command {
  readonly summary: string;
  run(argv: readonly string[], io: Io): Promise<number>;
}

/** A bad flag or value: printed as one line naming it, exit code 2. */
export class UsageError extends Error {
  /** The command line it belongs to (`sandbox up`), when more precise than the top-level command. */
  command: string | undefined;

  constructor(message: string, command?: string) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

/** Dispatch `argv` (without node and script) to the named command. */
export async function runCli(commands: Readonly<Record<string, Command>>, argv: readonly string[], io: Io): Promise<number> {
  const [name, ...rest] = argv;
  const usage = (): string =>
    `usage: weirctl <command> [flags]\n\ncommands:\n${Object.entries(commands)
      .map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`)
      .join('\n')}\n`;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? io.err : io.out)(usage());
    return name === undefined ? 2 : 0;
  }
  const command = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!command) {
    io.err(`weirctl: unknown command '${name}' (one of: ${Object.keys(commands).join(', ')})\n`);
    return 2;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`weirctl ${err.command ?? name}: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}
