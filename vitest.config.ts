import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Real servers and real clients: files run in parallel forks, tests within a file in order.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
