import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backgroundSweep } from '../src/cache-manager.js';
import { CacheManager, getCacheDir, InvalidOptionsError, resetCacheDir, setCacheDir } from '../src/index.js';

const ENV_NAMES = ['PAYLOAD_CACHE_DIR', 'XDG_CACHE_HOME'] as const;
const savedEnv = new Map<string, string | undefined>();
let base: string;

/** A fresh directory path under this test's temp dir (not created). */
const dirNamed = (name: string) => path.join(base, name);

function setEnv(name: (typeof ENV_NAMES)[number], value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

/** Fetches `key` and waits for the manager's background sweep, so cleanup never races it. */
async function fetchInto(cache: CacheManager, key: string, body: string): Promise<string> {
  const result = await cache.getOrFetch(key, () => body);
  await cache[backgroundSweep];
  return result;
}

beforeEach(async () => {
  for (const name of ENV_NAMES) savedEnv.set(name, process.env[name]);
  resetCacheDir();
  base = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'payload-cache-root-')));
  // Keep the platform default inside the temp dir, so no test can write to the real user cache.
  setEnv('XDG_CACHE_HOME', dirNamed('xdg'));
  setEnv('PAYLOAD_CACHE_DIR', undefined);
});

afterEach(async () => {
  resetCacheDir();
  for (const name of ENV_NAMES) setEnv(name, savedEnv.get(name));
  await fsp.rm(base, { recursive: true, force: true, maxRetries: 3 });
});

describe('getCacheDir precedence', () => {
  it.runIf(process.platform === 'linux')('defaults to $XDG_CACHE_HOME/payload-cache on Linux', () => {
    expect(getCacheDir()).toBe(path.join(dirNamed('xdg'), 'payload-cache'));
  });

  it.runIf(process.platform === 'linux')('defaults to ~/.cache/payload-cache without XDG_CACHE_HOME', () => {
    setEnv('XDG_CACHE_HOME', undefined);
    expect(getCacheDir()).toBe(path.join(os.homedir(), '.cache', 'payload-cache'));
  });

  it('uses PAYLOAD_CACHE_DIR over the platform default', () => {
    setEnv('PAYLOAD_CACHE_DIR', dirNamed('env'));
    expect(getCacheDir()).toBe(dirNamed('env'));
  });

  it('resolves a relative PAYLOAD_CACHE_DIR to an absolute path', () => {
    setEnv('PAYLOAD_CACHE_DIR', 'relative-cache');
    expect(getCacheDir()).toBe(path.resolve('relative-cache'));
    expect(path.isAbsolute(getCacheDir())).toBe(true);
  });

  it.runIf(process.platform === 'linux')('treats an empty PAYLOAD_CACHE_DIR as unset', () => {
    setEnv('PAYLOAD_CACHE_DIR', '');
    expect(getCacheDir()).toBe(path.join(dirNamed('xdg'), 'payload-cache'));
  });

  it('uses setCacheDir over PAYLOAD_CACHE_DIR, and resetCacheDir falls back to the env again', () => {
    setEnv('PAYLOAD_CACHE_DIR', dirNamed('env'));
    setCacheDir(dirNamed('explicit'));
    expect(getCacheDir()).toBe(dirNamed('explicit'));
    resetCacheDir();
    expect(getCacheDir()).toBe(dirNamed('env'));
  });

  it('resolves a relative setCacheDir path to an absolute path', () => {
    setCacheDir('relative-explicit');
    expect(getCacheDir()).toBe(path.resolve('relative-explicit'));
  });

  it.each(['', 'a\u0000b'])('setCacheDir(%j) throws InvalidOptionsError and keeps the old root', (dir) => {
    setCacheDir(dirNamed('explicit'));
    expect(() => setCacheDir(dir)).toThrow(InvalidOptionsError);
    expect(getCacheDir()).toBe(dirNamed('explicit'));
  });
});

describe('a manager without root follows the global root at each operation', () => {
  it('moves with setCacheDir() and PAYLOAD_CACHE_DIR changes made after it was created', async () => {
    setEnv('PAYLOAD_CACHE_DIR', dirNamed('env-a'));
    const cache = new CacheManager({ sublayer: 'imf', ttl: 60_000 });

    const first = await fetchInto(cache, 'weo.zip', 'from env-a');
    expect(first).toBe(path.join(dirNamed('env-a'), 'imf', 'weo.zip'));
    expect(await fsp.readFile(first, 'utf8')).toBe('from env-a');

    setCacheDir(dirNamed('explicit'));
    const second = await fetchInto(cache, 'weo.zip', 'from explicit');
    expect(second).toBe(path.join(dirNamed('explicit'), 'imf', 'weo.zip'));
    expect(await fsp.readFile(second, 'utf8')).toBe('from explicit');

    resetCacheDir();
    setEnv('PAYLOAD_CACHE_DIR', dirNamed('env-b'));
    const third = await fetchInto(cache, 'weo.zip', 'from env-b');
    expect(third).toBe(path.join(dirNamed('env-b'), 'imf', 'weo.zip'));
    expect(await fsp.readFile(third, 'utf8')).toBe('from env-b');

    // Back to env-a: the entry written there is still a hit.
    setEnv('PAYLOAD_CACHE_DIR', dirNamed('env-a'));
    expect(await cache.get('weo.zip')).toBe(first);
    await cache[backgroundSweep];
  });

  it.runIf(process.platform === 'linux')('falls back to the platform default', async () => {
    const cache = new CacheManager({ sublayer: 'imf', ttl: 60_000 });
    const result = await fetchInto(cache, 'weo.zip', 'default');
    expect(result).toBe(path.join(dirNamed('xdg'), 'payload-cache', 'imf', 'weo.zip'));
    expect(await fsp.readFile(result, 'utf8')).toBe('default');
  });
});

describe('a manager with root ignores the global root', () => {
  it('stays in its root whatever setCacheDir() and PAYLOAD_CACHE_DIR say', async () => {
    const ownRoot = dirNamed('own');
    const cache = new CacheManager({ sublayer: 'imf', ttl: 60_000, root: ownRoot });
    const fetchFn = vi.fn(() => 'own bytes');

    setEnv('PAYLOAD_CACHE_DIR', dirNamed('env'));
    const first = await cache.getOrFetch('weo.zip', fetchFn);
    await cache[backgroundSweep];
    expect(first).toBe(path.join(ownRoot, 'imf', 'weo.zip'));

    setCacheDir(dirNamed('explicit'));
    const second = await cache.getOrFetch('weo.zip', fetchFn);
    expect(second).toBe(first);
    expect(fetchFn).toHaveBeenCalledTimes(1);
    expect(await fsp.readFile(second, 'utf8')).toBe('own bytes');

    const created = await fsp.readdir(base);
    expect(created).toEqual(['own']);
  });
});
