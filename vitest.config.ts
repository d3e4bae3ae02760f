import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ once (the e2e tests spawn the real CLI); skipped when dist/ is up to date.
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Real servers and real clients: files run in parallel forks, tests within a file in order.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
