import { lineLogger, runCni } from '../src/index.js';
import { cniPluginSuite } from './suite.js';

cniPluginSuite('library in-process', async (env, stdin) => {
  let stderr = '';
  const out = await runCni({ env, stdin }, { logger: (level) => lineLogger(level, (line) => (stderr += line)) });
  return { exitCode: out.exitCode, stdout: out.stdout, stderr };
});
