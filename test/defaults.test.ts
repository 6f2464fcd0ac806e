import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backgroundEviction } from '../src/cache-manager.js';
import { HTTP_FETCHER_DEFAULTS } from '../src/http-fetcher.js';
import { CacheManager, HttpStatusError, httpFetcher } from '../src/index.js';
import { resolveSettings } from '../src/options.js';
import { makeTempDir, manualClock, removeTempDirs } from './helpers.js';
import { closeAllServers, startServer } from './http-servers.js';

// The defaults the README's option tables promise. Where a default is cheap to observe it is observed;
// the lock and timeout defaults (seconds to minutes of waiting) are read from the resolved settings.

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
let root: string;
let clock: ReturnType<typeof manualClock>;

beforeEach(async () => {
  root = await makeTempDir('payload-cache-defaults-');
  clock = manualClock(Date.now());
});
afterEach(async () => {
  await closeAllServers();
  await removeTempDirs();
});

const withDefaults = () =>
  new CacheManager({ sublayer: 'data', ttl: Number.POSITIVE_INFINITY, root, now: clock.now });

describe('CacheManager defaults', () => {
  it('the resolved settings are the documented ones', () => {
    expect(resolveSettings({ sublayer: 'data', ttl: 1 })).toMatchObject({
      keepN: 4,
      maxBytes: Number.POSITIVE_INFINITY,
      lockStaleMs: 10_000,
      lockTimeoutMs: 30 * MINUTE,
      staleTmpMs: 24 * HOUR,
      touchIntervalMs: MINUTE,
      evictionGraceMs: 10_000,
      maxClockSkewMs: 5 * MINUTE,
    });
  });

  it('keepN 4: a fifth entry written when the others are out of use evicts the oldest', async () => {
    const cache = withDefaults();
    for (const key of ['a', 'b', 'c', 'd']) {
      await cache.getOrFetch(key, () => key);
      clock.advance(HOUR);
    }
    await cache.getOrFetch('e', () => 'e');
    await cache[backgroundEviction];
    expect((await cache.list()).map((entry) => entry.key).sort()).toEqual(['b', 'c', 'd', 'e']);
  });

  it('touchIntervalMs 60 s: a hit 59 s after the last recorded use records nothing, one at 61 s records it', async () => {
    const cache = withDefaults();
    const payload = await cache.getOrFetch('k', () => 'bytes');
    const writtenAt = (await fsp.stat(payload)).mtimeMs;
    clock.advance(59_000);
    await cache.get('k');
    expect((await fsp.stat(payload)).mtimeMs).toBe(writtenAt);
    clock.advance(2_000);
    await cache.get('k');
    // An mtime read back as a float may be a hair off the whole millisecond that was set.
    expect(Math.abs((await fsp.stat(payload)).mtimeMs - clock.now())).toBeLessThanOrEqual(1);
  });

  it('has() does not count as a use: it never moves the last-use time', async () => {
    const cache = withDefaults();
    const payload = await cache.getOrFetch('k', () => 'bytes');
    const writtenAt = (await fsp.stat(payload)).mtimeMs;
    clock.advance(HOUR);
    expect(await cache.has('k')).toBe(true);
    expect((await fsp.stat(payload)).mtimeMs).toBe(writtenAt);
  });

  it('maxClockSkewMs 5 min: a created_at 4 min ahead is fresh, 6 min ahead is expired', async () => {
    for (const [aheadMs, fresh] of [
      [4 * MINUTE, true],
      [6 * MINUTE, false],
    ] as const) {
      const key = `ahead-${aheadMs}`;
      const writer = new CacheManager({
        sublayer: 'data',
        ttl: HOUR,
        root,
        now: () => clock.now() + aheadMs,
      });
      await writer.getOrFetch(key, () => 'bytes');
      expect(await new CacheManager({ sublayer: 'data', ttl: HOUR, root, now: clock.now }).has(key)).toBe(
        fresh,
      );
    }
  });

  it('staleTmpMs 24 h: prune leaves a tmp file 23 h old and removes one 25 h old', async () => {
    const cache = withDefaults();
    await cache.getOrFetch('k', () => 'bytes');
    const dir = path.join(root, 'data');
    const plant = async (name: string, ageMs: number) => {
      const file = path.join(dir, name);
      await fsp.writeFile(file, 'partial');
      const when = new Date(clock.now() - ageMs);
      await fsp.utimes(file, when, when);
    };
    await plant('young.tmp.h.1.0000000000000001', 23 * HOUR);
    await plant('old.tmp.h.1.0000000000000002', 25 * HOUR);
    const report = await cache.prune();
    expect(report.removed.map((item) => path.basename(item.path))).toEqual(['old.tmp.h.1.0000000000000002']);
  });
});

describe('httpFetcher defaults', () => {
  it('the resolved defaults are the documented ones', () => {
    expect(HTTP_FETCHER_DEFAULTS).toEqual({
      retries: 3,
      retryDelayMs: 1_000,
      maxRetryDelayMs: 30_000,
      timeoutMs: 30_000,
      maxRedirections: 5,
      maxBytes: Number.POSITIVE_INFINITY,
    });
  });

  it('retries 3: a server answering 503 every time gets exactly 4 requests', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(503);
      res.end();
    });
    const fetcher = httpFetcher(server.url('/file'), { retryDelayMs: 1, maxRetryDelayMs: 5 });
    await expect(withDefaults().getOrFetch('k', fetcher)).rejects.toBeInstanceOf(HttpStatusError);
    expect(server.requests).toHaveLength(4);
  });

  it('maxRedirections 5: five redirects are followed, a sixth is refused', async () => {
    const server = await startServer((req, res) => {
      const step = Number((req.url ?? '').split('/').at(-1));
      if (step === 5 && req.url?.startsWith('/five/')) {
        res.writeHead(200, { 'content-length': '4' });
        res.end('done');
        return;
      }
      res.writeHead(302, { location: `${req.url?.split('/').slice(0, 2).join('/')}/${step + 1}` });
      res.end();
    });
    const path5 = await withDefaults().getOrFetch('five', httpFetcher(server.url('/five/0')));
    expect(await fsp.readFile(path5, 'utf8')).toBe('done');
    await expect(withDefaults().getOrFetch('six', httpFetcher(server.url('/six/0')))).rejects.toThrow(
      /more than 5 redirects/,
    );
  });
});
