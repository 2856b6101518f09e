import { defineConfig } from 'vitest/config';

// HTTPS tests generate keys with openssl; the machine is shared and loaded.
export default defineConfig({
  test: { testTimeout: 30_000, hookTimeout: 30_000 },
});
