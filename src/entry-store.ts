import { constants, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import { type PayloadWriter, writeFileAtomic, writeTmpFile } from './atomic-writer.js';
import { crashPoint } from './crash-points.js';
import { CACHEDIR_TAG, type EntryPaths, tmpPathFor } from './entry-paths.js';
import { ForeignFileError } from './errors.js';
import {
  type CreateModes,
  describeKind,
  errorCode,
  fileHasSha256,
  fsyncDir,
  lstatOrUndefined,
  removeFile,
  renameWithRetry,
} from './file-system.js';
import {
  describesKey,
  type Freshness,
  isExpired,
  type Manifest,
  manifestText,
  parseManifest,
  readManifest,
  readManifestText,
  SCHEMA_VERSION,
} from './manifest.js';
import { whileLocked } from './soft-lock.js';

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
  return { state, manifest, sizeBytes: stats.size, lastUsedAtMs: lastUsedAtMs(stats) };
}

/**
 * A payload's last use, to the nearest millisecond: its mtime, whose sub-millisecond part is a sealing
 * nonce (PayloadWriter.seal) or float-conversion noise, and says nothing about use.
 */
export function lastUsedAtMs(stats: Stats): number {
  return Math.round(stats.mtimeMs);
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
  await touchFile(paths.payload, lastUsedAtMs, nowMs, touchIntervalMs);
}

/**
 * Sets `filePath`'s mtime (a last-used time) to `nowMs` unless it was set less than `touchIntervalMs` ago:
 * a payload's, or an extraction's marker's. Best-effort, like {@link touchEntry}.
 */
export async function touchFile(
  filePath: string,
  lastUsedAtMs: number,
  nowMs: number,
  touchIntervalMs: number,
): Promise<void> {
  if (nowMs - lastUsedAtMs < touchIntervalMs) return;
  const when = new Date(nowMs);
  await fsp.lutimes(filePath, when, when).catch(async (error: unknown) => {
    // POSIX only: that is where EPERM means "not the owner" (Windows answers it for a file held open).
    if (errorCode(error) === 'EPERM' && process.platform !== 'win32') await touchAsGroupMember(filePath);
  });
}

/**
 * Only a file's owner may set its mtime to a given time; in a group-shared cache another member may still
 * write the file, and a write sets the mtime to now. Rewriting the first byte with itself, through one
 * handle (so that a payload replaced meanwhile is never written), changes no data. Best-effort.
 */
async function touchAsGroupMember(payloadPath: string): Promise<void> {
  const handle = await fsp
    .open(payloadPath, constants.O_RDWR | (constants.O_NOFOLLOW ?? 0))
    .catch(() => undefined);
  if (!handle) return;
  try {
    const firstByte = Buffer.alloc(1);
    const { bytesRead } = await handle.read(firstByte, 0, 1, 0);
    if (bytesRead === 1) await handle.write(firstByte, 0, 1, 0);
  } catch {
  } finally {
    await handle.close().catch(() => {});
  }
}

export interface PayloadFacts {
  readonly createdAtMs: number;
  readonly etag?: string | undefined;
  readonly lastModified?: string | undefined;
}

/** The new manifest, written and flushed under a tmp name beside the entry: not a manifest yet. */
export interface PendingManifest {
  readonly manifest: Manifest;
  readonly tmpPath: string;
}

/**
 * Seals the payload's tmp file and writes the new manifest's tmp file at once: size and sha256 are final
 * once the body has ended, and neither file is visible until its rename, which {@link commitEntry} orders
 * (both flushed first). The manifest's fsync thus costs no time of its own. On any failure the manifest's
 * tmp file is gone again; the payload's is the caller's to discard.
 */
export async function sealEntry(
  paths: EntryPaths,
  writer: PayloadWriter,
  facts: PayloadFacts,
  modes?: CreateModes,
): Promise<PendingManifest> {
  const manifest: Manifest = {
    schema_version: SCHEMA_VERSION,
    key: paths.key,
    created_at: new Date(facts.createdAtMs).toISOString(),
    size_bytes: writer.sizeBytes,
    sha256: writer.sha256,
    etag: facts.etag,
    last_modified: facts.lastModified,
  };
  const [sealed, written] = await Promise.allSettled([
    writer.seal(facts.createdAtMs),
    writeTmpFile(paths.manifest, manifestText(manifest), modes),
  ]);
  if (sealed.status === 'rejected') {
    if (written.status === 'fulfilled') await removeFile(written.value).catch(() => {});
    throw sealed.reason;
  }
  if (written.status === 'rejected') throw written.reason;
  return { manifest, tmpPath: written.value };
}

/**
 * Commits a payload sealed by {@link sealEntry} (DESIGN.md principle 2). The new manifest is already on
 * disk under a tmp name: it is no manifest yet, but should we crash after the payload's rename it proves
 * that the lone payload is ours, so a sweep may remove it. Then: retire the old manifest (renamed aside,
 * so that no manifest ever describes bytes it was not written for, and so that it still proves the old
 * payload is ours); rename the payload into place; rename the new manifest into place; fsync the
 * directory. A crash at any point leaves the old entry, the new one, or a lone payload beside a record
 * that proves it, which is a miss and gets swept. On a failure before the payload's rename the pending
 * manifest is removed.
 */
export async function commitEntry(
  paths: EntryPaths,
  writer: PayloadWriter,
  { manifest, tmpPath: pendingManifest }: PendingManifest,
): Promise<Manifest> {
  let retired: string | undefined;
  let previous: Stats | undefined;
  try {
    previous = await lstatOrUndefined(paths.payload);
    // A directory there was not made by the cache, and the cache never deletes what is inside one. Refused
    // before anything moves, so the old manifest (if any) stays as it was.
    if (previous?.isDirectory()) throw new ForeignFileError(paths.payload, describeKind(previous));
    retired = await retireManifest(paths.manifest);
    await crashPoint('manifest-removed');
    await writer.renameTo(paths.payload);
  } catch (error) {
    await removeFile(pendingManifest).catch(() => {});
    // Our rename failed: the old manifest goes back and the old entry stands, if its payload is still there.
    if (retired) {
      if (await previousPayloadStands(paths.payload, previous, retired)) {
        await restoreManifest(retired, paths.manifest);
      } else await removeFile(retired).catch(() => {});
    }
    throw error;
  }
  // From here on a failure leaves the pending manifest in place: it is what proves the payload is ours.
  await crashPoint('renamed');
  await renameWithRetry(pendingManifest, paths.manifest);
  await crashPoint('manifest-written');
  // Only a lock that failed open lets another writer rename its payload over ours in between; our manifest
  // would then describe its bytes, so we withdraw it and leave a miss until that writer's own manifest
  // (renamed in after its payload) restores the entry.
  if (!(await writer.isPublishedAt(paths.payload))) await withdrawOwnManifest(paths.manifest, manifest);
  await writer.close();
  await fsyncDir(paths.dir);
  if (retired) await removeFile(retired).catch(() => {});
  return manifest;
}

/**
 * Withdraws the manifest at the name only if it is ours: another writer's there already describes its own
 * payload, and stays. Should another's land between that look and the rename aside, it is withdrawn too and
 * never put back: by then its payload may have been replaced as well, and a manifest put back over bytes it
 * was not written for is a lie that outlives every writer, where a miss costs one download.
 */
async function withdrawOwnManifest(manifestPath: string, manifest: Manifest): Promise<void> {
  if ((await readManifestText(manifestPath)) !== manifestText(manifest)) return;
  const withdrawn = await retireManifest(manifestPath);
  if (withdrawn) await removeFile(withdrawn).catch(() => {});
}

/**
 * Renames the manifest aside to a tmp name (a tombstone) and returns that name; `undefined` when there was
 * none. The key is a miss from then on, and the tombstone still proves that the payload beside it was
 * written by the cache. A symlink or FIFO planted at the name is unlinked (that loses no data); a
 * directory is not ours to remove: ForeignFileError.
 */
export async function retireManifest(manifestPath: string): Promise<string | undefined> {
  const stats = await lstatOrUndefined(manifestPath);
  if (!stats) return undefined;
  if (stats.isDirectory()) throw new ForeignFileError(manifestPath, describeKind(stats));
  try {
    if (!stats.isFile()) {
      await fsp.unlink(manifestPath);
      return undefined;
    }
    const tombstone = tmpPathFor(manifestPath);
    await renameWithRetry(manifestPath, tombstone);
    return tombstone;
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  }
}

/**
 * Whether the payload a retired manifest describes is still at its name, as it was before the commit began.
 * Only a lock that failed open lets another writer's rename land there meanwhile; that writer may die before
 * its manifest, and the old one put back would then describe its bytes. A use recorded meanwhile moves the
 * mtime (it is the last-used time), so a changed mtime is settled by the bytes.
 */
async function previousPayloadStands(
  payload: string,
  previous: Stats | undefined,
  tombstone: string,
): Promise<boolean> {
  const current = await lstatOrUndefined(payload).catch(() => undefined);
  if (!previous?.isFile() || !current?.isFile() || current.size !== previous.size) return false;
  if (current.mtimeMs === previous.mtimeMs) return true;
  return fileHasSha256(payload, (await readManifest(tombstone).catch(() => undefined))?.sha256);
}

/**
 * Puts a retired manifest back, but never over a manifest another writer placed meanwhile: `link` fails
 * when the name is taken. Where links are not supported (SMB), a rename while the name is still free.
 * When another writer's manifest is there, that writer renamed its payload in first, so the tombstone
 * describes bytes that are gone and goes too. Should everything fail, the key stays a miss and the
 * tombstone is swept.
 */
async function restoreManifest(tombstone: string, manifestPath: string): Promise<void> {
  try {
    await fsp.link(tombstone, manifestPath);
  } catch (error) {
    const taken = errorCode(error) === 'EEXIST' || (await lstatOrUndefined(manifestPath).catch(() => true));
    if (!taken) return renameWithRetry(tombstone, manifestPath).catch(() => {});
  }
  await removeFile(tombstone).catch(() => {});
}

/**
 * Removes one entry: manifest first (retired), then payload, then the tombstone. A crash in between leaves a
 * lone payload beside its tombstone, a miss that the sweep can prove is ours. `true` if anything was there.
 */
export async function removeEntry(paths: EntryPaths): Promise<boolean> {
  const tombstone = await retireManifest(paths.manifest);
  const hadPayload = await removeFile(paths.payload);
  if (tombstone) await removeFile(tombstone);
  return tombstone !== undefined || hadPayload;
}

/**
 * Renews an entry the origin confirmed unchanged: a new `created_at`, every other field kept. Only if the
 * entry on disk is still the one the fetcher was shown (the same manifest, a payload of its size): after a
 * delete, or a writer whose lock failed open, "not modified" says nothing about the bytes there now, and
 * renewing would put the old manifest over other bytes or over nothing. `false` when it was not renewed.
 */
export async function renewEntry(
  paths: EntryPaths,
  previous: Manifest,
  nowMs: number,
  modes?: CreateModes,
): Promise<boolean> {
  const [stats, text] = await Promise.all([
    lstatOrUndefined(paths.payload),
    readManifestText(paths.manifest),
  ]);
  const current = text === undefined ? undefined : parseManifest(text);
  if (!stats?.isFile() || stats.size !== previous.size_bytes) return false;
  if (current === undefined || JSON.stringify(current) !== JSON.stringify(previous)) return false;
  await writeFileAtomic(
    paths.manifest,
    manifestText({ ...previous, created_at: new Date(nowMs).toISOString() }),
    modes,
  );
  await fsyncDir(paths.dir);
  await touchEntry(paths, 0, nowMs, 0);
  return true;
}

/**
 * Adds `sha256` to an entry's manifest that records none (one written by imf_reader), every other field
 * kept: an extraction is named after its archive's sha256, and without it in the manifest every
 * `getOrExtract` would hash the archive again. Only if the manifest is still one without sha256 for a
 * payload of its size; the caller holds the key's lock and has just hashed that payload. `false` when it
 * was not recorded (the entry changed meanwhile).
 */
export async function recordSha256(paths: EntryPaths, sha256: string, modes?: CreateModes): Promise<boolean> {
  const [stats, text] = await Promise.all([
    lstatOrUndefined(paths.payload),
    readManifestText(paths.manifest),
  ]);
  const current = text === undefined ? undefined : parseManifest(text);
  if (!current || current.sha256 !== undefined || !describesKey(current, paths.key)) return false;
  if (!stats?.isFile() || stats.size !== current.size_bytes) return false;
  await writeFileAtomic(paths.manifest, manifestText({ ...current, sha256 }), modes);
  await fsyncDir(paths.dir);
  return true;
}

const CACHEDIR_TAG_SIGNATURE = 'Signature: 8a477f597d28d172789f06886806bc55';
const CACHEDIR_TAG_CREATOR = 'created by payload-cache.';
const CACHEDIR_TAG_TEXT =
  `${CACHEDIR_TAG_SIGNATURE}\n` +
  `# This file is a cache directory tag ${CACHEDIR_TAG_CREATOR}\n` +
  '# For information about cache directory tags, see https://bford.info/cachedir/\n';

/**
 * Whether `root` carries the CACHEDIR.TAG that payload-cache writes: the proof that the directory is a cache
 * root, which every command that deletes in bulk requires.
 */
export async function isCacheRoot(root: string): Promise<boolean> {
  const tagPath = path.join(root, CACHEDIR_TAG);
  const stats = await lstatOrUndefined(tagPath).catch(() => undefined);
  if (!stats?.isFile() || stats.size > 4096) return false;
  const text = await fsp.readFile(tagPath, 'utf8').catch(() => '');
  return text.startsWith(CACHEDIR_TAG_SIGNATURE) && text.includes(CACHEDIR_TAG_CREATOR);
}

/**
 * Writes `<root>/CACHEDIR.TAG` so backup tools skip the cache. Best-effort by design: two hosts creating it
 * at once over NFS can make the loser's exclusive create fail with EPERM, so no error here may fail an
 * operation.
 */
export async function writeCacheDirTag(root: string, modes?: CreateModes): Promise<void> {
  const tagPath = path.join(root, CACHEDIR_TAG);
  try {
    await fsp.lstat(tagPath);
  } catch (error) {
    if (errorCode(error) === 'ENOENT')
      await writeFileAtomic(tagPath, CACHEDIR_TAG_TEXT, modes).catch(() => {});
  }
}

/** What an entry looked like when a janitor decided to remove it. */
export interface SeenEntry {
  /** The manifest's exact text; without it, any valid manifest for the key and payload size will do. */
  readonly manifestText?: string;
  readonly sizeBytes: number;
  /** The payload's mtime (last use) then; required unchanged, and outside the window, when given. */
  readonly lastUsedAtMs?: number;
  /** With `lastUsedAtMs`: entries used within this window of `nowMs` stay. */
  readonly inUseWindowMs?: number;
  readonly nowMs?: number;
}

export type RemovalOutcome = 'removed' | 'locked' | 'changed' | 'recently-used';

/**
 * Removes an entry only if it is still the one a janitor saw, checked under the entry's lock just before
 * acting: the same manifest (or, without one to compare, a valid manifest for this key and size), the same
 * payload size and, for removals that depend on disuse, no use since. A janitor thus never removes an entry
 * republished, renewed or used after it looked.
 */
export async function removeEntryIfUnchanged(
  paths: EntryPaths,
  seen: SeenEntry,
  lockStaleMs: number,
  modes?: CreateModes,
): Promise<RemovalOutcome> {
  const outcome = await whileLocked(
    paths.lock,
    lockStaleMs,
    async (): Promise<RemovalOutcome> => {
      const [stats, text] = await Promise.all([
        lstatOrUndefined(paths.payload),
        readManifestText(paths.manifest),
      ]);
      if (!stats?.isFile() || stats.size !== seen.sizeBytes || text === undefined) return 'changed';
      if (
        seen.manifestText !== undefined
          ? text !== seen.manifestText
          : !describesEntry(text, paths.key, stats.size)
      )
        return 'changed';
      if (seen.lastUsedAtMs !== undefined) {
        const usedAtMs = lastUsedAtMs(stats);
        if (usedAtMs > (seen.nowMs ?? Date.now()) - (seen.inUseWindowMs ?? 0)) return 'recently-used';
        if (usedAtMs !== seen.lastUsedAtMs) return 'changed';
      }
      await removeEntry(paths);
      return 'removed';
    },
    modes,
    'remove-entry',
  );
  return outcome ?? 'locked';
}

/** Whether manifest text is a valid manifest for `key` that gives exactly `sizeBytes`. */
function describesEntry(text: string, key: string, sizeBytes: number): boolean {
  const manifest = parseManifest(text);
  return manifest !== undefined && describesKey(manifest, key) && manifest.size_bytes === sizeBytes;
}
