import { createHash } from 'node:crypto';
import { constants, createReadStream, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { type ExtractOptions, extractArchive, gzipFileNameFor } from './archive-extract.js';
import { writeFileAtomic } from './atomic-writer.js';
import { crashPoint } from './crash-points.js';
import { type ExtractionPaths, extractionPathsAt, tmpPathFor } from './entry-paths.js';
import { touchFile } from './entry-store.js';
import type { ExtractedFile } from './extraction-writer.js';
import { type CreateModes, errorCode, fsyncDir } from './file-system.js';

/**
 * Extractions on disk: their marker, the hit check, publication by one directory rename, and the removal
 * of a tree the cache made. An extraction is `<key>.extracted.<sha16>/` beside its archive, holding
 * `extraction.json` (the marker), `files.jsonl` (the file list) and `content/` (the archive's files).
 */

export const EXTRACTION_MARKER_KIND = 'payload-cache-extraction';
/** A marker is a few hundred bytes; anything larger is not one of ours. */
const MAX_MARKER_BYTES = 64 * 1024;
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
  return { marker, lastUsedAtMs: Math.round(stats.mtimeMs) };
}

async function readMarker(
  markerPath: string,
): Promise<{ marker: ExtractionMarker; stats: Stats } | undefined> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(markerPath, READ_FLAGS);
    const stats = await handle.stat();
    if (!stats.isFile() || stats.size > MAX_MARKER_BYTES) return undefined;
    const parsed = markerSchema.safeParse(JSON.parse(await handle.readFile('utf8')));
    return parsed.success ? { marker: parsed.data, stats } : undefined;
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

export interface PublishOptions extends Omit<ExtractOptions, 'modes'> {
  /** When the extraction is made (its marker's `created_at` and first last-used time). */
  readonly nowMs: number;
  readonly modes?: CreateModes | undefined;
}

/** An extraction made in its tmp directory, complete and flushed, waiting to be published or dropped. */
export interface PreparedExtraction {
  readonly paths: ExtractionPaths;
  /**
   * Renames the tmp directory into place: one step, after which the whole tree is visible. If another
   * writer published the same extraction meanwhile (possible only when the lock failed open; same sha256,
   * so the same tree), ours is dropped and theirs stands: `'already-published'`.
   */
  publish(): Promise<'published' | 'already-published'>;
  /** Removes the tmp directory; never throws (it runs on error paths). */
  discard(): Promise<void>;
}

/**
 * Extracts the archive at `archivePath` (a sealed tmp payload not yet committed, or a committed one) into a
 * fresh tmp directory beside `paths.dir`, with its marker and file list, everything flushed. Nothing of it
 * is visible until {@link PreparedExtraction.publish}. Every failure removes the tmp directory and rethrows
 * (the archive's ArchiveUnsafeError or ArchiveInvalidError included).
 */
export async function prepareExtraction(
  paths: ExtractionPaths,
  archivePath: string,
  options: PublishOptions,
): Promise<PreparedExtraction> {
  const tmp = extractionPathsAt(tmpPathFor(paths.dir), paths.key, paths.archiveSha256);
  const { nowMs, modes, ...extractOptions } = options;
  await fsp.mkdir(tmp.dir, DIRECTORY_MODE);
  try {
    if (modes) await fsp.chmod(tmp.dir, modes.dir);
    const started: ExtractionMarker = {
      schema_version: 1,
      kind: EXTRACTION_MARKER_KIND,
      key: paths.key,
      archive_sha256: paths.archiveSha256,
      complete: false,
      created_at: new Date(nowMs).toISOString(),
    };
    await writeFileAtomic(tmp.marker, markerText(started), modes);
    await fsp.mkdir(tmp.content, DIRECTORY_MODE);
    if (modes) await fsp.chmod(tmp.content, modes.dir);
    await crashPoint('extracting');
    // The archive may be a tmp file: a single gzip file is named after the key, not after that file.
    const gzipFileName = extractOptions.gzipFileName ?? gzipFileNameFor(paths.key);
    const result = await extractArchive(archivePath, tmp.content, { ...extractOptions, gzipFileName, modes });
    await writeFileAtomic(tmp.fileList, fileListText(result.files), modes);
    const complete: ExtractionMarker = {
      ...started,
      complete: true,
      format: result.format,
      file_count: result.files.length,
      total_bytes: result.totalBytes,
    };
    await writeFileAtomic(tmp.marker, markerText(complete), modes);
    const when = new Date(nowMs);
    await fsp.lutimes(tmp.marker, when, when);
    await fsyncDir(tmp.dir);
    await crashPoint('extracted');
  } catch (error) {
    await removeExtractionTree(tmp.dir).catch(() => {});
    throw error;
  }
  return {
    paths,
    async publish() {
      try {
        if (!(await renameIntoPlace(tmp.dir, paths))) {
          await removeExtractionTree(tmp.dir);
          return 'already-published';
        }
      } catch (error) {
        await removeExtractionTree(tmp.dir).catch(() => {});
        throw error;
      }
      await fsyncDir(path.dirname(paths.dir));
      return 'published';
    },
    async discard() {
      await removeExtractionTree(tmp.dir).catch(() => {});
    },
  };
}

const DIRECTORY_MODE = 0o755;

/** `false` when the name is taken by a valid extraction of the same archive (another writer's). */
async function renameIntoPlace(tmpDir: string, paths: ExtractionPaths): Promise<boolean> {
  try {
    await fsp.rename(tmpDir, paths.dir);
    return true;
  } catch (error) {
    // A non-empty directory at the name: ENOTEMPTY or EEXIST on POSIX, EPERM or EACCES on Windows.
    if (!['ENOTEMPTY', 'EEXIST', 'EPERM', 'EACCES'].includes(errorCode(error))) throw error;
    if (await lookupExtraction(paths)) return false;
    throw error;
  }
}

function markerText(marker: ExtractionMarker): string {
  return `${JSON.stringify(marker)}\n`;
}

function fileListText(files: readonly ExtractedFile[]): string {
  return files
    .map(
      (file) => `${JSON.stringify({ path: file.path, size_bytes: file.sizeBytes, sha256: file.sha256 })}\n`,
    )
    .join('');
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

/**
 * The sha256 of a committed payload, for an entry whose manifest records none (written by imf_reader): the
 * extraction's name needs it. Costs a full read of the archive, under the key's lock.
 */
export async function sha256OfFile(filePath: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(filePath)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
