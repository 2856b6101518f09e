#!/usr/bin/env node
// `npm run bench -- <name> [args…]`: runs bench/<name>/index.mjs (or index.js) with node.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const [name, ...args] = process.argv.slice(2);
const available = readdirSync(here, { withFileTypes: true })
  .filter((d) => d.isDirectory() && ['index.mjs', 'index.js'].some((f) => existsSync(join(here, d.name, f))))
  .map((d) => d.name);
if (!name || !available.includes(name)) {
  console.error(`usage: npm run bench -- <${available.join('|')}> [args…]`);
  process.exit(2);
}
const entry = ['index.mjs', 'index.js'].map((f) => join(here, name, f)).find((f) => existsSync(f));
const r = spawnSync(process.execPath, [entry, ...args], { stdio: 'inherit' });
process.exit(r.status ?? 1);
