import { defineConfig } from 'vitest/config';

/** The root-only fault lanes: tmpfs, read-only binds, setpriv, sshfs, SMB, PID namespaces. Run one file at a time. */
export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 120_000,
  },
});
