import { defineConfig } from 'vitest/config';

// Generous timeouts: CI runs two packages' suites at once on a 2-core machine.
export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
