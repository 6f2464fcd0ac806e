import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backgroundSweep } from '../../src/cache-manager.js';
import { CacheManager, type CacheManagerOptions, PayloadCacheError } from '../../src/index.js';
import {
  exists,
  makeTempDir,
  patternBytes,
  releaseFifoReaders,
  removeTempDirs,
  sha256,
  symlinksNeedPrivilege,
  tmpFilesIn,
} from '../helpers.js';
import { recordFigures } from './figures.js';

// Scenario 10, symlink attacks in a shared cache directory (DESIGN.md principles 1 and 6, section 2). The
// cache directory is shared, so anyone who can write in it can plant a symlink where this process will
// later read or write: at a payload, a manifest, a `<key>.lock`, a tmp-looking name, the sublayer directory
// itself or CACHEDIR.TAG, each pointing OUTSIDE the root at a victim file or directory (or at a path that
// does not exist yet). Whatever the cache does, it must never write through such a link: the victim's
// bytes and mtime stay as they were, and nothing appears in or vanishes from the victim directory (whose
// own mtime would betray even a file created and removed again). A symlinked payload or manifest is never
// served. Each test compares a full snapshot of the victim directory before and after.

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const VICTIM = patternBytes(5_000, 99);
const FRESH = patternBytes(3_000, 5);

let base: string;
let root: string;
let dir: string;
let victimDir: string;
let victimFile: string;

const figures = { hostileInputs: 0, bytesVerified: 0 };
afterAll(() => recordFigures('symlink attacks', figures));

beforeEach(async () => {
  base = await makeTempDir();
  root = path.join(base, 'cache');
  dir = path.join(root, 'data');
  victimDir = path.join(base, 'victim');
  victimFile = path.join(victimDir, 'victim.bin');
  await fsp.mkdir(dir, { recursive: true });
  await fsp.mkdir(victimDir);
  // A victim's ordinary files, days old: old enough to look like orphans to a sweep that wandered there.
  await fsp.writeFile(victimFile, VICTIM);
  await fsp.writeFile(path.join(victimDir, 'notes.txt'), 'my notes\n');
  await fsp.writeFile(path.join(victimDir, 'report.pdf'), patternBytes(2_000, 3));
  await fsp.writeFile(path.join(victimDir, 'report.pdf.manifest.json'), '{"mine": true}\n');
  const daysAgo = new Date(Date.now() - 3 * DAY);
  for (const name of await fsp.readdir(victimDir))
    await fsp.utimes(path.join(victimDir, name), daysAgo, daysAgo);
  await fsp.utimes(victimDir, daysAgo, daysAgo);
});
afterEach(removeTempDirs);

function cacheWith(options: Partial<CacheManagerOptions> = {}): CacheManager {
  return new CacheManager({
    sublayer: 'data',
    ttl: HOUR,
    root,
    lockStaleMs: 2_000,
    lockTimeoutMs: 2_500,
    ...options,
  } as CacheManagerOptions);
}

/** Every name under `target` with its type, size, mtime and content hash, and `target`'s own mtime. */
async function snapshot(target: string): Promise<string[]> {
  const lines = [`. mtime=${(await fsp.lstat(target)).mtimeMs}`];
  const visit = async (current: string): Promise<void> => {
    for (const name of (await fsp.readdir(current)).sort()) {
      const full = path.join(current, name);
      const stats = await fsp.lstat(full);
      const relative = path.relative(target, full);
      if (stats.isDirectory()) {
        lines.push(`${relative}/ mtime=${stats.mtimeMs}`);
        await visit(full);
      } else {
        const bytes = stats.isFile() ? await fsp.readFile(full) : Buffer.alloc(0);
        figures.bytesVerified += bytes.length;
        lines.push(
          `${relative} size=${stats.size} mtime=${stats.mtimeMs} sha256=${sha256(bytes).slice(0, 16)}`,
        );
      }
    }
  };
  await visit(target);
  return lines;
}

async function plant(target: string, linkPath: string): Promise<void> {
  await fsp.symlink(target, linkPath);
  figures.hostileInputs += 1;
}

/** A link's own mtime, set into the past so that sweeps see it as an old orphan. */
async function age(linkPath: string, ms: number): Promise<void> {
  const when = new Date(Date.now() - ms);
  await fsp.lutimes(linkPath, when, when);
}

async function expectRegularFileHolding(filePath: string, bytes: Buffer): Promise<void> {
  const stats = await fsp.lstat(filePath);
  expect(stats.isSymbolicLink(), `${filePath} is still a symlink`).toBe(false);
  expect(stats.isFile()).toBe(true);
  const served = await fsp.readFile(filePath);
  expect(sha256(served)).toBe(sha256(bytes));
  figures.bytesVerified += served.length;
}

const settle = (promise: Promise<unknown>) =>
  promise.then(
    (value) => ({ value }) as { value: unknown; error?: undefined },
    (error: unknown) => ({ error }) as { error: unknown; value?: undefined },
  );

const linkIt = it.skipIf(symlinksNeedPrivilege);

describe('a symlink planted at the payload path', () => {
  linkIt(
    'pointing at a victim file with a forged manifest beside it: never served, replaced by a fetch',
    async () => {
      const before = await snapshot(victimDir);
      const payload = path.join(dir, 'k');
      await plant(victimFile, payload);
      // The forged manifest matches the victim byte for byte, so only the symlink check stands in the way.
      await fsp.writeFile(
        `${payload}.manifest.json`,
        JSON.stringify({
          schema_version: 1,
          key: 'k',
          created_at: new Date().toISOString(),
          size_bytes: VICTIM.length,
          sha256: sha256(VICTIM),
        }),
      );
      const cache = cacheWith();
      expect(await cache.get('k')).toBeUndefined();
      expect(await cache.has('k')).toBe(false);
      expect(await cache.list()).toEqual([]);
      let fetches = 0;
      const returned = await cache.getOrFetch('k', () => {
        fetches += 1;
        return FRESH;
      });
      expect(fetches).toBe(1);
      expect(returned).toBe(payload);
      await expectRegularFileHolding(returned, FRESH);
      expect(await cache.get('k')).toBe(payload);
      await cache[backgroundSweep];
      expect(await snapshot(victimDir)).toEqual(before);
    },
  );

  linkIt(
    'pointing at a victim directory: getOrFetch renames over the link, nothing appears inside',
    async () => {
      const before = await snapshot(victimDir);
      await plant(victimDir, path.join(dir, 'k'));
      const cache = cacheWith();
      const returned = await cache.getOrFetch('k', () => FRESH);
      await expectRegularFileHolding(returned, FRESH);
      await cache[backgroundSweep];
      expect(await snapshot(victimDir)).toEqual(before);
    },
  );

  linkIt('dangling towards a path outside the root: getOrFetch does not create that path', async () => {
    const target = path.join(victimDir, 'created-by-cache');
    const before = await snapshot(victimDir);
    await plant(target, path.join(dir, 'k'));
    const cache = cacheWith();
    await expectRegularFileHolding(await cache.getOrFetch('k', () => FRESH), FRESH);
    await cache[backgroundSweep];
    expect(await exists(target)).toBe(false);
    expect(await snapshot(victimDir)).toEqual(before);
  });

  linkIt(
    'left in place: list, verify --fix, prune and clear leave the link alone, delete unlinks it',
    async () => {
      const before = await snapshot(victimDir);
      for (const [key, target] of [
        ['to-file', victimFile],
        ['to-dir', victimDir],
      ] as const) {
        await plant(target, path.join(dir, key));
        await fsp.writeFile(
          path.join(dir, `${key}.manifest.json`),
          JSON.stringify({
            schema_version: 1,
            created_at: new Date().toISOString(),
            size_bytes: VICTIM.length,
          }),
        );
        await age(path.join(dir, key), 2 * HOUR);
      }
      const cache = cacheWith({ staleTmpMs: HOUR });
      await cache.getOrFetch('tags-the-root', () => FRESH);
      expect((await cache.list()).map((entry) => entry.key)).toEqual(['tags-the-root']);
      await cache[backgroundSweep];
      const verified = await cache.verify({ fix: true });
      expect(verified.checked).toBe(1);
      expect(verified.foreign.map((item) => path.basename(item.path)).sort()).toEqual(['to-dir', 'to-file']);
      await cache.prune();
      await cache.clear();
      // Janitors cannot prove they made a symlink: both stay, links still, and their targets untouched.
      expect((await fsp.lstat(path.join(dir, 'to-file'))).isSymbolicLink()).toBe(true);
      expect((await fsp.lstat(path.join(dir, 'to-dir'))).isSymbolicLink()).toBe(true);
      // delete() names the key: the link at its payload name goes, never what it points to.
      await cache.delete('to-file');
      expect(await exists(path.join(dir, 'to-file'))).toBe(false);
      expect(await snapshot(victimDir)).toEqual(before);
    },
  );
});

describe('a symlink planted at the manifest path', () => {
  linkIt('pointing at a victim file: a miss, and publishing replaces the link, not the victim', async () => {
    const before = await snapshot(victimDir);
    const payload = path.join(dir, 'k');
    await fsp.writeFile(payload, FRESH);
    await plant(victimFile, `${payload}.manifest.json`);
    const cache = cacheWith();
    expect(await cache.has('k')).toBe(false);
    let fetches = 0;
    const returned = await cache.getOrFetch('k', () => {
      fetches += 1;
      return FRESH;
    });
    expect(fetches).toBe(1);
    await expectRegularFileHolding(returned, FRESH);
    expect((await fsp.lstat(`${payload}.manifest.json`)).isFile()).toBe(true);
    await cache[backgroundSweep];
    expect(await snapshot(victimDir)).toEqual(before);
  });

  linkIt('pointing at a valid-looking manifest outside the root: not followed (a miss)', async () => {
    const payload = path.join(dir, 'k');
    await fsp.writeFile(payload, FRESH);
    const outsideManifest = path.join(victimDir, 'k.manifest.json');
    await fsp.writeFile(
      outsideManifest,
      JSON.stringify({
        schema_version: 1,
        key: 'k',
        created_at: new Date().toISOString(),
        size_bytes: FRESH.length,
        sha256: sha256(FRESH),
      }),
    );
    const before = await snapshot(victimDir);
    await plant(outsideManifest, `${payload}.manifest.json`);
    const cache = cacheWith();
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.has('k')).toBe(false);
    expect(await cache.list()).toEqual([]);
    expect(await cache.verify()).toMatchObject({ checked: 0 });
    let fetches = 0;
    await cache.getOrFetch('k', () => {
      fetches += 1;
      return FRESH;
    });
    expect(fetches).toBe(1);
    await cache[backgroundSweep];
    expect(await snapshot(victimDir)).toEqual(before);
  });

  linkIt('dangling towards a path outside the root: publishing does not create that path', async () => {
    const target = path.join(victimDir, 'k.manifest.json');
    const before = await snapshot(victimDir);
    await plant(target, path.join(dir, 'k.manifest.json'));
    const cache = cacheWith();
    await expectRegularFileHolding(await cache.getOrFetch('k', () => FRESH), FRESH);
    await cache[backgroundSweep];
    expect(await exists(target)).toBe(false);
    expect(await snapshot(victimDir)).toEqual(before);
  });
});

describe('a symlink planted at the <key>.lock path', () => {
  linkIt(
    'pointing at a victim directory: no owner file is written into it, and the entry is correct',
    async () => {
      const before = await snapshot(victimDir);
      await plant(victimDir, path.join(dir, 'k.lock'));
      const cache = cacheWith();
      const outcome = await settle(cache.getOrFetch('k', () => FRESH));
      // Either the link is cleared away as a non-lock, or the call refuses with a typed error; it never
      // takes the lock inside the victim directory.
      if (outcome.error === undefined) await expectRegularFileHolding(outcome.value as string, FRESH);
      else expect(outcome.error).toBeInstanceOf(PayloadCacheError);
      await cache[backgroundSweep];
      await cache.prune();
      expect(await exists(path.join(victimDir, 'owner.json'))).toBe(false);
      expect(await snapshot(victimDir)).toEqual(before);
    },
  );

  linkIt(
    'pointing at a victim file, or dangling outside: the call settles and the victim is untouched',
    async () => {
      const missing = path.join(victimDir, 'lock-target');
      const before = await snapshot(victimDir);
      await plant(victimFile, path.join(dir, 'to-file.lock'));
      await plant(missing, path.join(dir, 'dangling.lock'));
      const cache = cacheWith();
      const startedAt = Date.now();
      const outcomes = await Promise.all([
        settle(cache.getOrFetch('to-file', () => FRESH)),
        settle(cache.getOrFetch('dangling', () => FRESH)),
      ]);
      // Bounded by lockTimeoutMs (2.5 s) at worst (DESIGN.md principle 5); generous for a loaded machine.
      expect(Date.now() - startedAt).toBeLessThan(20_000);
      for (const [index, outcome] of outcomes.entries()) {
        if (outcome.error === undefined) {
          await expectRegularFileHolding(outcome.value as string, FRESH);
        } else {
          // DESIGN.md principle 6: bad input gets a clear, typed error (not a raw ENOTDIR from inside).
          expect(outcome.error, `outcome ${index}: ${String(outcome.error)}`).toBeInstanceOf(
            PayloadCacheError,
          );
        }
      }
      await cache[backgroundSweep];
      await cache.prune();
      await cache.clear();
      expect(await exists(missing)).toBe(false);
      expect(await snapshot(victimDir)).toEqual(before);
    },
  );
});

describe('a symlink planted at a tmp-looking path', () => {
  // A writer's own tmp names carry 64 random bits and are created with O_EXCL, so a planted link cannot be
  // written through; what remains to prove is that the orphan sweep, which removes old tmp files, leaves
  // such a link (it is no file the cache wrote) and never empties the directory it points at.
  linkIt(
    'pointing at a victim file and a victim directory: writes go elsewhere, sweeps leave the links alone',
    async () => {
      const host = os.hostname().replace(/[^A-Za-z0-9-]/g, '_');
      const toFile = path.join(dir, `k.tmp.${host}.${process.pid}.0123456789abcdef`);
      const toDir = path.join(dir, `k.manifest.json.tmp.${host}.${process.pid}.fedcba9876543210`);
      const before = await snapshot(victimDir);
      await plant(victimFile, toFile);
      await plant(victimDir, toDir);
      await age(toFile, 2 * HOUR);
      await age(toDir, 2 * HOUR);
      const cache = cacheWith({ staleTmpMs: HOUR });
      await expectRegularFileHolding(await cache.getOrFetch('k', () => FRESH), FRESH);
      await cache[backgroundSweep];
      const pruned = await cache.prune();
      expect(pruned.foreign.map((item) => item.path).sort()).toEqual([toDir, toFile].sort());
      await cache.clear();
      expect((await tmpFilesIn(dir)).sort()).toEqual([path.basename(toDir), path.basename(toFile)].sort());
      expect(await snapshot(victimDir)).toEqual(before);
    },
  );
});

describe('a symlink planted at CACHEDIR.TAG', () => {
  linkIt('dangling towards a path outside the root: the tag is not written through it', async () => {
    const target = path.join(victimDir, 'CACHEDIR.TAG');
    const before = await snapshot(victimDir);
    await plant(target, path.join(root, 'CACHEDIR.TAG'));
    const cache = cacheWith();
    await expectRegularFileHolding(await cache.getOrFetch('k', () => FRESH), FRESH);
    await cache[backgroundSweep];
    expect(await exists(target)).toBe(false);
    expect(await snapshot(victimDir)).toEqual(before);
  });
});

describe('the sublayer directory itself is a symlink to a directory outside the root', () => {
  // <root>/data -> victim directory. Writes check for this (ERR_UNSAFE_PATH); every other operation that
  // touches the sublayer must be as careful, since deleting "orphans" there deletes the victim's files.
  beforeEach(async () => {
    await fsp.rm(dir, { recursive: true });
    await plant(victimDir, dir);
  });

  linkIt('getOrFetch refuses with ERR_UNSAFE_PATH and leaves the target directory as it was', async () => {
    const before = await snapshot(victimDir);
    const cache = cacheWith();
    let fetches = 0;
    const outcome = await settle(
      cache.getOrFetch('k', () => {
        fetches += 1;
        return FRESH;
      }),
    );
    expect(outcome.error).toBeInstanceOf(PayloadCacheError);
    expect((outcome.error as PayloadCacheError).code).toBe('ERR_UNSAFE_PATH');
    expect(fetches).toBe(0);
    await cache[backgroundSweep];
    const after = await snapshot(victimDir);
    // Nothing new was created there...
    const names = (lines: string[]) => lines.slice(1).map((line) => line.split(' ')[0]);
    expect(names(after).filter((name) => !names(before).includes(name))).toEqual([]);
    // ...and nothing was removed or changed (the once-per-manager orphan sweep runs on this call too).
    expect(after).toEqual(before);
  });

  linkIt('get, has and list (the first operation starts the orphan sweep) delete nothing there', async () => {
    const before = await snapshot(victimDir);
    const cache = cacheWith();
    // A miss or a refusal (ERR_UNSAFE_PATH) will do; serving or sweeping the victim's files will not.
    const calls: [string, () => Promise<unknown>, unknown][] = [
      ['get', () => cache.get('victim.bin'), undefined],
      ['has', () => cache.has('notes.txt'), false],
      ['list', () => cache.list(), []],
    ];
    for (const [name, call, miss] of calls) {
      const outcome = await settle(call());
      if (outcome.error === undefined) expect(outcome.value, name).toEqual(miss);
      else expect((outcome.error as PayloadCacheError).code, name).toBe('ERR_UNSAFE_PATH');
    }
    await cache[backgroundSweep];
    expect(await snapshot(victimDir)).toEqual(before);
  });

  linkIt('delete() removes nothing there', async () => {
    const before = await snapshot(victimDir);
    const cache = cacheWith();
    await settle(cache.delete('notes.txt'));
    await settle(cache.delete('report.pdf'));
    expect(await snapshot(victimDir)).toEqual(before);
  });

  linkIt('clear() removes nothing there', async () => {
    const before = await snapshot(victimDir);
    const cache = cacheWith();
    await settle(cache.clear());
    expect(await snapshot(victimDir)).toEqual(before);
  });

  linkIt('prune() and verify({ fix: true }) remove nothing there', async () => {
    const before = await snapshot(victimDir);
    const cache = cacheWith();
    await settle(cache.prune());
    await settle(cache.verify({ fix: true }));
    expect(await snapshot(victimDir)).toEqual(before);
  });
});

describe('other files planted in a shared cache directory', () => {
  it.skipIf(process.platform === 'win32')(
    'a FIFO planted as <key>.lock/owner.json: the lock wait stays bounded by lockTimeoutMs',
    async () => {
      // The heartbeat is read with a plain blocking open; on a FIFO that waits for a writer forever, past
      // lockTimeoutMs and deaf to AbortSignal (DESIGN.md principle 5: every wait is bounded).
      const lockDir = path.join(dir, 'k.lock');
      await fsp.mkdir(lockDir);
      const fifo = path.join(lockDir, 'owner.json');
      execFileSync('mkfifo', [fifo]);
      figures.hostileInputs += 1;
      const cache = cacheWith();
      const call = settle(cache.getOrFetch('k', () => FRESH));
      const limitMs = 2_500 + 2_500;
      const first = await Promise.race([
        call,
        new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), limitMs)),
      ]);
      await releaseFifoReaders(dir, Promise.all([call, cache[backgroundSweep]]));
      expect(first, `getOrFetch still blocked on the FIFO after ${limitMs} ms`).not.toBe('hung');
    },
    30_000,
  );
});
