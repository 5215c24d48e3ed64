import { defineConfig } from 'vitest/config';

// Two projects: fast in-process tests (unit, property, simulation) and end-to-end tests that
// start real agent processes. Both import the packages' built output (npm test builds first).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['packages/*/test/**/*.test.ts', 'test/unit/**/*.test.ts'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 60_000,
          // Agents bind fixed loopback addresses on port 8182: one e2e file at a time.
          fileParallelism: false,
        },
      },
    ],
  },
});
