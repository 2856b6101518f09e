import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // Each file brings up a whole sandbox (two nodes, agents, ztunnels) on a loaded two-core machine.
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Each suite file runs its control-plane modes one after the other (local, then xds); two files at
    // a time: sandboxes never collide (unique --name/--state-dir, own netns), the main file (both modes)
    // takes about as long as the other two together, and more would only compete for two cores.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
