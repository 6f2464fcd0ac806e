import { constants, createReadStream, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { z } from 'zod';
import {
  EXTRACTED_INFIX,
  EXTRACTION_CONTENT_NAME,
  EXTRACTION_FILE_LIST_NAME,
  EXTRACTION_MARKER_NAME,
  EXTRACTION_SHA_HEX_DIGITS,
  type ExtractionPaths,
  isShortenedTmpTarget,
  tmpNameTarget,
  tmpPathFor,
} from './entry-paths.js';
import { touchFile } from './entry-store.js';
import { type CreateModes, errorCode, sha256OfFile } from './file-system.js';
import { whileLocked } from './soft-lock.js';
import type { ScannedExtraction } from './sublayer-scan.js';

/**
 * What an extraction is on disk, for the hit path and the janitors (no archive library is loaded here): its
 * marker, the hit check, the proof that a directory is the cache's, and the removal of a tree the cache
 * made. An extraction is `<key>.extracted.<sha16>/` beside its archive, holding `extraction.json` (the
 * marker), `files.jsonl` (the file list) and `content/` (the archive's files).
 */

export const EXTRACTION_MARKER_KIND = 'payload-cache-extraction';
/** A marker is a few hundred bytes; anything larger is not one of ours. */
const MAX_MARKER_BYTES = 64 * 1024;
/** A marker is read with one read of this size; a larger one (never written by the cache) reads on. */
const FIRST_READ_BYTES = 4096;
// Never through a symlink, and never blocking on a FIFO planted in its place.
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);

const markerSchema = z.looseObject({
  schema_version: z.literal(1),
  kind: z.literal(EXTRACTION_MARKER_KIND),
  key: z.string(),
  archive_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  complete: z.boolean(),
  created_at: z.string(),
  format: z.enum(['zip', 'tar', 'tar.gz', 'gzip']).optional(),
  file_count: z.number().int().nonnegative().optional(),
  total_bytes: z.number().int().nonnegative().optional(),
});

/**
 * The marker of an extraction. Written with `complete: false` as soon as the tmp directory exists, which
 * proves to a sweep that the directory is the cache's; rewritten with `complete: true` and the totals just
 * before the directory is renamed into place.
 */
export type ExtractionMarker = z.infer<typeof markerSchema>;

/** A published extraction as found on disk. */
export interface FoundExtraction {
  readonly marker: ExtractionMarker;
  /** The marker's size in bytes: with the name, what {@link recheckExtraction} compares. */
  readonly markerBytes: number;
  /** The marker's mtime: the extraction's last use. */
  readonly lastUsedAtMs: number;
}

/**
 * The hit check for an extraction: one small read of its marker, through a handle (no symlink, no FIFO).
 * Found only when the marker is complete and names this key and the archive's full sha256: a 64-bit
 * prefix collision in the directory name is a miss, never the wrong tree.
 */
export async function lookupExtraction(paths: ExtractionPaths): Promise<FoundExtraction | undefined> {
  const read = await readMarker(paths.marker);
  if (!read) return undefined;
  const { marker, stats } = read;
  if (!marker.complete || marker.key !== paths.key || marker.archive_sha256 !== paths.archiveSha256)
    return undefined;
  return { marker, markerBytes: stats.size, lastUsedAtMs: Math.round(stats.mtimeMs) };
}

/**
 * A later hit on an extraction this process found before (`seen`, by {@link lookupExtraction}): one
 * `lstat` of its marker instead of a read. A published marker never changes (it is written complete before
 * its directory is renamed into place, then only its mtime moves), and anything at that name is either
 * the extraction itself or the same sha256 extracted again, so a regular file of the same size there is the
 * marker seen; anything else is a miss, and the caller reads the marker again.
 */
export async function recheckExtraction(
  paths: ExtractionPaths,
  seen: FoundExtraction,
): Promise<FoundExtraction | undefined> {
  const stats = await fsp.lstat(paths.marker).catch(() => undefined);
  if (!stats?.isFile() || stats.size !== seen.markerBytes) return undefined;
  return { ...seen, lastUsedAtMs: Math.round(stats.mtimeMs) };
}

async function readMarker(
  markerPath: string,
): Promise<{ marker: ExtractionMarker; stats: Stats; text: string } | undefined> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(markerPath, READ_FLAGS);
    // The hit path: its mtime and its bytes at once, as a manifest is read (one round trip after open).
    const buffer = Buffer.allocUnsafe(FIRST_READ_BYTES);
    const [stats, { bytesRead }] = await Promise.all([
      handle.stat(),
      handle.read(buffer, 0, buffer.length, 0),
    ]);
    if (!stats.isFile() || stats.size > MAX_MARKER_BYTES) return undefined;
    const text =
      bytesRead < buffer.length && bytesRead === stats.size
        ? buffer.toString('utf8', 0, bytesRead)
        : await handle.readFile('utf8');
    const parsed = markerSchema.safeParse(JSON.parse(text));
    return parsed.success ? { marker: parsed.data, stats, text } : undefined;
  } catch {
    return undefined;
  } finally {
    await handle?.close().catch(() => {});
  }
}

/** Records a use of the extraction (its marker's mtime), at most once per `touchIntervalMs`; best-effort. */
export async function touchExtraction(
  paths: ExtractionPaths,
  lastUsedAtMs: number,
  nowMs: number,
  touchIntervalMs: number,
): Promise<void> {
  await touchFile(paths.marker, lastUsedAtMs, nowMs, touchIntervalMs);
}

/** What proves to a janitor that a directory is an extraction the cache made, as it was when it looked. */
export interface ExtractionProof {
  /** The marker's exact text, to tell later whether it is still the same extraction. */
  readonly markerText: string;
  readonly marker: ExtractionMarker;
  /** The marker's mtime: the extraction's last use. */
  readonly lastUsedAtMs: number;
}

/**
 * Whether `dir` is an extraction the cache made for `key` and an archive whose sha256 starts with
 * `shaPrefix`: a regular marker file of ours inside it that says so (complete or not). `'empty'` for an
 * empty directory (a crash between `mkdir` and the marker; removing it loses nothing), `undefined` for
 * anything else, which is not the cache's to touch.
 */
export async function proveExtraction(
  dir: string,
  key: string,
  shaPrefix: string,
): Promise<ExtractionProof | 'empty' | undefined> {
  const read = await readMarker(path.join(dir, EXTRACTION_MARKER_NAME));
  if (read) {
    const { marker, stats, text } = read;
    if (marker.key !== key || !marker.archive_sha256.startsWith(shaPrefix)) return undefined;
    return { markerText: text, marker, lastUsedAtMs: Math.round(stats.mtimeMs) };
  }
  const names = await fsp.readdir(dir).catch(() => undefined);
  return names?.length === 0 ? 'empty' : undefined;
}

const SHORTENED_TMP_TARGET = /-[0-9a-f]{16}$/;

/**
 * The extraction a tmp directory whose name was shortened (a long key: {@link tmpPathFor} then hashes
 * the name) was made for, read from its marker and tied to the name by its digest; `undefined` when the
 * marker or the name says otherwise. The janitor then proves it by marker as any other.
 */
export async function extractionOfShortenedTmp(
  dir: string,
): Promise<{ key: string; shaPrefix: string } | undefined> {
  // Only a name of the shortened shape is looked into: other tmp-named directories are foreign.
  if (!SHORTENED_TMP_TARGET.test(tmpNameTarget(path.basename(dir)))) return undefined;
  const read = await readMarker(path.join(dir, EXTRACTION_MARKER_NAME));
  if (!read) return undefined;
  const shaPrefix = read.marker.archive_sha256.slice(0, EXTRACTION_SHA_HEX_DIGITS);
  const name = `${read.marker.key}${EXTRACTED_INFIX}${shaPrefix}`;
  const tmpTarget = tmpNameTarget(path.basename(dir));
  return isShortenedTmpTarget(tmpTarget, name) ? { key: read.marker.key, shaPrefix } : undefined;
}

/**
 * The proof for a directory at a published extraction's name: the cache publishes only complete,
 * non-empty extractions, so anything less there is not its own (`undefined`).
 */
export async function provePublishedExtraction(
  extraction: ScannedExtraction,
): Promise<ExtractionProof | undefined> {
  const proof = await proveExtraction(extraction.path, extraction.key, extraction.shaPrefix);
  return proof && proof !== 'empty' && proof.marker.complete ? proof : undefined;
}

/** What a janitor saw of an extraction when it decided to remove it. */
export interface SeenExtraction {
  readonly markerText: string;
  /** For removals that depend on disuse: the last use seen, required unchanged and outside the window. */
  readonly lastUsedAtMs?: number;
}

/** When a removal that depends on disuse is judged: extractions used within the window stay. */
export interface DisuseWindow {
  readonly nowMs: number;
  readonly inUseWindowMs: number;
}

export type ExtractionRemovalOutcome = 'removed' | 'gone' | 'changed' | 'recently-used' | 'locked';

/**
 * Removes the published extraction `extraction` only if it is still the one a janitor saw, checked under its
 * key's lock just before acting: the same marker text and, when disuse was the reason, no use since and
 * none within the window. `locked` when the key's lock is held, or when something inside is held open
 * (Windows, SMB): a reader is using it, so it stays for now.
 */
export async function removeExtractionIfUnchanged(
  extraction: ScannedExtraction,
  lockPath: string,
  seen: SeenExtraction,
  window: DisuseWindow,
  lockStaleMs: number,
  modes?: CreateModes,
): Promise<ExtractionRemovalOutcome> {
  const outcome = await whileLocked(
    lockPath,
    lockStaleMs,
    async (): Promise<ExtractionRemovalOutcome> => {
      const proof = await proveExtraction(extraction.path, extraction.key, extraction.shaPrefix);
      if (!proof) return 'gone';
      if (proof === 'empty' || proof.markerText !== seen.markerText) return 'changed';
      if (seen.lastUsedAtMs !== undefined) {
        if (proof.lastUsedAtMs > window.nowMs - window.inUseWindowMs) return 'recently-used';
        if (proof.lastUsedAtMs !== seen.lastUsedAtMs) return 'changed';
      }
      return (await removeExtraction(extraction.path)) ? 'removed' : 'locked';
    },
    modes,
  );
  return outcome ?? 'locked';
}

/**
 * Bytes of content in each key's published extractions that a marker proves are the cache's: what
 * `keepN`/`maxBytes` eviction adds to an entry's payload. One small read per extraction.
 */
export async function extractionBytesByKey(
  extractions: readonly ScannedExtraction[],
): Promise<Map<string, number>> {
  const bytes = new Map<string, number>();
  for (const extraction of extractions) {
    const proof = await provePublishedExtraction(extraction);
    if (!proof) continue;
    bytes.set(extraction.key, (bytes.get(extraction.key) ?? 0) + (proof.marker.total_bytes ?? 0));
  }
  return bytes;
}

/**
 * Removes a published extraction: renamed aside first, so that its name is gone at once and a crash
 * half-way leaves a tmp extraction (marker inside) for the sweep, then its tree. `false` when it could not
 * be renamed because something inside is held open (Windows, SMB): it stays, to be tried again later.
 */
export async function removeExtraction(dir: string): Promise<boolean> {
  const aside = tmpPathFor(dir);
  try {
    await fsp.rename(dir, aside);
  } catch (error) {
    if (['EPERM', 'EACCES', 'EBUSY'].includes(errorCode(error))) return false;
    if (errorCode(error) === 'ENOENT') return true;
    throw error;
  }
  await removeExtractionTree(aside);
  return true;
}

/**
 * Removes a directory tree the cache made (a tmp extraction of this process, or an extraction a janitor
 * proved to be the cache's), without ever following a link: every name is judged by `lstat` right before
 * it is acted on, anything but a real directory is unlinked (a symlink goes, never what it points to), and
 * only real directories are read and descended into. `false` when nothing was there.
 */
export async function removeExtractionTree(target: string): Promise<boolean> {
  const stats = await fsp.lstat(target).catch(() => undefined);
  if (!stats) return false;
  if (!stats.isDirectory()) {
    await fsp.unlink(target).catch(ignoreMissing);
    return true;
  }
  let names: string[];
  try {
    names = await fsp.readdir(target);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return false;
    throw error;
  }
  for (const name of names) await removeExtractionTree(path.join(target, name));
  await fsp.rmdir(target).catch(ignoreMissing);
  return true;
}

function ignoreMissing(error: unknown): void {
  if (errorCode(error) !== 'ENOENT') throw error;
}

const fileLineSchema = z.union([
  z.object({
    path: z.string(),
    size_bytes: z.number().int().nonnegative(),
    sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional(),
  }),
  z.object({ path: z.string(), symlink: z.string() }),
]);

/**
 * `verify` of one published extraction: every file its list names is a regular file below `content/` with
 * the recorded size and, where one is recorded, sha256 (read whole: this is the slow, thorough check), and
 * every symbolic link it names is one with the recorded target; the list holds as many entries as the
 * marker says. `undefined` when all is well.
 */
export async function checkExtractionFiles(
  dir: string,
  marker: ExtractionMarker,
): Promise<'size-mismatch' | 'hash-mismatch' | undefined> {
  const content = path.join(dir, EXTRACTION_CONTENT_NAME);
  let listed = 0;
  let hashProblem = false;
  try {
    const lines = readline.createInterface({
      input: createReadStream(path.join(dir, EXTRACTION_FILE_LIST_NAME)),
    });
    for await (const line of lines) {
      if (line === '') continue;
      const file = fileLineSchema.parse(JSON.parse(line));
      listed += 1;
      // Names were vetted when the archive was extracted; a list edited since must not lead outside.
      const filePath = path.join(content, ...file.path.split('/'));
      if (path.relative(content, filePath).startsWith('..')) return 'size-mismatch';
      const stats = await fsp.lstat(filePath).catch(() => undefined);
      if ('symlink' in file) {
        const target = stats?.isSymbolicLink() ? await fsp.readlink(filePath) : undefined;
        if (target !== file.symlink) return 'size-mismatch';
        continue;
      }
      if (!stats?.isFile() || stats.size !== file.size_bytes) return 'size-mismatch';
      if (file.sha256 !== undefined && (await sha256OfFile(filePath).catch(() => undefined)) !== file.sha256)
        hashProblem = true;
    }
  } catch {
    return 'size-mismatch'; // no list, or not one the cache wrote: the tree cannot be vouched for
  }
  if (marker.file_count !== undefined && listed !== marker.file_count) return 'size-mismatch';
  return hashProblem ? 'hash-mismatch' : undefined;
}
