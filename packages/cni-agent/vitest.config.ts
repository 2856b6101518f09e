import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // test/ runs real netns, iptables and CNI plugins on a shared 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 90_000,
  },
});
