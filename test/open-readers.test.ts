import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fsyncDir } from '../src/file-system.js';
import { CacheManager, FileBusyError } from '../src/index.js';
import { tryLock } from '../src/soft-lock.js';
import { makeTempDir, manualClock, patternBytes, removeTempDirs, sha256, tmpFilesIn } from './helpers.js';

// A payload held open by another process while the cache replaces or removes it. POSIX lets the reader keep
// its bytes while the name moves on. Windows refuses to rename over a file another process has open, and
// keeps a deleted file's name until its last handle closes: the cache retries a replace for up to 3 s, then
// fails with FileBusyError and keeps the previous entry. These run on every platform, the Windows lane
// (scripts/test-windows.sh) included, and assert what each platform promises.

const onWindows = process.platform === 'win32';
const HOLDER = fileURLToPath(new URL('./fixtures/hold-open.mjs', import.meta.url));
const KiB = 1024;
const HOUR = 3_600_000;

let root: string;
let clock: ReturnType<typeof manualClock>;
const holders = new Set<ChildProcess>();

beforeEach(async () => {
  root = await makeTempDir('payload-cache-open-readers-');
  clock = manualClock();
});

afterEach(async () => {
  await Promise.all([...holders].map(letGo));
  await removeTempDirs();
});

function cacheAt(): CacheManager {
  return new CacheManager({ root, sublayer: 'data', ttl: HOUR, now: clock.now });
}

/** Another process with `file` open, once it says so. */
async function holdOpen(file: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [HOLDER, file], { stdio: ['pipe', 'pipe', 'inherit'] });
  holders.add(child);
  const [line] = (await once(child.stdout, 'data')) as [Buffer];
  expect(line.toString()).toMatch(/^open 16/);
  return child;
}

/** Tells the holder to close the file and waits until its process is gone. */
async function letGo(child: ChildProcess): Promise<void> {
  holders.delete(child);
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.stdin?.end();
  await exited;
}

describe('another process holds the old payload open', () => {
  it('a refresh replaces it once the reader lets go within the retries (at once on POSIX)', async () => {
    const cache = cacheAt();
    const v1 = patternBytes(64 * KiB, 1);
    const v2 = patternBytes(80 * KiB, 2);
    const published = await cache.getOrFetch('k.bin', () => v1);
    const reader = await holdOpen(published);
    const released = new Promise((resolve) => setTimeout(resolve, 500)).then(() => letGo(reader));

    const replaced = await cache.getOrFetch('k.bin', () => v2, { refresh: true });
    await released;

    expect(replaced).toBe(published);
    expect(sha256(fs.readFileSync(replaced))).toBe(sha256(v2));
    expect(await tmpFilesIn(path.join(root, 'data'))).toEqual([]);
  });

  it('a reader that stays past the retries: FileBusyError and the old entry intact on Windows, replaced on POSIX', async () => {
    const cache = cacheAt();
    const v1 = patternBytes(64 * KiB, 3);
    const v2 = patternBytes(80 * KiB, 4);
    const published = await cache.getOrFetch('k.bin', () => v1);
    const reader = await holdOpen(published);

    const outcome = await cache
      .getOrFetch('k.bin', () => v2, { refresh: true })
      .then(
        (returned) => ({ returned }),
        (error: unknown) => ({ error }),
      );
    await letGo(reader);

    if (onWindows) {
      expect(outcome).toMatchObject({ error: expect.any(FileBusyError) });
      expect((outcome as { error: FileBusyError }).error.code).toBe('ERR_FILE_BUSY');
      expect(await cache.get('k.bin')).toBe(published);
      expect(sha256(fs.readFileSync(published))).toBe(sha256(v1));
    } else {
      expect(outcome).toEqual({ returned: published });
      expect(sha256(fs.readFileSync(published))).toBe(sha256(v2));
    }
    // Either way nothing is left behind: no tmp file, no pending manifest, no lock.
    expect(fs.readdirSync(path.join(root, 'data')).sort()).toEqual(['k.bin', 'k.bin.manifest.json']);
  });

  for (const removal of ['delete', 'clear', 'prune'] as const) {
    it(`${removal}() while a reader holds the payload: a miss at once, published anew once the reader is gone`, async () => {
      const cache = cacheAt();
      const v1 = patternBytes(64 * KiB, 5);
      const v2 = patternBytes(80 * KiB, 6);
      const published = await cache.getOrFetch('k.bin', () => v1);
      const reader = await holdOpen(published);

      if (removal === 'delete') expect(await cache.delete('k.bin')).toBe(true);
      else if (removal === 'clear') await cache.clear();
      else {
        clock.advance(2 * HOUR); // expired, and long out of the in-use window
        expect((await cache.prune()).removed.map((item) => item.key)).toEqual(['k.bin']);
      }

      // The entry is gone for the cache at once, even while Windows still shows the payload's name.
      expect(await cache.has('k.bin')).toBe(false);
      expect(fs.existsSync(`${published}.manifest.json`)).toBe(false);
      await letGo(reader);
      const again = await cache.getOrFetch('k.bin', () => v2);
      expect(sha256(fs.readFileSync(again))).toBe(sha256(v2));
      expect(fs.readdirSync(path.join(root, 'data')).sort()).toEqual(['k.bin', 'k.bin.manifest.json']);
    });
  }
});

describe('a waiter reading the lock owner file in another process', () => {
  // The cold-key stampede under Wine left `<key>.lock.tmp.*` behind: the release renames the lock aside at
  // once, but on Windows the owner file a waiter has open keeps its name, so the directory is not empty yet.
  it('the released lock leaves nothing behind once the waiter lets go, and the next acquire works at once', async () => {
    const dir = path.join(root, 'data');
    fs.mkdirSync(dir);
    const lockPath = path.join(dir, 'k.bin.lock');
    const held = await tryLock(lockPath, 10_000);
    expect(held).toBeDefined();
    const waiter = await holdOpen(path.join(lockPath, 'owner.json'));

    await held?.release();
    const next = await tryLock(lockPath, 10_000);
    expect(next).toBeDefined();
    await next?.release();
    await letGo(waiter);

    // Nothing but what this test made, once the deletion that waited for the waiter is done.
    for (;;) {
      const names = fs.readdirSync(dir);
      if (names.length === 0) break;
      expect(names.every((name) => name.startsWith('k.bin.lock.tmp.'))).toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });
});

describe('directory fsync', () => {
  it('is tolerated where the platform refuses it (EPERM on Windows), and done where it works', async () => {
    const dir = await makeTempDir('payload-cache-fsync-dir-');
    const raw = await fs.promises
      .open(dir, 'r')
      .then(async (handle) => {
        try {
          await handle.sync();
          return 'synced';
        } finally {
          await handle.close();
        }
      })
      .catch((error: NodeJS.ErrnoException) => error.code);
    // The platform's own answer: Windows refuses, Linux and macOS sync.
    if (onWindows) expect(['EPERM', 'EISDIR', 'EACCES']).toContain(raw);
    else expect(raw).toBe('synced');
    await expect(fsyncDir(dir)).resolves.toBeUndefined();
    // And a commit, which fsyncs its directory, succeeds there.
    const cache = new CacheManager({ root: dir, sublayer: 's', ttl: Number.POSITIVE_INFINITY });
    expect(fs.readFileSync(await cache.getOrFetch('k', () => 'bytes'), 'utf8')).toBe('bytes');
  });
});
