import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Root-only lanes (mounts, unshare, setpriv): `npm run test:faults`, see vitest.faults.config.ts.
    exclude: [...configDefaults.exclude, 'test/faults/**'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 30_000,
    coverage: { provider: 'v8', include: ['src/**'] },
  },
});
