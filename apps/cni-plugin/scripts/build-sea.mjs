/* global process */
// Builds dist/weir-cni: one CommonJS bundle (esbuild) injected into a copy of the node binary as a
// Single Executable Application, so the host needs no Node installation. The blob carries V8's code
// cache of the bundle (`useCodeCache`). A start-up snapshot (`useSnapshot`) was measured too: with the
// zod schemas built lazily it is no faster (a user snapshot costs ~20 ms of CPU more than Node's own to
// deserialize), and node:http/https cannot be in one (Node 20).
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { createRequire } from 'node:module';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const bundle = join(dist, 'weir-cni.cjs');
const blob = join(dist, 'weir-cni.blob');
const seaConfig = join(dist, 'sea-config.json');
const exe = join(dist, 'weir-cni');

await build({
  entryPoints: [join(root, 'src/main.ts')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  minify: true,
  legalComments: 'none',
  outfile: bundle,
  logLevel: 'warning',
});

writeFileSync(
  seaConfig,
  JSON.stringify({ main: bundle, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true }),
);
try {
  execFileSync(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: 'pipe' });
} catch (err) {
  process.stderr.write(`${err.stdout ?? ''}${err.stderr ?? ''}`);
  throw err;
}

rmSync(exe, { force: true });
copyFileSync(process.execPath, exe);
chmodSync(exe, 0o755);
// A size optimization only: Debian's node carries debug info. Skip quietly where binutils is absent.
try {
  execFileSync('strip', ['--strip-all', exe], { stdio: 'pipe' });
} catch (err) {
  process.stderr.write(`build-sea: strip unavailable (${err.code ?? err.message}); binary left unstripped\n`);
}
// postject's ELF writer warns about the stripped binary's notes; keep its output unless it fails.
const postjectCli = join(dirname(createRequire(import.meta.url).resolve('postject')), 'cli.js');
try {
  execFileSync(
    process.execPath,
    [postjectCli, exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'],
    { stdio: 'pipe' },
  );
} catch (err) {
  process.stderr.write(`${err.stdout ?? ''}${err.stderr ?? ''}`);
  throw err;
}
rmSync(blob);
rmSync(seaConfig);
process.stdout.write(`build-sea: ${exe} (${(statSync(exe).size / 1048576).toFixed(1)} MiB)\n`);
