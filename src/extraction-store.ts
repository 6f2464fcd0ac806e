import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { type ExtractOptions, extractArchive, gzipFileNameFor } from './archive-extract.js';
import { writeFileAtomic } from './atomic-writer.js';
import { crashPoint } from './crash-points.js';
import { type ExtractionPaths, extractionPathsAt, tmpPathFor } from './entry-paths.js';
import { ForeignFileError } from './errors.js';
import {
  EXTRACTION_MARKER_KIND,
  type ExtractionMarker,
  lookupExtraction,
  removeExtractionTree,
} from './extraction-on-disk.js';
import type { ExtractedFile } from './extraction-writer.js';
import { type CreateModes, errorCode, fsyncDir } from './file-system.js';

/**
 * Making an extraction: the archive extracted into a tmp directory beside its final name, with its marker
 * and file list, then published by one rename. Loaded on the first getOrExtract only, with the archive
 * libraries; what an extraction is on disk (marker, lookup, proof, removal) is in extraction-on-disk.ts.
 */

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
    // Something the cache cannot prove it made holds the name: left alone, as at a payload's name.
    throw new ForeignFileError(paths.dir, 'a directory');
  }
}

function markerText(marker: ExtractionMarker): string {
  return `${JSON.stringify(marker)}\n`;
}

/** One JSON line per file: path, size and sha256, or path and target for a symbolic link. */
function fileListText(files: readonly ExtractedFile[]): string {
  return files
    .map((file) => {
      const line =
        file.symlinkTarget === undefined
          ? { path: file.path, size_bytes: file.sizeBytes, sha256: file.sha256 }
          : { path: file.path, symlink: file.symlinkTarget };
      return `${JSON.stringify(line)}\n`;
    })
    .join('');
}
