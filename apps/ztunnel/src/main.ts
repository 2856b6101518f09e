#!/usr/bin/env node
// weir-ztunnel's launcher: V8 flags first (WEIR_V8_FLAGS, default DEFAULT_V8_FLAGS), then the program.
// The program is imported dynamically so that none of it is loaded before the flags are set.
import { setFlagsFromString } from 'node:v8';
import { V8FlagsError, startupV8Flags, v8Flags } from './v8-flags.js';

let flags: string[] = [];
try {
  flags = v8Flags(process.env.WEIR_V8_FLAGS);
  for (const flag of flags) setFlagsFromString(flag);
} catch (err) {
  if (!(err instanceof V8FlagsError)) throw err;
  process.stderr.write(`weir-ztunnel: invalid configuration: ${err.message}\n`);
  process.exit(2);
}
// Start-up (some 350 modules resolved and evaluated, the configuration parsed) runs once, yet it is hot
// enough for TurboFan to compile ~20 of Node's loader functions on V8's worker threads; what those jobs
// leave in the workers' malloc arenas stays resident for the life of the process (~4 MiB of an idle
// ztunnel). Under a 4× interrupt budget until ztunnel is started, start-up code stays in the interpreter
// and baseline tiers; then V8's own budget is back, so the data path tiers up as before.
const { starting, started: once } = startupV8Flags(flags);
for (const flag of starting) setFlagsFromString(flag);
const { started } = await import('./run.js');
await started;
for (const flag of once) setFlagsFromString(flag);
