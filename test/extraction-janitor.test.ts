import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { backgroundEviction, backgroundSweep, CacheManager } from '../src/cache-manager.js';
import { isShortenedTmpTarget, tmpNameTarget, tmpPathFor } from '../src/entry-paths.js';
import { tryLock } from '../src/soft-lock.js';
import { buildTar, buildZip } from './archive-builders.js';
import { exists, makeTempDir, manualClock, removeTempDirs, symlinksNeedPrivilege } from './helpers.js';

afterEach(removeTempDirs);

// What prune, clear and the sweep do with extractions (docs/archives.md, "The janitor"): remove only
// what a marker proves the cache made, never one used within the in-use window (2 × touchIntervalMs +
// evictionGraceMs = 130 s by default) except on clear, never one whose key is locked, never following links.

const SUBLAYER = 'archives';
const KEY = 'release.zip';
const IN_USE_WINDOW_MS = 130_000;
const zipOf = (release: number) => buildZip([{ name: 'notes.txt', content: `release ${release}\n` }]);

async function setup(ttl = 60_000) {
  // Starts at the real time: tmp directories are judged by both clocks.
  const clock = manualClock(Date.now());
  const root = await makeTempDir('payload-cache-extraction-janitor-');
  const cache = new CacheManager({ sublayer: SUBLAYER, root, ttl, now: clock.now });
  let release = 1;
  const fetchRelease = () => zipOf(release);
  const extract = async (next?: number) => {
    if (next !== undefined) release = next;
    return path.dirname(await cache.getOrExtract(KEY, fetchRelease));
  };
  return { clock, root, cache, dir: path.join(root, SUBLAYER), extract };
}

describe('prune', () => {
  it('removes a superseded extraction once it is out of the in-use window, and keeps the current one', async () => {
    const { clock, cache, extract } = await setup();
    const first = await extract();
    clock.advance(120_000); // the entry has expired: the next call fetches release 2
    const second = await extract(2);
    expect(second).not.toBe(first);

    const early = await cache.prune();
    expect(early.removed).toEqual([]);
    expect(early.kept).toContainEqual({ key: KEY, reason: 'recently-used' });
    expect(await exists(first)).toBe(true);

    clock.advance(IN_USE_WINDOW_MS);
    const later = await cache.prune();
    expect(later.removed).toContainEqual({ key: KEY, path: first, reason: 'superseded' });
    expect(await exists(first)).toBe(false);
    // The entry itself is expired by now and goes, and its extraction with it, with the entry's reason.
    expect(later.removed).toContainEqual({ key: KEY, path: second, reason: 'expired' });
    expect(await fsp.readdir(path.dirname(first))).toEqual([]);
  });

  it('keeps the current extraction of an entry that stays', async () => {
    const { clock, cache, extract } = await setup(Number.POSITIVE_INFINITY);
    const current = await extract();
    clock.advance(2 * IN_USE_WINDOW_MS);
    const report = await cache.prune();
    expect(report.removed.filter((item) => item.path === current)).toEqual([]);
    expect(await exists(current)).toBe(true);
  });

  it('never removes an extraction whose key is locked (a writer is at work)', async () => {
    const { clock, cache, dir, extract } = await setup();
    const first = await extract();
    clock.advance(120_000);
    await extract(2);
    clock.advance(IN_USE_WINDOW_MS);
    const held = await tryLock(path.join(dir, `${KEY}.lock`), 10_000);
    try {
      const report = await cache.prune();
      expect(report.kept).toContainEqual({ key: KEY, reason: 'locked' });
      expect(await exists(first)).toBe(true);
    } finally {
      await held?.release();
    }
  });
});

describe('clear', () => {
  it('removes every extraction it can prove it made, even one used just now, and leaves the rest alone', async () => {
    const { cache, dir, extract } = await setup();
    const extraction = await extract();
    const lookalike = path.join(dir, `other.zip.extracted.${'0'.repeat(16)}`);
    await fsp.mkdir(path.join(lookalike, 'content'), { recursive: true });
    await fsp.writeFile(path.join(lookalike, 'content', 'mine.txt'), 'not the cache’s');

    const report = await cache.clear();
    expect(report.removed).toContainEqual({ key: KEY, path: extraction, reason: 'cleared' });
    expect(report.foreign).toContainEqual({ path: lookalike, reason: 'unproven-extraction' });
    expect((await fsp.readdir(dir)).sort()).toEqual([path.basename(lookalike)]);
    expect(await fsp.readFile(path.join(lookalike, 'content', 'mine.txt'), 'utf8')).toBe('not the cache’s');
  });

  it.skipIf(symlinksNeedPrivilege)('never follows a symlink planted inside an extraction', async () => {
    const { root, cache, extract } = await setup();
    const extraction = await extract();
    const outside = path.join(root, 'outside');
    await fsp.mkdir(outside);
    await fsp.writeFile(path.join(outside, 'precious.txt'), 'keep');
    await fsp.symlink(outside, path.join(extraction, 'content', 'planted'));
    await cache.clear();
    expect(await exists(extraction)).toBe(false);
    expect(await fsp.readFile(path.join(outside, 'precious.txt'), 'utf8')).toBe('keep');
  });

  it('after clear, getOrExtract fetches and extracts again', async () => {
    const { cache, extract } = await setup();
    const first = await extract();
    await cache.clear();
    expect(await extract()).toBe(first);
    expect(await fsp.readFile(path.join(first, 'content', 'notes.txt'), 'utf8')).toBe('release 1\n');
  });
});

describe('the sweep and prune remove an extraction’s tmp directory left by a dead writer', () => {
  /** A copy of a published extraction under a tmp name, as a writer killed before its rename leaves it. */
  async function orphanTmpOf(
    extraction: string,
    ageMs: number,
    tmp = tmpPathFor(extraction),
  ): Promise<string> {
    await fsp.cp(extraction, tmp, { recursive: true });
    const then = new Date(Date.now() - ageMs);
    await fsp.utimes(tmp, then, then);
    return tmp;
  }

  it('once older than staleTmpMs and its key unlocked', async () => {
    const { cache, extract } = await setup();
    const extraction = await extract();
    const young = await orphanTmpOf(extraction, 0);
    const old = await orphanTmpOf(extraction, 25 * 60 * 60_000);
    const report = await cache.prune();
    expect(report.removed).toContainEqual({ key: KEY, path: old, reason: 'orphan-tmp' });
    expect(await exists(old)).toBe(false);
    expect(await exists(young)).toBe(true);
    expect(await exists(extraction)).toBe(true);
  });

  it('by the background sweep of a new manager', async () => {
    const { root, extract } = await setup();
    const old = await orphanTmpOf(await extract(), 25 * 60 * 60_000);
    const fresh = new CacheManager({ sublayer: SUBLAYER, root, ttl: 60_000 });
    await fresh.getOrFetch(KEY, () => zipOf(1));
    await fresh[backgroundSweep];
    expect(await exists(old)).toBe(false);
  });

  it('an empty one (a writer killed right after mkdir) only while it is still empty', async () => {
    const { cache, extract } = await setup();
    const empty = tmpPathFor(await extract());
    await fsp.mkdir(empty);
    const then = new Date(Date.now() - 25 * 60 * 60_000);
    await fsp.utimes(empty, then, then);
    const plan = await cache.planPrune();
    expect(plan.remove).toContainEqual(expect.objectContaining({ path: empty, reason: 'orphan-tmp' }));
    // Between the plan and the act, someone puts a file there: rmdir fails, the file stays.
    await fsp.writeFile(path.join(empty, 'mine.txt'), 'not the cache’s');
    const report = await cache.carryOut(plan);
    expect(report.removed.map((item) => item.path)).not.toContain(empty);
    expect(await fsp.readFile(path.join(empty, 'mine.txt'), 'utf8')).toBe('not the cache’s');
  });

  it('for a key so long that the tmp name was shortened (proven by its marker and the digest in its name)', async () => {
    const { cache, dir } = await setup();
    const longKey = `${'k'.repeat(196)}.zip`;
    const extraction = path.dirname(await cache.getOrExtract(longKey, () => zipOf(1)));
    // Whether tmpPathFor shortens this name depends on the host name's and the pid's length (Wine's pids
    // are short), so the orphan gets the shortened shape by hand: a prefix, '-', 16 hex of the name's
    // sha256, the tmp tail. That tmpPathFor's own shortened names have that shape is checked apart.
    const name = path.basename(extraction);
    const digest = createHash('sha256').update(name).digest('hex').slice(0, 16);
    const shortened = path.join(dir, `${name.slice(0, 150)}-${digest}.tmp.host.1.0123456789abcdef`);
    const old = await orphanTmpOf(extraction, 25 * 60 * 60_000, shortened);
    const tooLong = 'x'.repeat(250);
    const madeByTmpPathFor = path.basename(tmpPathFor(path.join(dir, tooLong)));
    expect(isShortenedTmpTarget(tmpNameTarget(madeByTmpPathFor), tooLong)).toBe(true);
    const lookAlike = path.join(dir, `${path.basename(old).slice(0, 40)}.tmp.host.1.0123456789abcdef`);
    await fsp.mkdir(lookAlike);
    await fsp.writeFile(
      path.join(lookAlike, 'extraction.json'),
      await fsp.readFile(path.join(old, 'extraction.json')),
    );
    const then = new Date(Date.now() - 25 * 60 * 60_000);
    await fsp.utimes(lookAlike, then, then);
    const report = await cache.prune();
    expect(report.removed).toContainEqual({ key: longKey, path: old, reason: 'orphan-tmp' });
    expect(await exists(old)).toBe(false);
    // A marker copied into a directory whose name carries no matching digest proves nothing.
    expect(await exists(path.join(lookAlike, 'extraction.json'))).toBe(true);
    expect(await exists(extraction)).toBe(true);
  });

  it('not when nothing inside proves it is the cache’s', async () => {
    const { dir, cache, extract } = await setup();
    const old = await orphanTmpOf(await extract(), 25 * 60 * 60_000);
    await fsp.rm(path.join(old, 'extraction.json'));
    const then = new Date(Date.now() - 25 * 60 * 60_000);
    await fsp.utimes(old, then, then); // the removal above made the directory young again
    const report = await cache.prune();
    expect(report.foreign).toContainEqual({ path: old, reason: 'unproven-extraction' });
    expect(await exists(path.join(old, 'content', 'notes.txt'))).toBe(true);
    expect(path.dirname(old)).toBe(dir);
  });
});

describe('keepN and maxBytes count an extraction’s bytes, and its extractions go with an evicted entry', () => {
  /** An archive of 300 KB of zeros: about 1 KB to store, 300 KB extracted. */
  const bulky = (seed: number) => buildZip([{ name: `zeros-${seed}.bin`, content: Buffer.alloc(300_000) }]);

  async function twoEntries(maxBytes: number) {
    const clock = manualClock(Date.now());
    const root = await makeTempDir('payload-cache-extraction-eviction-');
    const cache = new CacheManager({
      sublayer: SUBLAYER,
      root,
      ttl: Number.POSITIVE_INFINITY,
      maxBytes,
      now: clock.now,
    });
    const first = path.dirname(
      await cache.getOrExtract('first.zip', () => bulky(1), { maxCompressionRatio: 1_000 }),
    );
    await cache[backgroundEviction];
    clock.advance(2 * IN_USE_WINDOW_MS);
    const second = path.dirname(
      await cache.getOrExtract('second.zip', () => bulky(2), { maxCompressionRatio: 1_000 }),
    );
    await cache[backgroundEviction];
    return { cache, clock, first, second };
  }

  it('a write over maxBytes evicts the least recently used entry with its extraction', async () => {
    const { first, second } = await twoEntries(400_000);
    expect(await exists(first)).toBe(false);
    expect(await exists(second)).toBe(true);
  });

  it('within maxBytes, nothing goes', async () => {
    const { first, second } = await twoEntries(700_000);
    expect(await exists(first)).toBe(true);
    expect(await exists(second)).toBe(true);
  });

  it('prune evicts by the same count', async () => {
    const { clock, first, second } = await twoEntries(700_000);
    clock.advance(2 * IN_USE_WINDOW_MS);
    const pruned = new CacheManager({
      sublayer: SUBLAYER,
      root: path.dirname(path.dirname(first)),
      ttl: Number.POSITIVE_INFINITY,
      maxBytes: 400_000,
      now: clock.now,
    });
    const report = await pruned.prune();
    expect(report.removed).toContainEqual({ key: 'first.zip', path: first, reason: 'evicted' });
    expect(await exists(first)).toBe(false);
    expect(await exists(second)).toBe(true);
  });
});

describe('verify checks every extracted file', () => {
  it('counts a whole extraction as checked', async () => {
    const { cache, extract } = await setup(Number.POSITIVE_INFINITY);
    await extract();
    const report = await cache.verify();
    expect(report).toMatchObject({ checked: 2, bad: [], removed: [] });
  });

  it('finds a file changed in place (same size: only its sha256 tells), and fix removes the extraction', async () => {
    const { cache, extract } = await setup(Number.POSITIVE_INFINITY);
    const extraction = await extract();
    await fsp.writeFile(path.join(extraction, 'content', 'notes.txt'), 'release 9\n');
    const report = await cache.verify();
    expect(report.bad).toEqual([{ key: KEY, path: extraction, reason: 'hash-mismatch' }]);
    expect(await exists(extraction)).toBe(true);
    const fixed = await cache.verify({ fix: true });
    expect(fixed.removed).toEqual([{ key: KEY, path: extraction, reason: 'hash-mismatch' }]);
    expect(await exists(extraction)).toBe(false);
    // The next call extracts the archive again.
    expect(await extract()).toBe(extraction);
    expect(await fsp.readFile(path.join(extraction, 'content', 'notes.txt'), 'utf8')).toBe('release 1\n');
  });

  it('finds a file removed or resized', async () => {
    const { cache, extract } = await setup(Number.POSITIVE_INFINITY);
    const extraction = await extract();
    await fsp.appendFile(path.join(extraction, 'content', 'notes.txt'), 'more');
    expect((await cache.verify()).bad).toEqual([{ key: KEY, path: extraction, reason: 'size-mismatch' }]);
    await fsp.rm(path.join(extraction, 'content', 'notes.txt'));
    expect((await cache.verify()).bad).toEqual([{ key: KEY, path: extraction, reason: 'size-mismatch' }]);
  });
});

describe('extractions with links (allowLinks: "inside")', () => {
  it.skipIf(symlinksNeedPrivilege)(
    'verify checks a link’s target, and clear removes the link, never its target',
    async () => {
      const { root, cache, dir } = await setup(Number.POSITIVE_INFINITY);
      const tar = buildTar([
        { path: 'data/table.csv', content: 'a,b\n' },
        { path: 'latest.csv', type: 'SymbolicLink', linkpath: 'data/table.csv' },
      ]);
      const content = await cache.getOrExtract('links.tar', () => tar, { allowLinks: 'inside' });
      expect(await fsp.readFile(path.join(content, 'latest.csv'), 'utf8')).toBe('a,b\n');
      expect(await cache.verify()).toMatchObject({ checked: 2, bad: [] });

      await fsp.unlink(path.join(content, 'latest.csv'));
      await fsp.symlink(path.join(root, 'elsewhere'), path.join(content, 'latest.csv'));
      const extraction = path.dirname(content);
      expect((await cache.verify()).bad).toEqual([
        { key: 'links.tar', path: extraction, reason: 'size-mismatch' },
      ]);

      await fsp.writeFile(path.join(root, 'elsewhere'), 'keep');
      await cache.clear();
      expect(await exists(extraction)).toBe(false);
      expect(await fsp.readFile(path.join(root, 'elsewhere'), 'utf8')).toBe('keep');
      expect(await fsp.readdir(dir)).toEqual([]);
    },
  );
});
