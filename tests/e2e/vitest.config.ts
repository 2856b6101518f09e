import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // Each file brings up a whole sandbox (two nodes, agents, ztunnels) on a loaded two-core machine.
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // One sandbox at a time: they do not collide (unique --name/--state-dir), but CPU is the limit.
    fileParallelism: false,
  },
});
