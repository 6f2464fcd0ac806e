import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import diagnosticsChannel from 'node:diagnostics_channel';
import { existsSync, promises as fsp, renameSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backgroundEviction, backgroundSweep } from '../src/cache-manager.js';
import {
  BulkPayloadCorruptError,
  CacheManager,
  type CacheManagerOptions,
  type FetchContext,
  InvalidOptionsError,
  LockTimeoutError,
  NOT_MODIFIED,
} from '../src/index.js';
import { tryLock } from '../src/soft-lock.js';
import {
  exists,
  makeTempDir,
  manualClock,
  patternBytes,
  removeTempDirs,
  sha256,
  symlinksNeedPrivilege,
  tmpFilesIn,
} from './helpers.js';

let root: string;
let clock: ReturnType<typeof manualClock>;

beforeEach(async () => {
  root = await makeTempDir();
  clock = manualClock();
});
afterEach(removeTempDirs);

function cacheWith(options: Partial<CacheManagerOptions> = {}): CacheManager {
  return new CacheManager({ sublayer: 'data', ttl: 60_000, root, now: clock.now, ...options });
}

const dirOf = () => path.join(root, 'data');
const HOUR = 3_600_000;

describe('getOrFetch round trip', () => {
  const payload = patternBytes(300_000, 7);
  const bodies: Record<string, () => unknown> = {
    Uint8Array: () => new Uint8Array(payload),
    Buffer: () => Buffer.from(payload),
    ArrayBuffer: () => payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength),
    'Node Readable': () => Readable.from(chunked(payload, 65_536)),
    'web ReadableStream': () => ReadableStream.from(chunked(payload, 10_000)),
    'async iterable': () =>
      (async function* () {
        yield* chunked(payload, 4_096);
      })(),
    '{ body, expectedSize, sha256 }': () => ({
      body: Readable.from(chunked(payload, 1_000)),
      expectedSize: payload.length,
      sha256: sha256(payload),
    }),
  };

  for (const [kind, makeBody] of Object.entries(bodies)) {
    it(`stores a ${kind} body and returns an absolute path holding exactly its bytes`, async () => {
      const cache = cacheWith();
      const returned = await cache.getOrFetch('blob.bin', () => makeBody() as Buffer);
      expect(path.isAbsolute(returned)).toBe(true);
      expect(returned).toBe(path.join(dirOf(), 'blob.bin'));
      expect(sha256(await fsp.readFile(returned))).toBe(sha256(payload));
      const manifest = JSON.parse(await fsp.readFile(`${returned}.manifest.json`, 'utf8'));
      expect(manifest).toMatchObject({ schema_version: 1, key: 'blob.bin', size_bytes: payload.length });
      expect(manifest.sha256).toBe(sha256(payload));
      expect(await tmpFilesIn(dirOf())).toEqual([]);
    });
  }

  it('stores a string body as UTF-8 and keeps etag and last-modified in the manifest', async () => {
    const cache = cacheWith();
    const returned = await cache.getOrFetch('text', () => ({
      body: 'héllo',
      etag: '"v1"',
      lastModified: 'Wed, 21 Oct 2026 07:28:00 GMT',
    }));
    expect(await fsp.readFile(returned, 'utf8')).toBe('héllo');
    const manifest = JSON.parse(await fsp.readFile(`${returned}.manifest.json`, 'utf8'));
    expect(manifest).toMatchObject({
      etag: '"v1"',
      last_modified: 'Wed, 21 Oct 2026 07:28:00 GMT',
      size_bytes: 6,
    });
  });

  it('stores an empty body as an empty entry', async () => {
    const cache = cacheWith();
    const returned = await cache.getOrFetch('empty', () => new Uint8Array(0));
    expect((await fsp.stat(returned)).size).toBe(0);
    expect(await cache.has('empty')).toBe(true);
  });

  it('stores the bytes it hashed even when the source reuses one buffer for every chunk', async () => {
    const cache = cacheWith();
    const expected = Buffer.concat(Array.from({ length: 40 }, (_, i) => Buffer.alloc(65_536, i)));
    const returned = await cache.getOrFetch('reused', () =>
      (async function* () {
        const shared = Buffer.alloc(65_536);
        for (let i = 0; i < 40; i++) {
          shared.fill(i);
          yield shared;
        }
      })(),
    );
    expect(sha256(await fsp.readFile(returned))).toBe(sha256(expected));
    const manifest = JSON.parse(await fsp.readFile(`${returned}.manifest.json`, 'utf8'));
    expect(manifest.sha256).toBe(sha256(expected));
  });

  it('honours resetBody: bytes received before the reset are discarded', async () => {
    const cache = cacheWith();
    const returned = await cache.getOrFetch('restarted', (ctx: FetchContext) =>
      (async function* () {
        yield Buffer.from('partial garbage that must vanish');
        ctx.resetBody();
        yield Buffer.from('the ');
        yield Buffer.from('real body');
      })(),
    );
    expect(await fsp.readFile(returned, 'utf8')).toBe('the real body');
    const manifest = JSON.parse(await fsp.readFile(`${returned}.manifest.json`, 'utf8'));
    expect(manifest.sha256).toBe(sha256('the real body'));
  });

  it('refuses a fetcher answer that is not a body with InvalidOptionsError, leaving no tmp file', async () => {
    const cache = cacheWith();
    await expect(cache.getOrFetch('odd', () => 42 as unknown as string)).rejects.toBeInstanceOf(
      InvalidOptionsError,
    );
    await expect(cache.getOrFetch('odd', () => ({ body: 'x', expectedSize: -1 }))).rejects.toBeInstanceOf(
      InvalidOptionsError,
    );
    expect(await tmpFilesIn(dirOf())).toEqual([]);
    expect(await exists(path.join(dirOf(), 'odd'))).toBe(false);
  });
});

describe('hits, expiry and refresh', () => {
  it('serves a hit without calling the fetcher or the validator', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('k', () => 'v1');
    let fetches = 0;
    let validations = 0;
    const again = await cache.getOrFetch(
      'k',
      () => {
        fetches++;
        return 'v2';
      },
      { validator: () => void validations++ },
    );
    expect([fetches, validations]).toEqual([0, 0]);
    expect(await fsp.readFile(again, 'utf8')).toBe('v1');
  });

  it('refetches once the TTL has passed, and hands the fetcher the expired entry', async () => {
    const cache = cacheWith({ ttl: 1_000 });
    await cache.getOrFetch('k', () => ({ body: 'old', etag: '"e1"' }));
    clock.advance(999);
    expect(await cache.has('k')).toBe(true);
    clock.advance(1);
    expect(await cache.has('k')).toBe(false);
    let seen: FetchContext['previous'];
    const returned = await cache.getOrFetch('k', (ctx) => {
      seen = ctx.previous;
      return 'new';
    });
    expect(seen?.manifest.etag).toBe('"e1"');
    expect(seen?.path).toBe(returned);
    expect(await fsp.readFile(returned, 'utf8')).toBe('new');
  });

  it('refetches a fresh entry when asked to refresh', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('k', () => 'v1');
    let previousSize: number | undefined;
    const returned = await cache.getOrFetch(
      'k',
      (ctx) => {
        previousSize = ctx.previous?.manifest.size_bytes;
        return 'v22';
      },
      { refresh: true },
    );
    expect(previousSize).toBe(2);
    expect(await fsp.readFile(returned, 'utf8')).toBe('v22');
  });

  it('never expires an entry with ttl Infinity', async () => {
    const cache = cacheWith({ ttl: Number.POSITIVE_INFINITY });
    await cache.getOrFetch('k', () => 'forever');
    clock.advance(100 * 365 * 24 * HOUR);
    expect(await cache.get('k')).toBe(path.join(dirOf(), 'k'));
  });

  it.skipIf(symlinksNeedPrivilege)('does not serve a payload that is a symlink', async () => {
    const cache = cacheWith();
    const outside = path.join(root, 'outside.txt');
    await fsp.writeFile(outside, 'secret');
    await cache.getOrFetch('k', () => 'secret');
    await fsp.rm(path.join(dirOf(), 'k'));
    await fsp.symlink(outside, path.join(dirOf(), 'k'));
    expect(await cache.get('k')).toBeUndefined();
  });
});

describe('refused payloads publish nothing and keep the previous entry', () => {
  async function withExpiredPrevious() {
    const cache = cacheWith({ ttl: 1_000 });
    await cache.getOrFetch('k', () => 'previous');
    clock.advance(5_000);
    return cache;
  }

  async function expectPreviousIntactAndLockFree(cache: CacheManager) {
    expect(await fsp.readFile(path.join(dirOf(), 'k'), 'utf8')).toBe('previous');
    expect(await tmpFilesIn(dirOf())).toEqual([]);
    expect(await exists(path.join(dirOf(), 'k.lock'))).toBe(false);
    // lockTimeoutMs 0: any lock still held would fail this call at once.
    const impatient = cacheWith({ ttl: 1_000, lockTimeoutMs: 0 });
    expect(await fsp.readFile(await impatient.getOrFetch('k', () => 'next'), 'utf8')).toBe('next');
    void cache;
  }

  it('validator rejection', async () => {
    const cache = await withExpiredPrevious();
    const problem = new Error('not a zip');
    let seenPath = '';
    const error = await cache
      .getOrFetch('k', () => 'bad bytes', {
        validator: async (info) => {
          seenPath = info.path;
          expect(info.sizeBytes).toBe(9);
          expect(info.sha256).toBe(sha256('bad bytes'));
          expect((await info.bytes()).toString()).toBe('bad bytes');
          throw problem;
        },
      })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BulkPayloadCorruptError);
    expect(error).toMatchObject({
      code: 'ERR_PAYLOAD_CORRUPT',
      key: 'k',
      reason: 'validator-rejected',
      cause: problem,
    });
    expect(seenPath).toContain('.tmp.');
    await expectPreviousIntactAndLockFree(cache);
  });

  it('a body shorter than expectedSize (truncated)', async () => {
    const cache = await withExpiredPrevious();
    await expect(cache.getOrFetch('k', () => ({ body: 'short', expectedSize: 10 }))).rejects.toMatchObject({
      code: 'ERR_PAYLOAD_CORRUPT',
      reason: 'truncated',
    });
    await expectPreviousIntactAndLockFree(cache);
  });

  it('a body longer than expectedSize', async () => {
    const cache = await withExpiredPrevious();
    await expect(cache.getOrFetch('k', () => ({ body: 'too long', expectedSize: 3 }))).rejects.toMatchObject({
      reason: 'size-mismatch',
    });
    await expectPreviousIntactAndLockFree(cache);
  });

  it('a sha256 mismatch', async () => {
    const cache = await withExpiredPrevious();
    await expect(
      cache.getOrFetch('k', () => ({ body: 'bytes', sha256: sha256('other') })),
    ).rejects.toMatchObject({
      reason: 'hash-mismatch',
    });
    await expectPreviousIntactAndLockFree(cache);
  });

  it('a throwing fetcher: its own error propagates unchanged', async () => {
    const cache = await withExpiredPrevious();
    const failure = new Error('server down');
    await expect(
      cache.getOrFetch('k', () => {
        throw failure;
      }),
    ).rejects.toBe(failure);
    await expectPreviousIntactAndLockFree(cache);
  });

  it('a stream that fails mid-body: its error propagates unchanged', async () => {
    const cache = await withExpiredPrevious();
    const failure = new Error('connection reset');
    const body = (async function* () {
      yield Buffer.from('half of it');
      throw failure;
    })();
    await expect(cache.getOrFetch('k', () => body)).rejects.toBe(failure);
    await expectPreviousIntactAndLockFree(cache);
  });
});

describe('staleIfError and NOT_MODIFIED', () => {
  it('serves the expired entry when the fetcher fails, and only with staleIfError', async () => {
    const cache = cacheWith({ ttl: 1_000 });
    const first = await cache.getOrFetch('k', () => 'old but usable');
    clock.advance(10_000);
    const failing = () => Promise.reject(new Error('offline'));
    await expect(cache.getOrFetch('k', failing)).rejects.toThrow('offline');
    expect(await cache.getOrFetch('k', failing, { staleIfError: true })).toBe(first);
    const corrupt = () => ({ body: 'x', expectedSize: 5 });
    expect(await cache.getOrFetch('k', corrupt, { staleIfError: true })).toBe(first);
    await expect(cache.getOrFetch('missing', failing, { staleIfError: true })).rejects.toThrow('offline');
  });

  it('serves the expired entry when the lock wait times out', async () => {
    const cache = cacheWith({ ttl: 1_000, lockTimeoutMs: 50 });
    const first = await cache.getOrFetch('k', () => 'old');
    clock.advance(10_000);
    const held = await tryLock(path.join(dirOf(), 'k.lock'), 10_000);
    try {
      await expect(cache.getOrFetch('k', () => 'new')).rejects.toBeInstanceOf(LockTimeoutError);
      expect(await cache.getOrFetch('k', () => 'new', { staleIfError: true })).toBe(first);
    } finally {
      await held?.release();
    }
  });

  it('does not turn an abort into a stale answer', async () => {
    const cache = cacheWith({ ttl: 1_000 });
    await cache.getOrFetch('k', () => 'old');
    clock.advance(10_000);
    const controller = new AbortController();
    const pending = cache.getOrFetch('k', () => new Promise<string>(() => {}), {
      signal: controller.signal,
      staleIfError: true,
    });
    setTimeout(() => controller.abort(), 20);
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('NOT_MODIFIED renews the previous entry without rewriting the payload', async () => {
    const cache = cacheWith({ ttl: 1_000 });
    const first = await cache.getOrFetch('k', () => ({ body: 'v1', etag: '"abc"' }));
    const inodeBefore = (await fsp.stat(first)).ino;
    const manifestPath = `${first}.manifest.json`;
    await fsp.writeFile(
      manifestPath,
      JSON.stringify({ ...JSON.parse(await fsp.readFile(manifestPath, 'utf8')), extra_field: 'kept' }),
    );
    clock.advance(5_000);
    let conditional: string | undefined;
    const renewed = await cache.getOrFetch('k', (ctx) => {
      conditional = ctx.previous?.manifest.etag;
      return NOT_MODIFIED;
    });
    expect(conditional).toBe('"abc"');
    expect(renewed).toBe(first);
    expect((await fsp.stat(renewed)).ino).toBe(inodeBefore);
    const manifest = JSON.parse(await fsp.readFile(manifestPath, 'utf8'));
    expect(manifest.created_at).toBe(new Date(clock.now()).toISOString());
    expect(manifest.extra_field).toBe('kept');
    expect(await cache.has('k')).toBe(true);
  });

  it('NOT_MODIFIED without a previous entry is InvalidOptionsError', async () => {
    const cache = cacheWith();
    await expect(cache.getOrFetch('k', () => NOT_MODIFIED)).rejects.toBeInstanceOf(InvalidOptionsError);
    expect(await exists(path.join(dirOf(), 'k.manifest.json'))).toBe(false);
  });
});

describe('manifests that are not trustworthy', () => {
  async function seeded(manifestText: string, payload = 'payload!') {
    await fsp.mkdir(dirOf(), { recursive: true });
    await fsp.writeFile(path.join(dirOf(), 'k'), payload);
    await fsp.writeFile(path.join(dirOf(), 'k.manifest.json'), manifestText);
  }
  const valid = (fields: Record<string, unknown>) =>
    JSON.stringify({
      schema_version: 1,
      created_at: new Date(clock.now()).toISOString(),
      size_bytes: 8,
      ...fields,
    });

  const misses: Record<string, () => string> = {
    garbage: () => '\u0000\u0001 not json {',
    'empty file': () => '',
    'JSON array': () => '[1,2,3]',
    'size as string': () => valid({ size_bytes: '8' }),
    'numeric created_at': () => valid({ created_at: clock.now() }),
    'far-future created_at': () => valid({ created_at: new Date(clock.now() + 24 * HOUR).toISOString() }),
    'size mismatch': () => valid({ size_bytes: 9 }),
    'another key': () => valid({ key: 'K' }),
  };
  for (const [kind, text] of Object.entries(misses)) {
    it(`treats a manifest with ${kind} as a miss`, async () => {
      await seeded(text());
      const cache = cacheWith();
      expect(await cache.has('k')).toBe(false);
      const returned = await cache.getOrFetch('k', () => 'refetched');
      expect(await fsp.readFile(returned, 'utf8')).toBe('refetched');
    });
  }

  it('serves an entry written by the Python imf_reader 1.5 cache', async () => {
    const createdAt = new Date(clock.now() - 1_000).toISOString().replace(/\.\d{3}Z$/, '+0000');
    await seeded(JSON.stringify({ schema_version: '1.5.0', created_at: createdAt, size_bytes: 8 }));
    const cache = cacheWith();
    let fetched = false;
    const returned = await cache.getOrFetch('k', () => {
      fetched = true;
      return 'x';
    });
    expect(fetched).toBe(false);
    expect(await fsp.readFile(returned, 'utf8')).toBe('payload!');
  });
});

describe('eviction', () => {
  const noGrace = { touchIntervalMs: 0, evictionGraceMs: 0 };
  async function write(cache: CacheManager, key: string, body = key) {
    await cache.getOrFetch(key, () => body);
    await cache[backgroundEviction];
    clock.advance(1_000);
  }
  const keysOf = async (cache: CacheManager) => (await cache.list()).map((entry) => entry.key).sort();

  it('keeps keepN entries, evicting the least recently USED (a hit moves an entry up)', async () => {
    const cache = cacheWith({ keepN: 3, ...noGrace });
    for (const key of ['a', 'b', 'c']) await write(cache, key);
    await cache.getOrFetch('a', () => 'unused');
    clock.advance(1_000);
    await write(cache, 'd');
    expect(await keysOf(cache)).toEqual(['a', 'c', 'd']);
  });

  it("a pass lstats only the payloads that are new since this process's last pass, and its victim", async () => {
    const cache = cacheWith({ keepN: 20, ...noGrace });
    // The 21st write's pass is the first to scan: it lstats all 21 payloads and evicts k00.
    for (let index = 0; index < 21; index += 1) await write(cache, `k${String(index).padStart(2, '0')}`);
    const lstatted = new Set<string>();
    const lstat = fsp.lstat;
    const spy = vi.spyOn(fsp, 'lstat').mockImplementation((async (...args: Parameters<typeof fsp.lstat>) => {
      lstatted.add(path.basename(String(args[0])));
      return lstat(...args);
    }) as typeof fsp.lstat);
    try {
      await write(cache, 'new');
    } finally {
      spy.mockRestore();
    }
    expect(await keysOf(cache)).not.toContain('k01');
    expect([...lstatted].filter((name) => /^k\d\d$/.test(name))).toEqual(['k01']);
  });

  it('an entry used elsewhere since the last pass is not evicted on stale facts: the least recently used goes', async () => {
    const cache = cacheWith({ keepN: 3, ...noGrace });
    for (const key of ['a', 'b', 'c', 'd']) await write(cache, key);
    // The pass after d scanned and remembered every payload, and evicted a.
    expect(await keysOf(cache)).toEqual(['b', 'c', 'd']);
    // Another process hits b: only its mtime moves, which this process has not seen.
    const usedAt = new Date(clock.now());
    await fsp.utimes(path.join(dirOf(), 'b'), usedAt, usedAt);
    clock.advance(1_000);
    await write(cache, 'e');
    // b, remembered as the oldest, is found used when it is re-checked under its lock: c goes instead, and
    // the sublayer is at keepN (counting b as gone would have left 4).
    expect(await keysOf(cache)).toEqual(['b', 'd', 'e']);
  });

  it('evicts by maxBytes', async () => {
    const cache = cacheWith({ keepN: Number.POSITIVE_INFINITY, maxBytes: 25, ...noGrace });
    for (const key of ['a', 'b', 'c']) await write(cache, key, key.repeat(10));
    expect(await keysOf(cache)).toEqual(['b', 'c']);
  });

  it('maxBytes holds after a pass though another process replaced an entry with a bigger one since the last', async () => {
    const cache = cacheWith({ keepN: Number.POSITIVE_INFINITY, maxBytes: 30, ...noGrace });
    for (const key of ['a', 'b']) await write(cache, key, key.repeat(10));
    // Another process republishes b with 25 bytes, as a commit does: payload, then its manifest.
    const bigger = 'B'.repeat(25);
    const paths = { payload: path.join(dirOf(), 'b'), manifest: path.join(dirOf(), 'b.manifest.json') };
    const manifest = JSON.parse(await fsp.readFile(paths.manifest, 'utf8'));
    await fsp.writeFile(`${paths.payload}.other`, bigger);
    const usedAt = new Date(clock.now());
    await fsp.utimes(`${paths.payload}.other`, usedAt, usedAt);
    await fsp.rename(`${paths.payload}.other`, paths.payload);
    const republished = {
      ...manifest,
      size_bytes: 25,
      sha256: createHash('sha256').update(bigger).digest('hex'),
    };
    await fsp.writeFile(`${paths.manifest}.other`, JSON.stringify(republished));
    await fsp.rename(`${paths.manifest}.other`, paths.manifest);
    clock.advance(1_000);
    await write(cache, 'c', 'c'.repeat(10));
    // 45 bytes: a goes, then b (c was just written). A pass going by b's remembered 10 bytes saw 30 and
    // removed nothing.
    expect(await keysOf(cache)).toEqual(['c']);
  });

  it('never evicts the key just written, even when it alone exceeds maxBytes', async () => {
    const cache = cacheWith({ maxBytes: 5, ...noGrace });
    await write(cache, 'a', 'aaa');
    await write(cache, 'big', 'x'.repeat(100));
    expect(await keysOf(cache)).toEqual(['big']);
  });

  it('never evicts entries used inside the grace window', async () => {
    const cache = cacheWith({ keepN: 1, touchIntervalMs: 0, evictionGraceMs: 10_000 });
    await write(cache, 'a');
    await write(cache, 'b');
    expect(await keysOf(cache)).toEqual(['a', 'b']);
    clock.advance(20_000);
    await write(cache, 'c');
    expect(await keysOf(cache)).toEqual(['c']);
  });

  it('never evicts an entry whose lock is held', async () => {
    const cache = cacheWith({ keepN: 1, ...noGrace });
    await write(cache, 'a');
    const held = await tryLock(path.join(dirOf(), 'a.lock'), 10_000);
    try {
      await write(cache, 'b');
      expect(await keysOf(cache)).toEqual(['a', 'b']);
    } finally {
      await held?.release();
    }
    const report = await cache.prune();
    expect(report.removed.map((item) => [item.key, item.reason])).toEqual([['a', 'evicted']]);
    expect(await keysOf(cache)).toEqual(['b']);
  });

  it('a write returns before its eviction runs: the victim is still there when getOrFetch resolves', async () => {
    const cache = cacheWith({ keepN: 1, ...noGrace });
    await write(cache, 'old');
    await cache.getOrFetch('new', () => 'new');
    // Looked at before anything else can run: an eviction on the caller's path would have removed it.
    expect(existsSync(path.join(dirOf(), 'old'))).toBe(true);
    expect(cache.stats().evictions).toBe(0);
    await cache[backgroundEviction];
    expect(await keysOf(cache)).toEqual(['new']);
    expect(cache.stats().evictions).toBe(1);
  });

  it('a burst of concurrent writes is down to keepN once its passes have finished, every removal counted', async () => {
    const cache = cacheWith({ keepN: 2, ...noGrace });
    const keys = ['a', 'b', 'c', 'd', 'e', 'f'];
    await Promise.all(keys.map((key) => cache.getOrFetch(key, () => key)));
    await cache[backgroundEviction];
    expect(await keysOf(cache)).toHaveLength(2);
    expect(cache.stats().evictions).toBe(4);
  });

  it('removes victims in batches, never more than the limit asks, and replaces a locked one', async () => {
    const filler = cacheWith({ keepN: Number.POSITIVE_INFINITY, ...noGrace });
    for (let index = 0; index < 40; index += 1) await write(filler, `k${String(index).padStart(2, '0')}`);
    const cache = cacheWith({ keepN: 5, ...noGrace });
    // k03 is in the first batch of least recently used entries, and held by a writer.
    const held = await tryLock(path.join(dirOf(), 'k03.lock'), 10_000);
    try {
      await write(cache, 'last');
    } finally {
      await held?.release();
    }
    expect(await keysOf(cache)).toEqual(['k03', 'k37', 'k38', 'k39', 'last']);
    expect(cache.stats().evictions).toBe(36);
  });

  it('counts a victim that another pass or janitor is removing as gone, rather than evicting one more', async () => {
    const filler = cacheWith({ keepN: Number.POSITIVE_INFINITY, ...noGrace });
    for (let index = 0; index < 40; index += 1) await write(filler, `k${String(index).padStart(2, '0')}`);
    const cache = cacheWith({ keepN: 5, ...noGrace });
    // k03 is held as another process's pass holds the victim it is removing (seen under Wine: two passes
    // chose the same victim, and the one that found it locked evicted the next entry too).
    const remover = await tryLock(path.join(dirOf(), 'k03.lock'), 10_000, undefined, 'remove-entry');
    try {
      await write(cache, 'last');
      expect(await keysOf(cache)).toEqual(['k03', 'k36', 'k37', 'k38', 'k39', 'last']);
      expect(cache.stats().evictions).toBe(35);
      await fsp.rm(path.join(dirOf(), 'k03.manifest.json'));
      await fsp.rm(path.join(dirOf(), 'k03'));
    } finally {
      await remover?.release();
    }
    expect(await keysOf(cache)).toEqual(['k36', 'k37', 'k38', 'k39', 'last']);
  });

  it.skipIf(symlinksNeedPrivilege)(
    'a pass that fails is reported on payload-cache:evict:error; nothing throws, the wait still resolves',
    async () => {
      const cache = cacheWith({ keepN: 1, ...noGrace });
      await write(cache, 'a');
      const messages: unknown[] = [];
      // Only this test's sublayer: a pass another test left running publishes on the same channel.
      const listener = (message: unknown) => {
        if ((message as { dir?: string }).dir === dirOf()) messages.push(message);
      };
      diagnosticsChannel.subscribe('payload-cache:evict:error', listener);
      try {
        await cache.getOrFetch('b', () => 'b');
        // Before the pass starts, the sublayer becomes a symlink, which no janitor works through.
        renameSync(dirOf(), `${dirOf()}-moved`);
        symlinkSync(`${dirOf()}-moved`, dirOf());
        await cache[backgroundEviction];
      } finally {
        diagnosticsChannel.unsubscribe('payload-cache:evict:error', listener);
      }
      expect(messages).toEqual([
        {
          sublayer: 'data',
          key: 'b',
          dir: dirOf(),
          error: expect.objectContaining({ code: 'ERR_UNSAFE_PATH' }),
        },
      ]);
      expect(cache.stats().evictions).toBe(0);
      expect((await fsp.readdir(`${dirOf()}-moved`)).sort()).toEqual([
        'a',
        'a.manifest.json',
        'b',
        'b.manifest.json',
      ]);
    },
  );

  it.skipIf(symlinksNeedPrivilege)(
    'a process whose last write asked for a pass that fails exits 0, the error on the channel only',
    () => {
      const dist = (file: string) => JSON.stringify(new URL(`../dist/${file}`, import.meta.url).href);
      const script = `
        import diagnosticsChannel from 'node:diagnostics_channel';
        import fs from 'node:fs';
        const { CacheManager } = await import(${dist('index.js')});
        const { backgroundEviction } = await import(${dist('cache-manager.js')});
        diagnosticsChannel.subscribe('payload-cache:evict:error', (message) =>
          console.log('evict:error', message.key, message.error.code));
        const dir = ${JSON.stringify(dirOf())};
        const cache = new CacheManager({ sublayer: 'data', ttl: 60000, root: ${JSON.stringify(root)}, keepN: 1,
          touchIntervalMs: 0, evictionGraceMs: 0 });
        await cache.getOrFetch('a', () => 'a');
        await cache[backgroundEviction];
        await cache.getOrFetch('b', () => 'b');
        fs.renameSync(dir, dir + '-moved');
        fs.symlinkSync(dir + '-moved', dir);
        console.log('returned');
      `;
      const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      expect(run.stdout).toBe('returned\nevict:error b ERR_UNSAFE_PATH\n');
    },
  );
});

describe('clear, prune and orphans', () => {
  it('clear() removes committed entries but not a held lock or its young tmp file', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('a', () => 'A');
    await cache.getOrFetch('b', () => 'B');
    const held = await tryLock(path.join(dirOf(), 'busy.lock'), 10_000);
    const youngTmp = path.join(dirOf(), 'busy.tmp.otherhost.123.abcdef');
    await fsp.writeFile(youngTmp, 'in flight');
    try {
      await cache.clear();
      expect(await cache.get('a')).toBeUndefined();
      expect(await cache.get('b')).toBeUndefined();
      expect(await exists(path.join(dirOf(), 'busy.lock', 'owner.json'))).toBe(true);
      expect(await exists(youngTmp)).toBe(true);
      expect((await fsp.readdir(dirOf())).sort()).toEqual(['busy.lock', path.basename(youngTmp)]);
    } finally {
      await held?.release();
    }
  });

  it('clear() on a key with a live writer removes its manifest, so the key is a miss at once', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('a', () => 'A');
    const held = await tryLock(path.join(dirOf(), 'a.lock'), 10_000);
    try {
      await cache.clear();
      expect(await cache.has('a')).toBe(false);
    } finally {
      await held?.release();
    }
  });

  it('prune() sweeps orphans older than staleTmpMs and keeps younger ones, and what it cannot prove it wrote', async () => {
    const cache = cacheWith({ staleTmpMs: HOUR });
    await cache.getOrFetch('kept', () => 'K');
    await cache[backgroundSweep];
    const old = new Date(clock.now() - 2 * HOUR);
    const young = new Date(clock.now() - 1_000);
    const plant = async (name: string, when: Date, text = 'junk') => {
      const file = path.join(dirOf(), name);
      await fsp.writeFile(file, text);
      await fsp.utimes(file, when, when);
      return file;
    };
    const manifestFor = (key: string, sizeBytes: number) =>
      JSON.stringify({
        schema_version: 1,
        key,
        created_at: '2026-01-01T00:00:00.000Z',
        size_bytes: sizeBytes,
      });
    const oldTmp = await plant('x.tmp.h.1.00000000000000aa', old);
    const youngTmp = await plant('y.tmp.h.1.00000000000000bb', young);
    // Lone payloads with the record a crashed commit leaves (its pending manifest): provably ours.
    const oldLonePayload = await plant('lone-old', old);
    const oldProof = await plant(
      'lone-old.manifest.json.tmp.h.1.00000000000000cc',
      old,
      manifestFor('lone-old', 4),
    );
    const youngLonePayload = await plant('lone-young', young);
    await plant('lone-young.manifest.json.tmp.h.1.00000000000000dd', young, manifestFor('lone-young', 4));
    // A file nobody can prove the cache wrote, however old, and a manifest-named file that is no manifest.
    const userFile = await plant('notes.txt', old);
    const strayManifest = await plant('photos.manifest.json', old);
    const loneManifest = await plant('ghost.manifest.json', young, manifestFor('ghost', 9));
    const report = await cache.prune();
    expect(report.removed.map((item) => [path.basename(item.path), item.reason]).sort()).toEqual(
      [
        ['x.tmp.h.1.00000000000000aa', 'orphan-tmp'],
        ['lone-old', 'orphan-payload'],
        ['ghost.manifest.json', 'orphan-manifest'],
      ].sort(),
    );
    expect(await exists(oldTmp)).toBe(false);
    expect(await exists(oldLonePayload)).toBe(false);
    expect(await exists(oldProof)).toBe(false);
    expect(await exists(loneManifest)).toBe(false);
    expect(await exists(youngTmp)).toBe(true);
    expect(await exists(youngLonePayload)).toBe(true);
    expect(await exists(userFile)).toBe(true);
    expect(await exists(strayManifest)).toBe(true);
    expect(report.foreign.map((item) => [path.basename(item.path), item.reason]).sort()).toEqual(
      [
        ['notes.txt', 'unproven-payload'],
        ['photos.manifest.json', 'invalid-manifest'],
      ].sort(),
    );
    expect(await cache.has('kept')).toBe(true);
  });

  it('prune() removes expired entries', async () => {
    const cache = cacheWith({ ttl: 1_000, touchIntervalMs: 0, evictionGraceMs: 0 });
    await cache.getOrFetch('old', () => 'O');
    clock.advance(5_000);
    await cache.getOrFetch('new', () => 'N');
    const report = await cache.prune();
    expect(report.removed).toEqual([{ key: 'old', path: path.join(dirOf(), 'old'), reason: 'expired' }]);
    expect((await cache.list()).map((entry) => entry.key)).toEqual(['new']);
  });

  it('delete() removes one entry', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('a', () => 'A');
    expect(await cache.delete('a')).toBe(true);
    expect(await cache.delete('a')).toBe(false);
    expect(await fsp.readdir(dirOf())).toEqual([]);
  });
});

describe('list and verify', () => {
  it('lists entries most recently used first, with their facts', async () => {
    const cache = cacheWith({ ttl: 10_000, touchIntervalMs: 0 });
    await cache.getOrFetch('first', () => '1');
    clock.advance(1_000);
    await cache.getOrFetch('second', () => '22');
    clock.advance(1_000);
    await cache.get('first');
    clock.advance(8_000);
    const entries = await cache.list();
    expect(entries.map((entry) => [entry.key, entry.sizeBytes, entry.expired])).toEqual([
      ['first', 1, true],
      ['second', 2, false],
    ]);
    expect(entries[0]?.lastUsedAt.getTime()).toBe(Date.parse('2026-01-01T00:00:02Z'));
    expect(entries[1]?.sha256).toBe(sha256('22'));
  });

  it('verify() finds a payload altered on disk and fix removes it', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('good', () => 'good');
    const bad = await cache.getOrFetch('bad', () => 'abcd');
    await fsp.writeFile(bad, 'abce');
    const report = await cache.verify();
    expect(report.checked).toBe(1);
    expect(report.bad).toEqual([{ key: 'bad', path: bad, reason: 'hash-mismatch' }]);
    expect(report.removed).toEqual([]);
    const fixed = await cache.verify({ fix: true });
    expect(fixed.removed).toEqual([{ key: 'bad', path: bad, reason: 'hash-mismatch' }]);
    expect((await cache.list()).map((entry) => entry.key)).toEqual(['good']);
  });
});

describe('verify and foreign manifests', () => {
  it('reports an entry whose manifest names another key as wrong-key, as lookups treat it as a miss', async () => {
    const cache = cacheWith();
    const returned = await cache.getOrFetch('mine', () => 'bytes');
    const manifestPath = `${returned}.manifest.json`;
    const manifest = JSON.parse(await fsp.readFile(manifestPath, 'utf8'));
    await fsp.writeFile(manifestPath, JSON.stringify({ ...manifest, key: 'MINE' }));
    expect(await cache.has('mine')).toBe(false);
    const report = await cache.verify();
    expect(report.bad).toEqual([{ key: 'mine', path: returned, reason: 'wrong-key' }]);
    expect(report.checked).toBe(0);
  });
});

describe('concurrency inside one process', () => {
  it('50 concurrent calls on one key run the fetcher once', async () => {
    const cache = cacheWith();
    let fetches = 0;
    const slowFetch = async () => {
      fetches++;
      await new Promise((resolve) => setTimeout(resolve, 50));
      return patternBytes(100_000);
    };
    const paths = await Promise.all(Array.from({ length: 50 }, () => cache.getOrFetch('hot', slowFetch)));
    expect(fetches).toBe(1);
    expect(new Set(paths).size).toBe(1);
    expect(sha256(await fsp.readFile(paths[0] as string))).toBe(sha256(patternBytes(100_000)));
  });

  it('two managers on the same sublayer share the flight too', async () => {
    let fetches = 0;
    const fetch = async () => {
      fetches++;
      await new Promise((resolve) => setTimeout(resolve, 30));
      return 'shared';
    };
    await Promise.all([cacheWith().getOrFetch('k', fetch), cacheWith().getOrFetch('k', fetch)]);
    expect(fetches).toBe(1);
  });

  it("one caller's abort does not fail the others", async () => {
    const cache = cacheWith();
    const controller = new AbortController();
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const fetch = async () => {
      await gate;
      return 'done';
    };
    const aborted = cache.getOrFetch('k', fetch, { signal: controller.signal });
    const patient = cache.getOrFetch('k', fetch);
    const alsoPatient = cache.getOrFetch('k', fetch, { signal: new AbortController().signal });
    controller.abort();
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError' });
    release();
    expect(await fsp.readFile(await patient, 'utf8')).toBe('done');
    expect(await alsoPatient).toBe(await patient);
  });

  it('signal aborts a lock wait', async () => {
    const cache = cacheWith();
    await fsp.mkdir(dirOf(), { recursive: true });
    const held = await tryLock(path.join(dirOf(), 'k.lock'), 10_000);
    try {
      const reason = new Error('caller gave up');
      const controller = new AbortController();
      let fetched = false;
      const pending = cache.getOrFetch(
        'k',
        () => {
          fetched = true;
          return 'x';
        },
        { signal: controller.signal },
      );
      setTimeout(() => controller.abort(reason), 30);
      await expect(pending).rejects.toBe(reason);
      expect(fetched).toBe(false);
    } finally {
      await held?.release();
    }
  });

  it('a waiter is served the entry another writer published while it still holds the lock', async () => {
    const cache = cacheWith();
    await fsp.mkdir(dirOf(), { recursive: true });
    const held = await tryLock(path.join(dirOf(), 'k.lock'), 10_000);
    try {
      let fetched = false;
      const waiting = cache.getOrFetch('k', () => {
        fetched = true;
        return 'mine';
      });
      await new Promise((resolve) => setTimeout(resolve, 30));
      await fsp.writeFile(path.join(dirOf(), 'k'), 'theirs');
      const createdAt = new Date(clock.now()).toISOString();
      await fsp.writeFile(
        path.join(dirOf(), 'k.manifest.json'),
        JSON.stringify({ schema_version: 1, key: 'k', created_at: createdAt, size_bytes: 6 }),
      );
      expect(await fsp.readFile(await waiting, 'utf8')).toBe('theirs');
      expect(fetched).toBe(false);
      expect(await exists(path.join(dirOf(), 'k.lock', 'owner.json'))).toBe(true);
    } finally {
      await held?.release();
    }
  });

  it('signal aborts a running fetch and leaves no tmp file behind', async () => {
    const cache = cacheWith();
    const controller = new AbortController();
    let streamDestroyed = false;
    const endless = new Readable({
      read() {
        setTimeout(() => this.push(Buffer.alloc(16_384, 1)), 1);
      },
      destroy(error, callback) {
        streamDestroyed = true;
        callback(error);
      },
    });
    const pending = cache.getOrFetch('k', () => endless, { signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect((await tmpFilesIn(dirOf())).length).toBe(1);
    controller.abort();
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
    expect(await tmpFilesIn(dirOf())).toEqual([]);
    expect(await exists(path.join(dirOf(), 'k'))).toBe(false);
    expect(await exists(path.join(dirOf(), 'k.lock'))).toBe(false);
    expect(streamDestroyed).toBe(true);
  });

  it('an already-aborted signal rejects without fetching', async () => {
    const cache = cacheWith();
    let fetched = false;
    const controller = new AbortController();
    controller.abort();
    await expect(
      cache.getOrFetch(
        'k',
        () => {
          fetched = true;
          return 'x';
        },
        { signal: controller.signal },
      ),
    ).rejects.toMatchObject({ name: 'AbortError' });
    expect(fetched).toBe(false);
  });
});

describe('the cache directory', () => {
  it('writes CACHEDIR.TAG at the root', async () => {
    await cacheWith().getOrFetch('k', () => 'v');
    const tag = await fsp.readFile(path.join(root, 'CACHEDIR.TAG'), 'utf8');
    expect(tag.startsWith('Signature: 8a477f597d28d172789f06886806bc55')).toBe(true);
  });
});

function* chunked(bytes: Buffer, size: number): Generator<Buffer> {
  for (let offset = 0; offset < bytes.length; offset += size) yield bytes.subarray(offset, offset + size);
}

describe('a refused fetcher answer', () => {
  it('destroys the body stream it will not read', async () => {
    const cache = new CacheManager({ sublayer: 'data', ttl: 1_000, root });
    const body = Readable.from(['never read']);
    await expect(cache.getOrFetch('k', () => ({ body, expectedSize: 1.5 }))).rejects.toBeInstanceOf(
      InvalidOptionsError,
    );
    expect(body.destroyed).toBe(true);
  });
});
