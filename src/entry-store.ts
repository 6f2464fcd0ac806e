import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { errorCode, fsyncDir, type PayloadWriter, removeFile, writeFileAtomic } from './atomic-writer.js';
import { crashPoint } from './crash-points.js';
import { CACHEDIR_TAG, type EntryPaths } from './entry-paths.js';
import {
  describesKey,
  type Freshness,
  isExpired,
  type Manifest,
  readManifest,
  SCHEMA_VERSION,
  writeManifest,
} from './manifest.js';

/** One entry as found on disk: committed and fresh, committed but expired, or absent (a miss). */
export type EntryState =
  | {
      readonly state: 'fresh' | 'expired';
      readonly manifest: Manifest;
      readonly sizeBytes: number;
      readonly lastUsedAtMs: number;
    }
  | { readonly state: 'absent' };

const ABSENT: EntryState = { state: 'absent' };

/**
 * The hit check: `lstat` of the payload and one small read of the manifest, in parallel, no lock. An entry
 * exists only when the payload is a regular file (never a symlink) and a valid manifest for this key
 * gives its exact size.
 */
export async function lookupEntry(paths: EntryPaths, freshness: Freshness): Promise<EntryState> {
  const [stats, manifest] = await Promise.all([
    fsp.lstat(paths.payload).catch(() => undefined),
    readManifest(paths.manifest),
  ]);
  if (!stats?.isFile() || !manifest) return ABSENT;
  if (manifest.size_bytes !== stats.size || !describesKey(manifest, paths.key)) return ABSENT;
  const state = isExpired(manifest, freshness) ? 'expired' : 'fresh';
  return { state, manifest, sizeBytes: stats.size, lastUsedAtMs: stats.mtimeMs };
}

/**
 * Records a use: the payload's mtime is its last-used time. Bumped at most once per `touchIntervalMs`
 * (a write per hit would cost more than the hit), and best-effort: a read-only cache still serves hits.
 */
export async function touchEntry(
  paths: EntryPaths,
  lastUsedAtMs: number,
  nowMs: number,
  touchIntervalMs: number,
): Promise<void> {
  if (nowMs - lastUsedAtMs < touchIntervalMs) return;
  const when = new Date(nowMs);
  await fsp.lutimes(paths.payload, when, when).catch(() => {});
}

export interface PayloadFacts {
  readonly createdAtMs: number;
  readonly etag?: string | undefined;
  readonly lastModified?: string | undefined;
}

/**
 * Commits a sealed payload (DESIGN.md principle 2): remove the old manifest, so that no manifest ever
 * describes bytes it was not written for; rename the payload into place; write the new manifest
 * atomically; fsync the directory. A crash at any point leaves the old entry, the new one, or an orphan
 * payload without manifest, which is a miss and gets swept.
 */
export async function commitEntry(
  paths: EntryPaths,
  writer: PayloadWriter,
  facts: PayloadFacts,
): Promise<Manifest> {
  const manifest: Manifest = {
    schema_version: SCHEMA_VERSION,
    key: paths.key,
    created_at: new Date(facts.createdAtMs).toISOString(),
    size_bytes: writer.sizeBytes,
    sha256: writer.sha256,
    etag: facts.etag,
    last_modified: facts.lastModified,
  };
  await removeFile(paths.manifest);
  await crashPoint('manifest-removed');
  await writer.renameTo(paths.payload);
  await crashPoint('renamed');
  await writeManifest(paths.manifest, manifest);
  await crashPoint('manifest-written');
  // Only a lock that failed open lets another writer rename its payload over ours in between; our manifest
  // would then describe its bytes. Withdrawing it leaves a miss, and that writer's own manifest (written
  // after its rename) restores the entry.
  if (!(await writer.isPublishedAt(paths.payload))) await removeFile(paths.manifest);
  await writer.close();
  await fsyncDir(paths.dir);
  return manifest;
}

/** Renews an entry the origin confirmed unchanged: a new `created_at`, every other field kept. */
export async function renewEntry(paths: EntryPaths, previous: Manifest, nowMs: number): Promise<void> {
  await writeManifest(paths.manifest, { ...previous, created_at: new Date(nowMs).toISOString() });
  await fsyncDir(paths.dir);
  await touchEntry(paths, 0, nowMs, 0);
}

const CACHEDIR_TAG_TEXT =
  'Signature: 8a477f597d28d172789f06886806bc55\n' +
  '# This file is a cache directory tag created by payload-cache.\n' +
  '# For information about cache directory tags, see https://bford.info/cachedir/\n';

/**
 * Writes `<root>/CACHEDIR.TAG` so backup tools skip the cache. Best-effort by design: two hosts creating it
 * at once over NFS can make the loser's exclusive create fail with EPERM, so no error here may fail an
 * operation.
 */
export async function writeCacheDirTag(root: string): Promise<void> {
  const tagPath = path.join(root, CACHEDIR_TAG);
  try {
    await fsp.lstat(tagPath);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') await writeFileAtomic(tagPath, CACHEDIR_TAG_TEXT).catch(() => {});
  }
}
