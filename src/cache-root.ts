import path from 'node:path';
import envPaths from 'env-paths';
import { InvalidOptionsError } from './errors.js';

/** Environment variable naming the global cache root; an empty value counts as unset. */
export const CACHE_DIR_ENV = 'PAYLOAD_CACHE_DIR';

let explicitRoot: string | undefined;

/**
 * Sets the global cache root used by every manager created without a `root` option, including managers
 * that already exist: the root is resolved at each operation.
 */
export function setCacheDir(dir: string): void {
  if (typeof dir !== 'string' || dir.length === 0 || dir.includes('\u0000')) {
    throw new InvalidOptionsError('setCacheDir() needs a non-empty directory path');
  }
  explicitRoot = path.resolve(dir);
}

/** Forgets {@link setCacheDir}: the root falls back to `PAYLOAD_CACHE_DIR`, then the platform default. */
export function resetCacheDir(): void {
  explicitRoot = undefined;
}

/**
 * The global cache root as an absolute path: `setCacheDir()` > env `PAYLOAD_CACHE_DIR` > the platform's
 * user cache directory (`~/.cache/payload-cache` on Linux, `~/Library/Caches/payload-cache` on macOS,
 * `%LOCALAPPDATA%\payload-cache\Cache` on Windows).
 */
export function getCacheDir(): string {
  if (explicitRoot !== undefined) return explicitRoot;
  const fromEnv = process.env[CACHE_DIR_ENV];
  if (fromEnv) return path.resolve(fromEnv);
  return envPaths('payload-cache', { suffix: '' }).cache;
}

/** A manager's root: its own `root` option if it has one, else the global root of this moment. */
export function resolveRoot(ownRoot: string | undefined): string {
  return ownRoot ?? getCacheDir();
}
