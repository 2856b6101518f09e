import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // Packing, installing, compiling an addon and building images are minutes, not milliseconds.
    testTimeout: 300_000,
    hookTimeout: 900_000,
    // One heavy file at a time: the machine has two cores shared with every other package's tests.
    fileParallelism: false,
  },
});
