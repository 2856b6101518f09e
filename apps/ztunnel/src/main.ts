#!/usr/bin/env node
// weir-ztunnel's launcher: V8 flags first (WEIR_V8_FLAGS, default DEFAULT_V8_FLAGS), then the program.
// The program is imported dynamically so that none of it is loaded before the flags are set.
import { setFlagsFromString } from 'node:v8';
import { V8FlagsError, v8Flags } from './v8-flags.js';

try {
  for (const flag of v8Flags(process.env.WEIR_V8_FLAGS)) setFlagsFromString(flag);
} catch (err) {
  if (!(err instanceof V8FlagsError)) throw err;
  process.stderr.write(`weir-ztunnel: invalid configuration: ${err.message}\n`);
  process.exit(2);
}
await import('./run.js');
