// Builds the native addon when the package is installed. node-gyp alone fails without a compiler
// with a long stack that hides the cause: check the tools first and name what is missing in one line.
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

function executable(path) {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const found = (cmd) => (cmd.includes('/') ? executable(cmd) : (process.env.PATH ?? '').split(delimiter).some((d) => d !== '' && executable(join(d, cmd))));

const cxx = process.env.CXX?.trim() ? [process.env.CXX.trim().split(/\s+/)[0]] : ['c++', 'g++', 'clang++'];
const missing = [];
if (!cxx.some(found)) missing.push(`C++ compiler (${cxx.join('/')})`);
if (!['make', 'gmake'].some(found)) missing.push('make');
if (!['python3', 'python'].some(found)) missing.push('python3');
if (missing.length > 0) {
  console.error(
    `@weir/netns: cannot build the native addon: no ${missing.join(', no ')} found on PATH; install build-essential and python3 (Debian/Ubuntu), then reinstall`,
  );
  process.exit(1);
}

for (const step of ['configure', 'build']) {
  const r = spawnSync('node-gyp', [step], { stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    console.error(`@weir/netns: cannot build the native addon: node-gyp ${step} failed (${r.error ? r.error.message : `exit ${r.status}`}); see the output above`);
    process.exit(r.status || 1);
  }
}
