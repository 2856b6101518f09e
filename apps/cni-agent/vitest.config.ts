import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // test/ runs the real binary, CNI plugins and netns on a shared 2-core machine.
    testTimeout: 150_000,
    hookTimeout: 120_000,
  },
});
