import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Namespace tests start python helpers and iptables processes on a shared, loaded machine.
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
