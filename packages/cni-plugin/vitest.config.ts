import { defineConfig } from 'vitest/config';

// Each case execs several real processes (CNI plugins, the binary); the machine is shared and loaded.
export default defineConfig({
  test: { testTimeout: 30_000, hookTimeout: 30_000 },
});
