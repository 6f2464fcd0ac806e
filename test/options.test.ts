import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  CacheManager,
  type CacheManagerOptions,
  InvalidKeyError,
  InvalidOptionsError,
  PayloadCacheError,
} from '../src/index.js';

/** The error `new CacheManager(options)` throws; fails the test if it constructs. */
function constructorError(options: unknown): unknown {
  try {
    new CacheManager(options as CacheManagerOptions);
  } catch (error) {
    return error;
  }
  return expect.fail(`CacheManager accepted ${String(JSON.stringify(options))}`);
}

/** Every path under `dir`, relative to it, sorted. */
async function listTree(dir: string): Promise<string[]> {
  const names = await fsp.readdir(dir, { recursive: true });
  return names.map(String).sort();
}

let base: string;
let root: string;

beforeEach(async () => {
  base = await fsp.mkdtemp(path.join(os.tmpdir(), 'payload-cache-options-'));
  root = path.join(base, 'root');
  await fsp.mkdir(root);
});

afterEach(async () => {
  await fsp.rm(base, { recursive: true, force: true });
});

describe('CacheManager constructor rejects invalid options with InvalidOptionsError', () => {
  const bad: [label: string, options: Record<string, unknown>][] = [
    ['negative ttl', { ttl: -1 }],
    ['NaN ttl', { ttl: Number.NaN }],
    ['missing ttl', { ttl: undefined }],
    ['ttl as a string', { ttl: '1000' }],
    ['keepN 0', { ttl: 1000, keepN: 0 }],
    ['keepN NaN', { ttl: 1000, keepN: Number.NaN }],
    ['keepN 1.5', { ttl: 1000, keepN: 1.5 }],
    ['keepN -1', { ttl: 1000, keepN: -1 }],
    ['keepN -Infinity', { ttl: 1000, keepN: Number.NEGATIVE_INFINITY }],
    ['maxBytes -1', { ttl: 1000, maxBytes: -1 }],
    ['maxBytes NaN', { ttl: 1000, maxBytes: Number.NaN }],
    ['lockStaleMs 1000 (below the 2000 minimum)', { ttl: 1000, lockStaleMs: 1000 }],
    ['lockStaleMs Infinity', { ttl: 1000, lockStaleMs: Number.POSITIVE_INFINITY }],
    ['lockTimeoutMs -1', { ttl: 1000, lockTimeoutMs: -1 }],
    ['lockTimeoutMs Infinity', { ttl: 1000, lockTimeoutMs: Number.POSITIVE_INFINITY }],
    ['staleTmpMs -1', { ttl: 1000, staleTmpMs: -1 }],
    ['touchIntervalMs NaN', { ttl: 1000, touchIntervalMs: Number.NaN }],
    ['evictionGraceMs -5', { ttl: 1000, evictionGraceMs: -5 }],
    ['maxClockSkewMs -1', { ttl: 1000, maxClockSkewMs: -1 }],
    ['now not a function', { ttl: 1000, now: 12345 }],
    ['an unknown option name (keepn)', { ttl: 1000, keepn: 3 }],
    ['an empty root', { ttl: 1000, root: '' }],
    ['a root with a NUL', { ttl: 1000, root: 'a\u0000b' }],
  ];

  it.each(bad)('%s', (_label, options) => {
    const error = constructorError({ sublayer: 'imf', ...options });
    expect(error).toBeInstanceOf(InvalidOptionsError);
    expect(error).toBeInstanceOf(PayloadCacheError);
    expect((error as InvalidOptionsError).code).toBe('ERR_INVALID_OPTIONS');
  });

  it('names the unknown option in the message', () => {
    const error = constructorError({ sublayer: 'imf', ttl: 1000, keepn: 3 }) as Error;
    expect(error.message).toContain('keepn');
  });

  it('rejects a missing options object', () => {
    expect(constructorError(undefined)).toBeInstanceOf(InvalidOptionsError);
  });
});

describe('CacheManager constructor rejects a bad sublayer with InvalidKeyError', () => {
  it.each(['../x', 'a/b', '', '..', 'x.lock'])('%j', (sublayer) => {
    const error = constructorError({ sublayer, ttl: 1000 });
    expect(error).toBeInstanceOf(InvalidKeyError);
    expect((error as InvalidKeyError).code).toBe('ERR_INVALID_KEY');
    expect((error as InvalidKeyError).key).toBe(sublayer);
  });

  it('rejects a missing sublayer', () => {
    expect(constructorError({ ttl: 1000 })).toBeInstanceOf(InvalidKeyError);
  });
});

describe('CacheManager constructor accepts valid options', () => {
  it.each<[string, Partial<CacheManagerOptions>]>([
    ['ttl Infinity', { ttl: Number.POSITIVE_INFINITY }],
    ['ttl 0', { ttl: 0 }],
    ['keepN Infinity', { ttl: 1000, keepN: Number.POSITIVE_INFINITY }],
    ['keepN 1', { ttl: 1000, keepN: 1 }],
    ['maxBytes 0', { ttl: 1000, maxBytes: 0 }],
    ['lockStaleMs 2000', { ttl: 1000, lockStaleMs: 2000 }],
    ['lockTimeoutMs 0', { ttl: 1000, lockTimeoutMs: 0 }],
    [
      'every option',
      {
        ttl: 1000,
        keepN: 2,
        maxBytes: 1e9,
        lockStaleMs: 5000,
        lockTimeoutMs: 60_000,
        staleTmpMs: 1000,
        touchIntervalMs: 0,
        evictionGraceMs: 0,
        maxClockSkewMs: 0,
        now: () => 0,
      },
    ],
  ])('%s', (_label, options) => {
    const cache = new CacheManager({ sublayer: 'imf', root, ...options } as CacheManagerOptions);
    expect(cache.sublayer).toBe('imf');
  });

  it('does not touch the disk when constructed', async () => {
    new CacheManager({ sublayer: 'imf', ttl: 1000, root });
    expect(await listTree(root)).toEqual([]);
  });
});

describe('getOrFetch rejects bad arguments with a rejected promise, never a synchronous throw', () => {
  const cacheIn = (dir: string) => new CacheManager({ sublayer: 'imf', ttl: 60_000, root: dir });

  it.each<[string, unknown, unknown]>([
    ['a non-function fetcher', 'https://example.org/weo.zip', undefined],
    ['an undefined fetcher', undefined, undefined],
    ['a validator that is not a function', () => 'body', { validator: 'sha256' }],
    ['a signal that is not an AbortSignal', () => 'body', { signal: { aborted: false } }],
    ['refresh that is not a boolean', () => 'body', { refresh: 'yes' }],
    ['options that are not an object', () => 'body', 'refresh'],
  ])('%s', async (_label, fetchFn, options) => {
    const cache = cacheIn(root);
    let pending: unknown;
    expect(() => {
      pending = cache.getOrFetch('weo.zip', fetchFn as never, options as never);
    }).not.toThrow();
    expect(pending).toBeInstanceOf(Promise);
    await expect(pending).rejects.toBeInstanceOf(InvalidOptionsError);
    await expect(pending).rejects.toMatchObject({ code: 'ERR_INVALID_OPTIONS' });
    expect(await listTree(root)).toEqual([]);
  });

  it('does not call the fetcher when the validator is invalid', async () => {
    const fetchFn = vi.fn(() => 'body');
    await expect(
      cacheIn(root).getOrFetch('weo.zip', fetchFn, { validator: 42 as never }),
    ).rejects.toBeInstanceOf(InvalidOptionsError);
    expect(fetchFn).not.toHaveBeenCalled();
  });
});

describe('hostile keys reject with InvalidKeyError and create no files', () => {
  const hostileKeys = [
    '../x',
    '../../x',
    '../../../x',
    '..',
    '.',
    'a/b',
    'a\\b',
    '',
    'a\u0000b',
    'x.lock',
    'CACHEDIR.TAG',
  ];
  type Method = (cache: CacheManager, key: string) => Promise<unknown>;
  const methods: [name: string, call: Method][] = [
    ['getOrFetch', (cache, key) => cache.getOrFetch(key, () => 'evil')],
    ['get', (cache, key) => cache.get(key)],
    ['has', (cache, key) => cache.has(key)],
    ['delete', (cache, key) => cache.delete(key)],
  ];

  it.each(methods)('%s', async (_name, call) => {
    const beforeBase = await listTree(base);
    const beforeParent = await fsp.readdir(path.dirname(base));
    const cache = new CacheManager({ sublayer: 'imf', ttl: 60_000, root });
    for (const key of hostileKeys) {
      let pending: unknown;
      expect(() => {
        pending = call(cache, key);
      }).not.toThrow();
      expect(pending).toBeInstanceOf(Promise);
      await expect(pending).rejects.toBeInstanceOf(InvalidKeyError);
      await expect(pending).rejects.toMatchObject({ code: 'ERR_INVALID_KEY', key });
    }
    await new Promise((resolve) => setImmediate(resolve));
    expect(await listTree(base)).toEqual(beforeBase);
    expect(beforeBase).toEqual(['root']);
    // '../../../x' from <base>/root/imf would land in the parent of <base>.
    const afterParent = await fsp.readdir(path.dirname(base));
    expect(afterParent.filter((name) => !beforeParent.includes(name))).not.toContain('x');
  });

  it('never calls the fetcher for a hostile key', async () => {
    const fetchFn = vi.fn(() => 'evil');
    const cache = new CacheManager({ sublayer: 'imf', ttl: 60_000, root });
    await expect(cache.getOrFetch('../x', fetchFn)).rejects.toBeInstanceOf(InvalidKeyError);
    expect(fetchFn).not.toHaveBeenCalled();
  });
});
