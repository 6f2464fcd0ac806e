import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CacheManager, type EntryInfo, InvalidKeyError } from '../index.js';

/**
 * Staleness threshold for managers that only look. Every manager sweeps old orphans (tmp files and
 * manifest-less payloads older than `staleTmpMs`) in the background on its first `list()`; a threshold no
 * file can reach keeps `ls`, `info` and `prune --dry-run` from deleting them. The sweep still drops
 * manifests without a payload and locks of dead processes, which are misses either way.
 */
const LOOK_ONLY_STALE_TMP_MS = Number.MAX_SAFE_INTEGER;

/**
 * Entries used this recently are never removed by `prune()`: the library's default `touchIntervalMs`
 * (60 s) plus `evictionGraceMs` (10 s). The CLI's managers keep those defaults, so its forecast uses them too.
 */
export const IN_USE_WINDOW_MS = 70_000;

export interface SublayerSettings {
  readonly root: string;
  readonly ttlMs: number;
  readonly keepN?: number;
  readonly maxBytes?: number;
  /** A manager for listing only: its background sweep removes no tmp file or payload. */
  readonly lookOnly?: boolean;
}

/** A manager for one sublayer; throws InvalidKeyError for a name the library refuses. */
export function openSublayer(sublayer: string, settings: SublayerSettings): CacheManager {
  return new CacheManager({
    sublayer,
    root: settings.root,
    ttl: settings.ttlMs,
    keepN: settings.keepN ?? Number.POSITIVE_INFINITY,
    maxBytes: settings.maxBytes ?? Number.POSITIVE_INFINITY,
    ...(settings.lookOnly ? { staleTmpMs: LOOK_ONLY_STALE_TMP_MS } : {}),
  });
}

/** Committed entries of a sublayer, most recently used first, without deleting anything on the way. */
export async function listEntries(sublayer: string, root: string, ttlMs: number): Promise<EntryInfo[]> {
  return openSublayer(sublayer, { root, ttlMs, lookOnly: true }).list();
}

/**
 * The sublayers a command works on: the one named by `--sublayer` (checked against the key rules), or
 * every real directory under the root whose name is a valid sublayer, sorted. A missing root has none.
 */
export async function targetSublayers(root: string, only: string | undefined): Promise<string[]> {
  if (only !== undefined) {
    openSublayer(only, { root, ttlMs: Number.POSITIVE_INFINITY });
    return [only];
  }
  let dirents: import('node:fs').Dirent[];
  try {
    dirents = await fsp.readdir(root, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  // Symlinks are left out on purpose: the library refuses to work through a symlinked sublayer.
  return dirents
    .filter((dirent) => dirent.isDirectory() && isSublayerName(dirent.name))
    .map((dirent) => dirent.name)
    .sort();
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

/** Whether `<root>/<sublayer>` exists as a directory. */
export async function sublayerExists(root: string, sublayer: string): Promise<boolean> {
  const stats = await fsp.lstat(path.join(root, sublayer)).catch(() => undefined);
  return stats?.isDirectory() === true;
}

export function totalBytes(entries: readonly { sizeBytes: number }[]): number {
  return entries.reduce((sum, entry) => sum + entry.sizeBytes, 0);
}
