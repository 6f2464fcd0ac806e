import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { isCacheRoot } from '../entry-store.js';
import { CacheManager, InvalidKeyError, NotCacheRootError } from '../index.js';
import { readOnlyRootsFromEnv, resolveReadOnlyRoots } from '../options.js';
import type { Io } from './command.js';
import { formatError } from './errors.js';

export interface SublayerSettings {
  readonly root: string;
  readonly ttlMs: number;
  readonly keepN?: number;
  readonly maxBytes?: number;
  readonly shared?: 'group' | undefined;
  readonly offline?: boolean | undefined;
}

/**
 * A manager for one sublayer; throws InvalidKeyError for a name the library refuses. Without a ttl nothing
 * counts as expired, not even an entry whose `created_at` lies ahead of this machine's clock.
 */
export function openSublayer(sublayer: string, settings: SublayerSettings): CacheManager {
  return new CacheManager({
    sublayer,
    root: settings.root,
    ttl: settings.ttlMs,
    keepN: settings.keepN ?? Number.POSITIVE_INFINITY,
    maxBytes: settings.maxBytes ?? Number.POSITIVE_INFINITY,
    shared: settings.shared,
    offline: settings.offline,
    ...(Number.isFinite(settings.ttlMs) ? {} : { maxClockSkewMs: Number.POSITIVE_INFINITY }),
  });
}

/**
 * The sublayers a command works on: the one named by `--sublayer` (checked against the key rules, and which
 * must exist: a typo is an error, exit 1), or every real directory under the root whose name is a valid
 * sublayer, sorted.
 */
export async function targetSublayers(root: string, only: string | undefined): Promise<string[]> {
  if (only !== undefined) {
    openSublayer(only, { root, ttlMs: Number.POSITIVE_INFINITY });
    const stats = await fsp.lstat(path.join(root, only)).catch(() => undefined);
    if (!stats?.isDirectory()) throw new Error(`no sublayer "${only}" under ${root}`);
    return [only];
  }
  return sublayersIn(root);
}

async function sublayersIn(root: string): Promise<string[]> {
  const dirents = await fsp.readdir(root, { withFileTypes: true });
  // Symlinks are left out on purpose: the library refuses to work through a symlinked sublayer.
  return dirents
    .filter((dirent) => dirent.isDirectory() && isSublayerName(dirent.name))
    .map((dirent) => dirent.name)
    .sort();
}

/** The read-only roots `PAYLOAD_CACHE_READONLY_ROOTS` names, absolute, without `root` itself. */
export function readOnlyRootsBeside(root: string): string[] {
  return resolveReadOnlyRoots(readOnlyRootsFromEnv(), root);
}

/**
 * {@link targetSublayers} over the root and its read-only roots: a sublayer found in any of them (a read-only
 * root that is missing or unreadable adds none).
 */
export async function targetSublayersInLayers(
  root: string,
  readOnlyRoots: readonly string[],
  only: string | undefined,
): Promise<string[]> {
  const found = await Promise.all(
    readOnlyRoots.map((layer) =>
      (only === undefined ? sublayersIn(layer) : targetSublayers(layer, only)).catch(() => []),
    ),
  );
  const own = await targetSublayers(root, only).catch((error: unknown) => {
    if (only !== undefined && found.some((names) => names.length > 0)) return [];
    throw error;
  });
  return [...new Set([...own, ...found.flat()])].sort();
}

function isSublayerName(name: string): boolean {
  try {
    openSublayer(name, { root: '.', ttlMs: Number.POSITIVE_INFINITY });
    return true;
  } catch (error) {
    if (error instanceof InvalidKeyError) return false;
    throw error;
  }
}

/** Refuses (exit 2) to delete anything under a directory that payload-cache did not mark as its root. */
export async function assertCacheRoot(root: string): Promise<void> {
  if (!(await isCacheRoot(root))) throw new NotCacheRootError(root);
}

/**
 * Runs `work` on each sublayer in turn. A sublayer that fails (unreadable, say) is reported on stderr as one
 * line and skipped, so that one bad directory does not hide the others; `failed` counts them (exit 1).
 */
export async function eachSublayer<T>(
  names: readonly string[],
  io: Io,
  command: string,
  work: (name: string) => Promise<T>,
): Promise<{ done: { name: string; value: T }[]; failed: number }> {
  const done: { name: string; value: T }[] = [];
  let failed = 0;
  for (const name of names) {
    try {
      done.push({ name, value: await work(name) });
    } catch (error) {
      failed += 1;
      io.err(`payload-cache ${command}: sublayer "${name}" skipped: ${formatError(error)}`);
    }
  }
  return { done, failed };
}

/** Bytes on disk: the payloads, and the content of their extractions. */
export function totalBytes(
  entries: readonly { sizeBytes: number; extractions?: readonly { sizeBytes: number }[] | undefined }[],
): number {
  const extracted = (entry: (typeof entries)[number]) =>
    (entry.extractions ?? []).reduce((sum, extraction) => sum + extraction.sizeBytes, 0);
  return entries.reduce((sum, entry) => sum + entry.sizeBytes + extracted(entry), 0);
}
