import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PayloadWriter, WriteBehind } from '../src/atomic-writer.js';
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

describe('PayloadWriter write buffers (reused from one writer to the next)', () => {
  /** `count` chunks of 64 KiB, each filled with its own byte; a yield between chunks lets writers interleave. */
  async function* chunks(seed: number, count: number) {
    for (let index = 0; index < count; index++) {
      yield Buffer.alloc(64 * 1024, (seed * 31 + index) % 251);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  function expectedSha256(seed: number, count: number): string {
    const hash = createHash('sha256');
    for (let index = 0; index < count; index++)
      hash.update(Buffer.alloc(64 * 1024, (seed * 31 + index) % 251));
    return hash.digest('hex');
  }

  /** A file handle whose writes end only when the test lets them; it keeps the bytes each write was given. */
  function heldWrites() {
    const writes: { bytes: Uint8Array; finish: () => void }[] = [];
    const handle = {
      write: (bytes: Uint8Array, offset: number, length: number) =>
        new Promise<{ bytesWritten: number }>((resolve) => {
          writes.push({ bytes, finish: () => resolve({ bytesWritten: length - offset }) });
        }),
    };
    return { handle: handle as unknown as ConstructorParameters<typeof WriteBehind>[0], writes };
  }

  it('gives its buffers to the next writer only once its last write has ended', async () => {
    const first = heldWrites();
    const a = new WriteBehind(first.handle, 'a');
    await a.append(Buffer.alloc(1024 * 1024, 1)); // a full buffer: its write starts, and is held
    const aWrite = first.writes[0];
    if (!aWrite) throw new Error('no write started');
    let settled = false;
    const aSettled = a.settle().then(() => {
      settled = true;
    });

    const second = heldWrites();
    const b = new WriteBehind(second.handle, 'b');
    await b.append(Buffer.alloc(64 * 1024, 2));
    const bFinished = b.finish();
    await new Promise((resolve) => setImmediate(resolve));

    expect(settled).toBe(false);
    expect(second.writes[0]?.bytes.buffer).not.toBe(aWrite.bytes.buffer);
    expect(aWrite.bytes.every((byte) => byte === 1)).toBe(true);
    aWrite.finish();
    second.writes[0]?.finish();
    await Promise.all([aSettled, bFinished]);
  });

  it('never lets one writer fill a buffer another is still writing out: each file holds its own bytes', async () => {
    const dir = await makeTempDir();
    const write = async (seed: number, count: number) => {
      const writer = await PayloadWriter.create(path.join(dir, `payload-${seed}`));
      await writer.writeBody(chunks(seed, count), new AbortController().signal);
      await writer.close();
      return { writer, seed, count };
    };
    // One after another (each takes the buffers the last one gave back), then eight side by side, of
    // sizes that end mid-buffer and on a buffer's edge.
    const written = [await write(1, 40), await write(2, 3)];
    written.push(...(await Promise.all([3, 4, 5, 6, 7, 8, 9, 10].map((seed) => write(seed, 8 + seed * 3)))));

    for (const { writer, seed, count } of written) {
      const bytes = await fsp.readFile(writer.tmpPath);
      expect(bytes.length).toBe(count * 64 * 1024);
      expect(createHash('sha256').update(bytes).digest('hex'), `writer ${seed}`).toBe(
        expectedSha256(seed, count),
      );
      expect(writer.sha256).toBe(expectedSha256(seed, count));
    }
  });
});
