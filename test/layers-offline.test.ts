import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CacheManager,
  type CacheManagerOptions,
  InvalidOptionsError,
  OfflineMissError,
} from '../src/index.js';
import { buildZip } from './archive-builders.js';
import { makeTempDir, manualClock, patternBytes, removeTempDirs, sha256 } from './helpers.js';

// Read-only layers (a site cache beside each user's own) and offline mode (never a request): what is served
// from where, what is never written, and the typed miss. Every fetcher here that must not run throws.

const HOUR = 3_600_000;
let siteRoot: string;
let userRoot: string;
let clock: ReturnType<typeof manualClock>;

beforeEach(async () => {
  siteRoot = await makeTempDir('payload-cache-site-');
  userRoot = await makeTempDir('payload-cache-user-');
  clock = manualClock();
});
afterEach(async () => {
  delete process.env.PAYLOAD_CACHE_READONLY_ROOTS;
  delete process.env.PAYLOAD_CACHE_OFFLINE;
  await removeTempDirs();
});

function cacheAt(root: string, options: Partial<CacheManagerOptions> = {}): CacheManager {
  return new CacheManager({ sublayer: 'models', ttl: HOUR, root, now: clock.now, ...options });
}

const neverCalled = () => {
  throw new Error('the fetcher must not be called');
};

/** Every file under `root` with its size, mtime and content hash: equal snapshots mean nothing changed. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of await fsp.readdir(root, { recursive: true })) {
    const file = path.join(root, name);
    const stats = await fsp.lstat(file);
    out[name] = stats.isFile()
      ? `${stats.size} ${stats.mtimeMs} ${sha256(await fsp.readFile(file))}`
      : `dir ${stats.mtimeMs}`;
  }
  return out;
}

/** The site cache as an admin fills it: two entries at the clock's start. */
async function fillSite(): Promise<void> {
  const admin = cacheAt(siteRoot);
  await admin.getOrFetch('a.bin', () => patternBytes(1_000, 1));
  await admin.getOrFetch('b.bin', () => patternBytes(2_000, 2));
}

describe('read-only roots', () => {
  it('serves a fresh site entry in place, without copying or touching it', async () => {
    await fillSite();
    clock.advance(10 * 60_000);
    const before = await snapshot(siteRoot);
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot] });
    const served = await user.getOrFetch('a.bin', neverCalled);
    expect(served).toBe(path.join(siteRoot, 'models', 'a.bin'));
    expect(sha256(await fsp.readFile(served))).toBe(sha256(patternBytes(1_000, 1)));
    expect(await user.get('b.bin')).toBe(path.join(siteRoot, 'models', 'b.bin'));
    expect(await user.has('b.bin')).toBe(true);
    // Past touchIntervalMs, a hit in the own root would record its use; in the site root nothing changes.
    expect(await snapshot(siteRoot)).toEqual(before);
    expect(await fsp.readdir(userRoot)).toEqual([]);
    expect(user.stats()).toMatchObject({ hits: 2, misses: 0, fetches: 0 });
  });

  it('prefers the own root, fetches a miss into the own root only, and refetches what expired on the site', async () => {
    await fillSite();
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot] });
    // refresh fetches into the own root, which then shadows the site's entry.
    const fetched = await user.getOrFetch('a.bin', () => patternBytes(500, 9), { refresh: true });
    expect(fetched).toBe(path.join(userRoot, 'models', 'a.bin'));
    expect(await user.getOrFetch('a.bin', neverCalled)).toBe(fetched);

    const before = await snapshot(siteRoot);
    expect(await user.getOrFetch('new.bin', () => patternBytes(300, 3))).toBe(
      path.join(userRoot, 'models', 'new.bin'),
    );
    clock.advance(2 * HOUR);
    expect(await user.getOrFetch('b.bin', () => patternBytes(700, 4))).toBe(
      path.join(userRoot, 'models', 'b.bin'),
    );
    expect(await snapshot(siteRoot)).toEqual(before);
  });

  it('lists site entries as read-only, and prune, clear and verify --fix never touch them', async () => {
    await fillSite();
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot], keepN: 1 });
    await user.getOrFetch('mine.bin', () => patternBytes(100, 5));
    const listed = await user.list();
    // The own root's entries first, then the site's.
    expect(listed.map(({ key, readOnly, root }) => ({ key, readOnly, root }))).toEqual([
      { key: 'mine.bin', readOnly: false, root: userRoot },
      expect.objectContaining({ readOnly: true, root: siteRoot }),
      expect.objectContaining({ readOnly: true, root: siteRoot }),
    ]);
    expect(
      listed
        .slice(1)
        .map((entry) => entry.key)
        .sort(),
    ).toEqual(['a.bin', 'b.bin']);

    clock.advance(2 * HOUR);
    const before = await snapshot(siteRoot);
    await user.prune();
    await user.verify({ fix: true });
    const cleared = await user.clear();
    expect(cleared.removed.every((item) => item.path.startsWith(userRoot))).toBe(true);
    expect(await snapshot(siteRoot)).toEqual(before);
  });

  it('takes PAYLOAD_CACHE_READONLY_ROOTS when the option is absent, and the option over it', async () => {
    await fillSite();
    process.env.PAYLOAD_CACHE_READONLY_ROOTS = ['', path.join(userRoot, 'nowhere'), siteRoot].join(
      path.delimiter,
    );
    expect(await cacheAt(userRoot).get('a.bin')).toBe(path.join(siteRoot, 'models', 'a.bin'));
    expect(await cacheAt(userRoot, { readOnlyRoots: [] }).get('a.bin')).toBeUndefined();
  });
});

describe('offline mode', () => {
  it('serves fresh and expired entries, never calls the fetcher, and counts what it served stale', async () => {
    const online = cacheAt(userRoot);
    await online.getOrFetch('fresh.bin', () => patternBytes(100, 1));
    await online.getOrFetch('old.bin', () => patternBytes(200, 2));
    const offline = cacheAt(userRoot, { offline: true, ttl: 30 * 60_000 });
    clock.advance(20 * 60_000);
    await online.getOrFetch('fresh.bin', () => patternBytes(100, 1), { refresh: true });
    clock.advance(20 * 60_000);
    // fresh.bin was refreshed 20 minutes ago, old.bin is 40 minutes old: past the 30-minute ttl.
    expect(await offline.getOrFetch('fresh.bin', neverCalled)).toBe(
      path.join(userRoot, 'models', 'fresh.bin'),
    );
    expect(await offline.getOrFetch('old.bin', neverCalled, { refresh: true })).toBe(
      path.join(userRoot, 'models', 'old.bin'),
    );
    expect(offline.stats()).toMatchObject({ hits: 2, fetches: 0, staleServedOffline: 1 });
  });

  it('an absent or corrupt entry is an OfflineMissError naming the key, the sublayer and every root', async () => {
    const online = cacheAt(userRoot);
    const corrupt = await online.getOrFetch('corrupt.bin', () => patternBytes(100, 1));
    await fsp.truncate(corrupt, 50);
    const offline = cacheAt(userRoot, { offline: true, readOnlyRoots: [siteRoot] });
    for (const key of ['absent.bin', 'corrupt.bin']) {
      const error = await offline.getOrFetch(key, neverCalled).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(OfflineMissError);
      expect(error).toMatchObject({
        code: 'ERR_OFFLINE_MISS',
        key,
        sublayer: 'models',
        roots: [userRoot, siteRoot],
      });
      expect((error as Error).message).toContain(siteRoot);
    }
    expect(offline.stats().errors).toEqual({ ERR_OFFLINE_MISS: 2 });
  });

  it('serves an expired site entry offline, and follows PAYLOAD_CACHE_OFFLINE', async () => {
    await fillSite();
    clock.advance(5 * HOUR);
    process.env.PAYLOAD_CACHE_OFFLINE = 'yes';
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot] });
    expect(await user.getOrFetch('a.bin', neverCalled)).toBe(path.join(siteRoot, 'models', 'a.bin'));
    expect(await cacheAt(userRoot, { offline: false }).getOrFetch('a.bin', () => 'online')).toBe(
      path.join(userRoot, 'models', 'a.bin'),
    );
    // Read when a call would go past a fresh entry in the own root, and strictly.
    process.env.PAYLOAD_CACHE_OFFLINE = 'sometimes';
    await expect(user.getOrFetch('b.bin', neverCalled)).rejects.toThrow(InvalidOptionsError);
    process.env.PAYLOAD_CACHE_OFFLINE = '0';
    expect(await user.getOrFetch('b.bin', () => 'online again')).toBe(path.join(userRoot, 'models', 'b.bin'));
  });
});

describe('getOrExtract with read-only roots', () => {
  const archive = buildZip([
    { name: 'model/weights.bin', content: patternBytes(5_000, 7) },
    { name: 'model/config.json', content: '{"layers":2}' },
  ]);
  const fetchArchive = () => archive;

  async function filesUnder(dir: string): Promise<string[]> {
    const entries = await fsp.readdir(dir, { recursive: true, withFileTypes: true });
    return entries
      .filter((entry) => entry.isFile())
      .map((entry) => path.relative(dir, path.join(entry.parentPath, entry.name)).split(path.sep).join('/'))
      .sort();
  }

  it('serves the site extraction in place: no download, nothing written to either root', async () => {
    const siteContent = await cacheAt(siteRoot).getOrExtract('model.zip', fetchArchive);
    const before = await snapshot(siteRoot);
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot] });

    const served = await user.getOrExtract('model.zip', neverCalled);

    expect(served).toBe(siteContent);
    expect(served.startsWith(path.join(siteRoot, 'models'))).toBe(true);
    expect(await filesUnder(served)).toEqual(['model/config.json', 'model/weights.bin']);
    expect(await snapshot(siteRoot)).toEqual(before);
    expect(await user.list()).toEqual([expect.objectContaining({ key: 'model.zip', readOnly: true })]);
    expect(await snapshot(userRoot)).not.toHaveProperty(path.join('models', 'model.zip'));
  });

  it('a site archive without its extraction is downloaded and extracted into the user root', async () => {
    await cacheAt(siteRoot).getOrFetch('model.zip', fetchArchive);
    const before = await snapshot(siteRoot);
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot] });
    let fetches = 0;

    const served = await user.getOrExtract('model.zip', () => {
      fetches += 1;
      return archive;
    });

    expect(fetches).toBe(1);
    expect(served.startsWith(path.join(userRoot, 'models'))).toBe(true);
    expect(await filesUnder(served)).toEqual(['model/config.json', 'model/weights.bin']);
    expect(await snapshot(siteRoot)).toEqual(before);
  });

  it('offline: an expired site extraction is served, a key extracted nowhere is an OfflineMissError naming every root', async () => {
    const siteContent = await cacheAt(siteRoot).getOrExtract('model.zip', fetchArchive);
    await cacheAt(siteRoot).getOrFetch('plain.zip', fetchArchive);
    clock.advance(5 * HOUR);
    const offline = cacheAt(userRoot, { offline: true, readOnlyRoots: [siteRoot] });

    expect(await offline.getOrExtract('model.zip', neverCalled)).toBe(siteContent);
    for (const key of ['plain.zip', 'absent.zip']) {
      const error = await offline.getOrExtract(key, neverCalled).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(OfflineMissError);
      expect(error).toMatchObject({ key, roots: [userRoot, siteRoot] });
    }
  });

  it('staleIfError: when the download fails, an expired site extraction is served', async () => {
    const siteContent = await cacheAt(siteRoot).getOrExtract('model.zip', fetchArchive);
    clock.advance(5 * HOUR);
    const user = cacheAt(userRoot, { readOnlyRoots: [siteRoot] });

    const served = await user.getOrExtract(
      'model.zip',
      () => {
        throw new Error('the server is down');
      },
      { staleIfError: true },
    );

    expect(served).toBe(siteContent);
  });
});
