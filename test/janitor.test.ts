import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backgroundEviction, backgroundSweep } from '../src/cache-manager.js';
import {
  CacheManager,
  type CacheManagerOptions,
  ForeignFileError,
  InvalidOptionsError,
  NotCacheRootError,
} from '../src/index.js';
import { tryLock } from '../src/soft-lock.js';
import { treeSnapshot } from './cli-helpers.js';
import { exists, makeTempDir, manualClock, removeTempDirs } from './helpers.js';

// The janitor deletes only what it can prove it wrote, and only what its plan listed (issue 7).

const HOUR = 3_600_000;
let root: string;
let dir: string;
let clock: ReturnType<typeof manualClock>;

beforeEach(async () => {
  root = await makeTempDir('payload-cache-janitor-lib-');
  dir = path.join(root, 'data');
  clock = manualClock();
});

afterEach(removeTempDirs);

function cacheWith(options: Partial<CacheManagerOptions> = {}): CacheManager {
  return new CacheManager({
    sublayer: 'data',
    root,
    ttl: HOUR,
    now: clock.now,
    staleTmpMs: HOUR,
    ...options,
  });
}

async function ageFile(file: string, ageMs: number): Promise<void> {
  const when = new Date(clock.now() - ageMs);
  await fsp.utimes(file, when, when);
}

describe('reads never delete', () => {
  it('list(), has() and get() on a fresh manager leave old orphans, stale locks and strays in place', async () => {
    await cacheWith().getOrFetch('k', () => 'bytes');
    const tmp = path.join(dir, 'k.tmp.otherhost.7.0123456789abcdef');
    await fsp.writeFile(tmp, 'partial');
    await ageFile(tmp, 2 * HOUR);
    await fsp.writeFile(path.join(dir, 'ghost.manifest.json'), '{}');
    await fsp.mkdir(path.join(dir, 'dead.lock'));
    await ageFile(path.join(dir, 'dead.lock'), 2 * HOUR);
    const before = await treeSnapshot(root);
    const reader = cacheWith();
    expect((await reader.list()).map((entry) => entry.key)).toEqual(['k']);
    expect(await reader.has('k')).toBe(true);
    expect(await reader.get('absent')).toBeUndefined();
    await reader[backgroundSweep];
    await new Promise((resolve) => setImmediate(resolve));
    expect(await treeSnapshot(root)).toEqual(before);
  });
});

describe('things the cache did not make, at its own names', () => {
  it('a directory at the payload name: getOrFetch rejects with ForeignFileError and its files stay', async () => {
    await cacheWith().getOrFetch('other', () => 'x');
    await fsp.mkdir(path.join(dir, 'datasets', '2024'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'datasets', '2024', 'big.bin'), 'precious');
    const error = await cacheWith()
      .getOrFetch('datasets', () => 'new')
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ForeignFileError);
    expect((error as ForeignFileError).code).toBe('ERR_FOREIGN_FILE');
    expect((error as ForeignFileError).path).toBe(path.join(dir, 'datasets'));
    expect(await fsp.readFile(path.join(dir, 'datasets', '2024', 'big.bin'), 'utf8')).toBe('precious');
    expect((await fsp.readdir(dir)).filter((name) => name.includes('.tmp.'))).toEqual([]);
  });

  it('a directory put at a committed payload name: ForeignFileError before anything moves, the manifest stays', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('datasets', () => 'old');
    const manifestBefore = await fsp.readFile(path.join(dir, 'datasets.manifest.json'), 'utf8');
    await fsp.rm(path.join(dir, 'datasets'));
    await fsp.mkdir(path.join(dir, 'datasets', '2024'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'datasets', '2024', 'big.bin'), 'precious');

    await expect(cache.getOrFetch('datasets', () => 'new', { refresh: true })).rejects.toBeInstanceOf(
      ForeignFileError,
    );

    expect(await fsp.readFile(path.join(dir, 'datasets.manifest.json'), 'utf8')).toBe(manifestBefore);
    expect(await fsp.readFile(path.join(dir, 'datasets', '2024', 'big.bin'), 'utf8')).toBe('precious');
    expect((await fsp.readdir(dir)).filter((name) => name.includes('.tmp.'))).toEqual([]);
  });

  it('a directory at the manifest name: getOrFetch rejects with ForeignFileError, the old entry and its files stay', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('photos', () => 'old');
    await fsp.rm(path.join(dir, 'photos.manifest.json'));
    await fsp.mkdir(path.join(dir, 'photos.manifest.json'));
    await fsp.writeFile(path.join(dir, 'photos.manifest.json', 'holiday.jpg'), 'jpeg');
    await expect(cache.getOrFetch('photos', () => 'new')).rejects.toBeInstanceOf(ForeignFileError);
    expect(await fsp.readFile(path.join(dir, 'photos'), 'utf8')).toBe('old');
    expect(await fsp.readFile(path.join(dir, 'photos.manifest.json', 'holiday.jpg'), 'utf8')).toBe('jpeg');
  });

  it('a lock-named directory of other files: getOrFetch rejects with ForeignFileError, never enters it', async () => {
    await cacheWith().getOrFetch('other', () => 'x');
    const lock = path.join(dir, 'backup.lock');
    await fsp.mkdir(lock);
    await fsp.writeFile(path.join(lock, 'db.dump'), 'dump');
    const old = new Date(Date.now() - HOUR);
    await fsp.utimes(lock, old, old);
    const error = await cacheWith({ lockStaleMs: 2_000, lockTimeoutMs: 60_000 })
      .getOrFetch('backup', () => 'new')
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ForeignFileError);
    expect(await fsp.readdir(lock)).toEqual(['db.dump']);
  });

  it('prune(), clear() and verify({ fix: true }) refuse a root without payload-cache CACHEDIR.TAG and change nothing', async () => {
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, 'notes.txt'), 'mine');
    const tmpLike = path.join(dir, 'x.tmp.h.1.0123456789abcdef');
    await fsp.writeFile(tmpLike, 'also mine');
    await ageFile(tmpLike, 2 * HOUR);
    await fsp.writeFile(
      path.join(root, 'CACHEDIR.TAG'),
      'Signature: 8a477f597d28d172789f06886806bc55\n# another tool\n',
    );
    const before = await treeSnapshot(root);
    const cache = cacheWith();
    await expect(cache.prune()).rejects.toBeInstanceOf(NotCacheRootError);
    await expect(cache.planPrune()).rejects.toBeInstanceOf(NotCacheRootError);
    await expect(cache.clear()).rejects.toBeInstanceOf(NotCacheRootError);
    await expect(cache.verify({ fix: true })).rejects.toBeInstanceOf(NotCacheRootError);
    expect((await cache.verify()).foreign.map((item) => path.basename(item.path))).toEqual(['notes.txt']);
    expect(await treeSnapshot(root)).toEqual(before);
  });
});

describe('a plan is carried out exactly', () => {
  it('an entry republished after the plan was made is kept as changed, not removed', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('k', () => 'v1');
    clock.advance(2 * HOUR);
    const plan = await cache.planPrune();
    expect(plan.remove.map((item) => [item.key, item.reason])).toEqual([['k', 'expired']]);
    const republished = await cache.getOrFetch('k', () => 'v2', { refresh: true });
    const report = await cache.carryOut(plan);
    expect(report.removed).toEqual([]);
    expect(report.kept).toEqual([{ key: 'k', reason: 'changed' }]);
    expect(await fsp.readFile(republished, 'utf8')).toBe('v2');
    expect(await cache.has('k')).toBe(true);
  });

  it('carryOut() acts only on plans it made, for its own sublayer', async () => {
    const cache = cacheWith();
    const victim = await cache.getOrFetch('k', () => 'v1');
    const forged = {
      dir,
      remove: [{ key: 'k', path: victim, reason: 'expired' as const, sizeBytes: 2 }],
      kept: [],
      foreign: [],
    };
    await expect(cache.carryOut(forged)).rejects.toBeInstanceOf(InvalidOptionsError);
    const other = new CacheManager({ sublayer: 'other', root, ttl: HOUR, now: clock.now });
    await expect(other.carryOut(await cache.planPrune())).rejects.toBeInstanceOf(InvalidOptionsError);
    expect(await exists(victim)).toBe(true);
  });

  it('keepN is exact: a write into a full sublayer of 150 with keepN 100 leaves exactly 100', async () => {
    const filler = cacheWith({ keepN: Number.POSITIVE_INFINITY, ttl: Number.POSITIVE_INFINITY });
    for (let index = 0; index < 150; index += 1) await filler.getOrFetch(`k${index}`, () => 'x');
    clock.advance(HOUR);
    const writer = cacheWith({ keepN: 100, ttl: Number.POSITIVE_INFINITY });
    await writer.getOrFetch('new', () => 'y');
    await writer[backgroundEviction];
    const manifests = (await fsp.readdir(dir)).filter((name) => name.endsWith('.manifest.json'));
    expect(manifests).toHaveLength(100);
    expect(manifests).toContain('new.manifest.json');
  });

  it('a payload delete() had to leave to a writer is swept later, proven by the manifest it retired', async () => {
    const cache = cacheWith();
    const payload = await cache.getOrFetch('k', () => 'bytes');
    const lock = await tryLock(`${payload}.lock`, 10_000);
    expect(await cache.delete('k')).toBe(true);
    await lock?.release();
    expect(await exists(payload)).toBe(true);
    expect(await cache.has('k')).toBe(false);
    clock.advance(2 * HOUR);
    await ageFile(payload, 2 * HOUR);
    const report = await cache.prune();
    expect(report.removed.map((item) => [item.key, item.reason])).toEqual([['k', 'orphan-payload']]);
    expect(await fsp.readdir(dir)).toEqual([]);
  });
});
