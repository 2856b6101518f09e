import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../../packages/cni-plugin/test/harness.js';
import { cniPluginSuite } from '../../../packages/cni-plugin/test/suite.js';

const BIN = join(fileURLToPath(new URL('.', import.meta.url)), '../dist/weir-cni');

cniPluginSuite('single executable', async (env, stdin) => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: build it with npm run build -w @weir/app-cni-plugin`);
  // Exactly what a runtime passes: the CNI_* variables (plus PATH), the config on stdin.
  return run(BIN, [], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, input: stdin });
});
