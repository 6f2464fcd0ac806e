import { spawn } from 'node:child_process';
import diagnosticsChannel from 'node:diagnostics_channel';
import { once } from 'node:events';
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { CacheManager } from '../src/cache-manager.js';
import { ArchiveUnsafeError, ForeignFileError, InvalidOptionsError } from '../src/errors.js';
import { httpFetcher } from '../src/http-fetcher.js';
import { type FetchFn, NOT_MODIFIED } from '../src/types.js';
import { buildZip } from './archive-builders.js';
import { runExtractRace } from './extract-race.js';
import { makeTempDir, manualClock, patternBytes, rejectionOf, sha256 } from './helpers.js';
import { isolateHttpTests, servePayload, startServer } from './http-servers.js';

// Every test: proxy variables cleared, servers closed, tmp dirs removed, no uncaught exception.
isolateHttpTests();

const SUBLAYER = 'archives';
const KEY = 'weo.zip';

const goodZip = (seed = 1) =>
  buildZip([
    { name: 'weo/README.txt', content: `release ${seed}\n` },
    { name: 'weo/gdp.csv', content: patternBytes(200_000, seed) },
  ]);

/** A fetcher serving `bytes` (or what `next()` says), counting its calls. */
function counting(answer: () => Buffer | typeof NOT_MODIFIED) {
  const calls: { previous: boolean }[] = [];
  const fetchFn: FetchFn = (context) => {
    calls.push({ previous: context.previous !== undefined });
    const result = answer();
    return result === NOT_MODIFIED ? NOT_MODIFIED : { body: result, etag: `"${sha256(result).slice(0, 8)}"` };
  };
  return { fetchFn, calls };
}

async function manager(options: { ttl?: number; now?: () => number } = {}) {
  const root = await makeTempDir('payload-cache-extract-');
  const cache = new CacheManager({ sublayer: SUBLAYER, ttl: Number.POSITIVE_INFINITY, root, ...options });
  return { root, cache, dir: path.join(root, SUBLAYER) };
}

describe('getOrExtract', () => {
  it('a miss downloads and extracts once; a hit returns the same directory without fetching', async () => {
    const { cache, dir } = await manager();
    const zip = goodZip();
    const { fetchFn, calls } = counting(() => zip);
    const extracted = await cache.getOrExtract(KEY, fetchFn);
    expect(extracted).toBe(path.join(dir, `${KEY}.extracted.${sha256(zip).slice(0, 16)}`, 'content'));
    expect(sha256(await fsp.readFile(path.join(extracted, 'weo/gdp.csv')))).toBe(
      sha256(patternBytes(200_000, 1)),
    );
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(extracted);
    expect(calls).toHaveLength(1);
    // The archive is a normal entry beside it.
    expect(await cache.get(KEY)).toBe(path.join(dir, KEY));
    expect((await fsp.readdir(dir)).sort()).toEqual(
      [KEY, `${KEY}.manifest.json`, path.basename(path.dirname(extracted))].sort(),
    );
  });

  it('extracts an archive getOrFetch already downloaded, without fetching again', async () => {
    const { cache } = await manager();
    const { fetchFn, calls } = counting(() => goodZip());
    await cache.getOrFetch(KEY, fetchFn);
    const extracted = await cache.getOrExtract(KEY, fetchFn);
    expect(await fsp.readFile(path.join(extracted, 'weo/README.txt'), 'utf8')).toBe('release 1\n');
    expect(calls).toHaveLength(1);
  });

  it('the key stays locked until the extraction of an archive already downloaded is published', async () => {
    const { cache, dir } = await manager();
    await cache.getOrFetch(KEY, counting(() => goodZip()).fetchFn);
    const lockHeldAtPublish: boolean[] = [];
    const listener = (message: unknown) => {
      if ((message as { outcome?: string }).outcome !== 'published') return;
      // Looked at in the same turn as the publication: another process must not have been let in yet.
      lockHeldAtPublish.push(existsSync(path.join(dir, `${KEY}.lock`)));
    };
    diagnosticsChannel.subscribe('payload-cache:extract', listener);
    try {
      await cache.getOrExtract(KEY, counting(() => goodZip()).fetchFn);
    } finally {
      diagnosticsChannel.unsubscribe('payload-cache:extract', listener);
    }
    expect(lockHeldAtPublish).toEqual([true]);
    expect(existsSync(path.join(dir, `${KEY}.lock`))).toBe(false);
  });

  it('a hostile archive publishes nothing: no entry, no extraction, no tmp leftovers', async () => {
    const { cache, dir } = await manager();
    const hostile = buildZip([{ name: '../escaped.txt', content: 'x' }]);
    const error = await rejectionOf(cache.getOrExtract(KEY, counting(() => hostile).fetchFn));
    expect(error).toBeInstanceOf(ArchiveUnsafeError);
    expect(await cache.get(KEY)).toBeUndefined();
    expect(await fsp.readdir(dir)).toEqual([]);
  });

  it('a hostile new archive keeps the previous entry and its extraction', async () => {
    const clock = manualClock();
    const { cache, dir } = await manager({ ttl: 60_000, now: clock.now });
    const first = await cache.getOrExtract(KEY, counting(() => goodZip()).fetchFn);
    clock.advance(120_000);
    const hostile = buildZip([{ name: 'link', content: '/etc', unixMode: 0o120777 }]);
    const error = await rejectionOf(cache.getOrExtract(KEY, counting(() => hostile).fetchFn));
    expect(error).toMatchObject({ code: 'ERR_ARCHIVE_UNSAFE', reason: 'symlink' });
    expect(sha256(await fsp.readFile(path.join(dir, KEY)))).toBe(sha256(goodZip()));
    expect(await fsp.readFile(path.join(first, 'weo/README.txt'), 'utf8')).toBe('release 1\n');
    const stale = await cache.getOrExtract(KEY, counting(() => hostile).fetchFn, { staleIfError: true });
    expect(stale).toBe(first);
  });

  it('a new archive gets a new directory; the old one stays for readers that hold its files', async () => {
    const clock = manualClock();
    const { cache } = await manager({ ttl: 60_000, now: clock.now });
    let release = 1;
    const { fetchFn } = counting(() => goodZip(release));
    const old = await cache.getOrExtract(KEY, fetchFn);
    const reader = await fsp.open(path.join(old, 'weo/gdp.csv'), 'r');
    try {
      clock.advance(120_000);
      release = 2;
      const renewed = await cache.getOrExtract(KEY, fetchFn);
      expect(renewed).not.toBe(old);
      expect(await fsp.readFile(path.join(renewed, 'weo/README.txt'), 'utf8')).toBe('release 2\n');
      const { buffer } = await reader.read(Buffer.alloc(200_000), 0, 200_000, 0);
      expect(sha256(buffer)).toBe(sha256(patternBytes(200_000, 1)));
      expect(await fsp.readFile(path.join(old, 'weo/README.txt'), 'utf8')).toBe('release 1\n');
    } finally {
      await reader.close();
    }
  });

  it('a hit after another manager replaced the archive serves the new extraction (the remembered sha256 is only a guess)', async () => {
    const clock = manualClock();
    const { cache, root } = await manager({ ttl: 60_000, now: clock.now });
    const other = new CacheManager({ sublayer: SUBLAYER, root, ttl: 0, now: clock.now });
    const first = await cache.getOrExtract(KEY, counting(() => goodZip(1)).fetchFn);
    expect(await cache.getOrExtract(KEY, counting(() => goodZip(1)).fetchFn)).toBe(first);
    const replaced = await other.getOrExtract(KEY, counting(() => goodZip(2)).fetchFn);
    const { fetchFn, calls } = counting(() => goodZip(3));
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(replaced);
    expect(calls).toHaveLength(0);
  });

  it('a hit after the extraction was removed behind its back extracts again (the remembered one is rechecked)', async () => {
    const { cache } = await manager();
    const { fetchFn, calls } = counting(() => goodZip(1));
    const first = await cache.getOrExtract(KEY, fetchFn);
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(first);
    await fsp.rm(path.dirname(first), { recursive: true });
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(first);
    expect(await fsp.readFile(path.join(first, 'weo/README.txt'), 'utf8')).toBe('release 1\n');
    expect(calls).toHaveLength(1); // the archive was still there: extracted again, not fetched
    await fsp.writeFile(path.join(path.dirname(first), 'extraction.json'), '{}');
    await fsp.rm(path.join(first, 'weo/README.txt'));
    // A marker swapped for something else is not taken for the one seen before, and what is at the
    // extraction's name is not the cache's to replace: ForeignFileError, the thing left as it was.
    const error = await rejectionOf(cache.getOrExtract(KEY, fetchFn));
    expect(error).toBeInstanceOf(ForeignFileError);
    expect(await fsp.readFile(path.join(path.dirname(first), 'extraction.json'), 'utf8')).toBe('{}');
    expect(
      (await fsp.readdir(path.dirname(path.dirname(first)))).filter((name) => name.includes('.tmp.')),
    ).toEqual([]);
  });

  it('an entry written by imf_reader (no sha256 in its manifest) is hashed once, and the sha256 recorded', async () => {
    const { cache, dir } = await manager();
    const zip = goodZip();
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, KEY), zip);
    const createdAt = new Date().toISOString().replace(/\.\d{3}Z$/, '+0000');
    const legacy = { schema_version: '1.5.0', created_at: createdAt, size_bytes: zip.length, origin: 'imf' };
    await fsp.writeFile(path.join(dir, `${KEY}.manifest.json`), JSON.stringify(legacy));
    const { fetchFn, calls } = counting(() => zip);
    const extracted = await cache.getOrExtract(KEY, fetchFn);
    expect(extracted).toBe(path.join(dir, `${KEY}.extracted.${sha256(zip).slice(0, 16)}`, 'content'));
    expect(calls).toHaveLength(0);
    const manifest = JSON.parse(await fsp.readFile(path.join(dir, `${KEY}.manifest.json`), 'utf8'));
    expect(manifest).toEqual({ ...legacy, sha256: sha256(zip) });
    // Now named by its manifest, the next call is a hit without the lock.
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(extracted);
    expect(cache.stats().misses).toBe(1);
  });

  it('NOT_MODIFIED (ETag revalidation) keeps the extraction', async () => {
    const clock = manualClock();
    const { cache } = await manager({ ttl: 60_000, now: clock.now });
    let answer: Buffer | typeof NOT_MODIFIED = goodZip();
    const { fetchFn, calls } = counting(() => answer);
    const first = await cache.getOrExtract(KEY, fetchFn);
    clock.advance(120_000);
    answer = NOT_MODIFIED;
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(first);
    expect(calls).toEqual([{ previous: false }, { previous: true }]);
  });

  it('a single gzip file becomes one file named after the key', async () => {
    const { cache } = await manager();
    const { gzipSync } = await import('node:zlib');
    const csv = patternBytes(10_000, 5);
    const extracted = await cache.getOrExtract('table.csv.gz', counting(() => gzipSync(csv)).fetchFn);
    expect(await fsp.readdir(extracted)).toEqual(['table.csv']);
    expect(sha256(await fsp.readFile(path.join(extracted, 'table.csv')))).toBe(sha256(csv));
  });

  it('reports each extraction on the payload-cache:extract channel', async () => {
    const { cache } = await manager();
    const outcomes: unknown[] = [];
    const listener = (message: unknown) => outcomes.push((message as { outcome: string }).outcome);
    diagnosticsChannel.subscribe('payload-cache:extract', listener);
    try {
      const { fetchFn } = counting(() => goodZip());
      await cache.getOrExtract(KEY, fetchFn);
      await cache.getOrExtract(KEY, fetchFn);
    } finally {
      diagnosticsChannel.unsubscribe('payload-cache:extract', listener);
    }
    expect(outcomes).toEqual(['published']);
  });

  it('the same archive downloaded again (a server without validators) is not extracted again', async () => {
    const clock = manualClock();
    const { cache } = await manager({ ttl: 60_000, now: clock.now });
    const outcomes: unknown[] = [];
    const listener = (message: unknown) => outcomes.push((message as { outcome: string }).outcome);
    diagnosticsChannel.subscribe('payload-cache:extract', listener);
    try {
      const { fetchFn, calls } = counting(() => goodZip());
      const first = await cache.getOrExtract(KEY, fetchFn);
      clock.advance(120_000);
      expect(await cache.getOrExtract(KEY, fetchFn)).toBe(first);
      expect(calls).toHaveLength(2);
    } finally {
      diagnosticsChannel.unsubscribe('payload-cache:extract', listener);
    }
    expect(outcomes).toEqual(['published']);
  });

  it('refuses bad extraction options before fetching', async () => {
    const { cache } = await manager();
    const { fetchFn, calls } = counting(() => goodZip());
    for (const options of [
      { format: 'rar' as never },
      { maxEntries: 0 },
      { maxCompressionRatio: Number.NaN },
    ]) {
      expect(await rejectionOf(cache.getOrExtract(KEY, fetchFn, options))).toBeInstanceOf(
        InvalidOptionsError,
      );
    }
    expect(calls).toHaveLength(0);
  });
});

const BUILT_ENTRY = fileURLToPath(new URL('../dist/index.js', import.meta.url));

describe('getOrExtract across processes', () => {
  beforeAll(async () => {
    await fsp.access(BUILT_ENTRY).catch(() => {
      throw new Error('dist/ is missing: run `npm run build` first (npm test does)');
    });
  });

  it('8 processes racing for one new archive: one download, one extraction, the same tree for all', async () => {
    const work = await makeTempDir('payload-cache-extract-race-');
    const root = path.join(work, 'root');
    const race = await runExtractRace({ work, roots: [root], processes: 8, sublayer: SUBLAYER, key: KEY });
    expect(race.results.filter((result) => result.event !== 'done')).toEqual([]);
    expect(race.fetches).toBe(1);
    expect(race.results.flatMap((result) => result.extractions)).toEqual(['published']);
    for (const result of race.results) {
      expect(result.path).toBe(race.results[0]?.path);
      expect(result.files).toEqual(race.expected);
    }
    const sublayer = await fsp.readdir(path.join(root, SUBLAYER));
    expect(sublayer.filter((name) => name.includes('.tmp.'))).toEqual([]);
  });
});

describe('getOrExtract with other programs and servers', () => {
  const HOLDER = fileURLToPath(new URL('./fixtures/hold-open.mjs', import.meta.url));

  it('a reader in another process holds a file of the old extraction open while a new archive is extracted', async () => {
    const clock = manualClock();
    const { cache } = await manager({ ttl: 60_000, now: clock.now });
    let release = 1;
    const old = await cache.getOrExtract(KEY, counting(() => goodZip(release)).fetchFn);
    const holder = spawn(process.execPath, [HOLDER, path.join(old, 'weo/gdp.csv')], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    try {
      const [line] = (await once(holder.stdout, 'data')) as [Buffer];
      expect(line.toString()).toMatch(/^open 16/);
      clock.advance(120_000);
      release = 2;
      const renewed = await cache.getOrExtract(KEY, counting(() => goodZip(release)).fetchFn);
      expect(renewed).not.toBe(old);
      expect(await fsp.readFile(path.join(renewed, 'weo/README.txt'), 'utf8')).toBe('release 2\n');
      // The old tree is whole and unchanged while the other process holds it.
      expect(sha256(await fsp.readFile(path.join(old, 'weo/gdp.csv')))).toBe(
        sha256(patternBytes(200_000, 1)),
      );
      expect(await fsp.readFile(path.join(old, 'weo/README.txt'), 'utf8')).toBe('release 1\n');
    } finally {
      const exited = once(holder, 'exit');
      holder.stdin.end();
      await exited;
    }
  });

  it('an upstream change is picked up through ETag revalidation; an unchanged archive (304) keeps its directory', async () => {
    const clock = manualClock();
    const { cache } = await manager({ ttl: 60_000, now: clock.now });
    let served = goodZip(1);
    let etag = '"r1"';
    const server = await startServer((req, res) => {
      if (req.headers['if-none-match'] === etag) {
        res.writeHead(304, { etag });
        res.end();
        return;
      }
      servePayload(req, res, served, { etag });
    });
    const fetchFn = httpFetcher(server.url('/weo.zip'));
    const first = await cache.getOrExtract(KEY, fetchFn);
    clock.advance(120_000);
    expect(await cache.getOrExtract(KEY, fetchFn)).toBe(first);
    expect(server.requests.at(-1)?.headers['if-none-match']).toBe('"r1"');
    clock.advance(120_000);
    served = goodZip(2);
    etag = '"r2"';
    const second = await cache.getOrExtract(KEY, fetchFn);
    expect(second).not.toBe(first);
    expect(await fsp.readFile(path.join(second, 'weo/README.txt'), 'utf8')).toBe('release 2\n');
    expect(server.requests).toHaveLength(3);
  });
});
