import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { renameWithRetry } from '../src/file-system.js';
import { makeTempDir, removeTempDirs } from './helpers.js';

afterEach(removeTempDirs);

const WINDOWS_SHARING_CODES = new Set(['EPERM', 'EBUSY', 'EACCES']);

/** A rename that fails with `code` for its first `failures` calls, as a file held by an antivirus scanner. */
function heldFor(failures: number, code: string) {
  const calls: [string, string][] = [];
  const rename = async (from: string, to: string) => {
    calls.push([from, to]);
    if (calls.length <= failures)
      throw Object.assign(new Error(`${code}: operation not permitted, rename`), { code });
    await fsp.rename(from, to);
  };
  return { rename, calls };
}

describe('renameWithRetry (Windows: a scanner holds the new file for a moment)', () => {
  it.for(['EPERM', 'EBUSY', 'EACCES'])('retries %s until the holder lets go, then renames', async (code) => {
    const dir = await makeTempDir();
    await fsp.writeFile(path.join(dir, 'tmp'), 'payload');
    const held = heldFor(3, code);
    await renameWithRetry(path.join(dir, 'tmp'), path.join(dir, 'final'), {
      rename: held.rename,
      retryCodes: WINDOWS_SHARING_CODES,
    });
    expect(held.calls).toHaveLength(4);
    expect(await fsp.readFile(path.join(dir, 'final'), 'utf8')).toBe('payload');
  });

  it('gives up after its time budget and reports the last error', async () => {
    const held = heldFor(Number.POSITIVE_INFINITY, 'EBUSY');
    const startedAt = Date.now();
    await expect(
      renameWithRetry('a', 'b', { rename: held.rename, retryCodes: WINDOWS_SHARING_CODES, budgetMs: 200 }),
    ).rejects.toMatchObject({ code: 'EBUSY' });
    expect(held.calls.length).toBeGreaterThan(1);
    expect(Date.now() - startedAt).toBeLessThan(5_000);
  });

  it('keeps retrying for the documented 3 s by default before it gives up', async () => {
    const held = heldFor(Number.POSITIVE_INFINITY, 'EPERM');
    const startedAt = Date.now();
    await expect(
      renameWithRetry('a', 'b', { rename: held.rename, retryCodes: WINDOWS_SHARING_CODES }),
    ).rejects.toMatchObject({ code: 'EPERM' });
    // A lower bound only: a slow machine makes it longer, never shorter.
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(2_700);
    expect(held.calls.length).toBeGreaterThan(10);
  });

  it('does not retry other errors', async () => {
    const held = heldFor(Number.POSITIVE_INFINITY, 'ENOENT');
    await expect(
      renameWithRetry('a', 'b', { rename: held.rename, retryCodes: WINDOWS_SHARING_CODES }),
    ).rejects.toMatchObject({
      code: 'ENOENT',
    });
    expect(held.calls).toHaveLength(1);
  });

  it.skipIf(process.platform === 'win32')(
    'retries nothing by default off Windows, where EPERM is a real refusal',
    async () => {
      const held = heldFor(Number.POSITIVE_INFINITY, 'EPERM');
      await expect(renameWithRetry('a', 'b', { rename: held.rename })).rejects.toMatchObject({
        code: 'EPERM',
      });
      expect(held.calls).toHaveLength(1);
    },
  );
});
