import { defineConfig } from 'vitest/config';

// The netns tests move real bytes through real processes on a shared, loaded machine.
export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
  },
});
