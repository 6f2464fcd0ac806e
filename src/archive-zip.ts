import { promises as fsp } from 'node:fs';
import type { Readable } from 'node:stream';
import { crc32, inflateRawSync } from 'node:zlib';
import { type Entry, getFileNameLowLevel, open, type ZipFile } from 'yauzl';
import type { EntrySink } from './archive-extract.js';
import { type EntryHeader, type EntryKind, MAX_LINK_TARGET_BYTES } from './archive-safety.js';
import { ArchiveInvalidError, PayloadCacheError } from './errors.js';

/**
 * Reads a zip with yauzl 3: through the central directory (never by scanning local headers, which a
 * hostile zip can make disagree with it), one entry at a time (`lazyEntries`), each entry held to its
 * declared size (`validateEntrySizes`). Names are decoded here with yauzl's own decoder in strict mode and
 * judged by our rules, not yauzl's: its default mode turns `\` into `/`, and its refusals are untyped.
 */

// "Version made by" hosts whose external attributes carry a Unix mode in their upper 16 bits.
const UNIX_HOSTS = new Set([3 /* Unix */, 19 /* OS X */]);
const FILE_TYPE_BITS = 0o170000;
const UNIX_TYPES: ReadonlyMap<number, { kind: EntryKind; label: string }> = new Map([
  [0o100000, { kind: 'file', label: 'regular file' }],
  [0o040000, { kind: 'directory', label: 'directory' }],
  [0o120000, { kind: 'symlink', label: 'symbolic link' }],
  [0o020000, { kind: 'special-file', label: 'character device' }],
  [0o060000, { kind: 'special-file', label: 'block device' }],
  [0o010000, { kind: 'special-file', label: 'FIFO' }],
  [0o140000, { kind: 'special-file', label: 'socket' }],
]);
const STORED = 0;
const DEFLATED = 8;

/**
 * Entries of at most this many bytes, compressed and inflated, are read with one read and inflated in one
 * call, instead of through yauzl's per-entry streams (a file stream, an inflate stream and a size check,
 * per entry): for an archive of many small files those streams cost more than the bytes. Larger entries
 * stream, so memory stays flat whatever the archive declares.
 */
const WHOLE_ENTRY_MAX_BYTES = 1024 * 1024;

/** Feeds every entry of the zip at `archivePath` to `sink`, in central-directory order. */
export async function readZip(archivePath: string, sink: EntrySink): Promise<void> {
  const zipfile = await openZip(archivePath);
  try {
    sink.checkEntryCount(zipfile.entryCount);
    // A handle of our own for the entries read whole (yauzl keeps its descriptor to itself).
    const archive = await fsp.open(archivePath, 'r');
    try {
      for (;;) {
        const entry = await nextEntry(zipfile);
        if (!entry) break;
        const header = await withLinkTarget(zipEntryHeader(entry), sink, () =>
          openBody(zipfile, archive, entry, zipEntryName(entry)),
        );
        await sink.accept(header, () => openBody(zipfile, archive, entry, header.name));
      }
    } finally {
      await archive.close();
    }
  } finally {
    zipfile.close();
  }
}

function openZip(archivePath: string): Promise<ZipFile> {
  const options = {
    lazyEntries: true,
    autoClose: false,
    decodeStrings: false,
    validateEntrySizes: true,
    strictFileNames: true,
  };
  return new Promise((resolve, reject) => {
    open(archivePath, options, (error, zipfile) => {
      if (error || !zipfile) reject(corrupt(undefined, error));
      else resolve(zipfile);
    });
  });
}

/** The next central-directory record, or `undefined` after the last. */
function nextEntry(zipfile: ZipFile): Promise<Entry | undefined> {
  return new Promise((resolve, reject) => {
    const onEntry = (entry: Entry) => settle(() => resolve(entry));
    const onEnd = () => settle(() => resolve(undefined));
    const onError = (error: unknown) => settle(() => reject(corrupt(undefined, error)));
    const settle = (action: () => void) => {
      zipfile.off('entry', onEntry);
      zipfile.off('end', onEnd);
      zipfile.off('error', onError);
      action();
    };
    zipfile.on('entry', onEntry);
    zipfile.on('end', onEnd);
    zipfile.on('error', onError);
    zipfile.readEntry();
  });
}

/**
 * A zip keeps a symbolic link's target as the entry's content. When links may be extracted, that content
 * (a few bytes; at most MAX_LINK_TARGET_BYTES are read) becomes the header's `linkTarget` before the rules
 * see it; otherwise the link is refused by type and its content never read.
 */
async function withLinkTarget(
  header: EntryHeader,
  sink: EntrySink,
  openContent: () => Promise<AsyncIterable<Uint8Array>>,
): Promise<EntryHeader> {
  if (header.kind !== 'symlink' || !sink.readsLinks) return header;
  if ((header.declaredBytes ?? 0) > MAX_LINK_TARGET_BYTES) return header; // no target: refused as such
  const chunks: Buffer[] = [];
  for await (const chunk of await openContent()) chunks.push(Buffer.from(chunk));
  return { ...header, linkTarget: Buffer.concat(chunks).toString('utf8') };
}

/** The entry's name, decoded by yauzl in strict mode: backslashes kept, so the rules can refuse them. */
function zipEntryName(entry: Entry): string {
  return getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, true);
}

/** An entry in the rules' terms. Only a Unix host's mode is believed; others' attributes mean nothing here. */
export function zipEntryHeader(entry: Entry): EntryHeader {
  const name = zipEntryName(entry);
  const unixMode = UNIX_HOSTS.has(entry.versionMadeBy >> 8) ? entry.externalFileAttributes >>> 16 : 0;
  const unixType = UNIX_TYPES.get(unixMode & FILE_TYPE_BITS);
  const mode = unixMode === 0 ? undefined : unixMode & 0o7777;
  let kind: EntryKind;
  let label: string;
  if (unixType && unixType.kind !== 'file' && unixType.kind !== 'directory') {
    ({ kind, label } = unixType);
  } else if (name.endsWith('/') || unixType?.kind === 'directory') {
    kind = 'directory';
    label = 'directory';
  } else if (unixMode === 0 || unixType) {
    kind = 'file';
    label = 'regular file';
  } else {
    kind = 'unsupported';
    label = `unknown (mode ${unixMode.toString(8)})`;
  }
  // A symlink's content is its target: declared, so that the budget and the target's reading see it.
  const declaredBytes = kind === 'file' || kind === 'symlink' ? entry.uncompressedSize : 0;
  return { name, kind, mode, declaredBytes, typeLabel: label };
}

/** The entry's content, inflated, held to its declared size and CRC-32 as it streams. */
async function openBody(zipfile: ZipFile, archive: fsp.FileHandle, entry: Entry, name: string) {
  if (entry.isEncrypted()) throw new ArchiveInvalidError('unsupported', name, 'the entry is encrypted');
  if (entry.compressionMethod !== STORED && entry.compressionMethod !== DEFLATED) {
    throw new ArchiveInvalidError(
      'unsupported',
      name,
      `compression method ${entry.compressionMethod} (only stored and deflate are read)`,
    );
  }
  if (entry.compressedSize <= WHOLE_ENTRY_MAX_BYTES && entry.uncompressedSize <= WHOLE_ENTRY_MAX_BYTES) {
    return checkedContent(wholeEntry(zipfile, archive, entry), entry, name);
  }
  const stream = await new Promise<Readable>((resolve, reject) => {
    zipfile.openReadStream(entry, (error, readStream) => {
      if (error || !readStream) reject(corrupt(name, error));
      else resolve(readStream);
    });
  });
  return checkedContent(stream, entry, name);
}

/**
 * A small entry's content in one piece: its data located through yauzl's reading of the local header
 * (which also checks that the data lies inside the file), read in one call, inflated in one call that
 * refuses to produce more than the declared size.
 */
async function* wholeEntry(
  zipfile: ZipFile,
  archive: fsp.FileHandle,
  entry: Entry,
): AsyncGenerator<Uint8Array> {
  const { fileDataStart } = await zipfile.readLocalFileHeaderPromise(entry, { minimal: true });
  const data = Buffer.allocUnsafe(entry.compressedSize);
  const { bytesRead } = await archive.read(data, 0, data.length, fileDataStart);
  if (bytesRead !== data.length) throw new Error(`the entry's data ends after ${bytesRead} bytes`);
  if (entry.compressionMethod === STORED) {
    yield data;
    return;
  }
  // One more byte than declared is room enough to tell a lying size from an honest one.
  yield inflateRawSync(data, { maxOutputLength: entry.uncompressedSize + 1 });
}

async function* checkedContent(
  stream: AsyncIterable<unknown> & { destroy?: () => void },
  entry: Entry,
  name: string,
): AsyncGenerator<Uint8Array> {
  let checksum = 0;
  let sizeBytes = 0;
  try {
    for await (const chunk of stream) {
      const bytes = chunk as Buffer;
      checksum = crc32(bytes, checksum);
      sizeBytes += bytes.byteLength;
      yield bytes;
    }
  } catch (error) {
    throw corrupt(name, error);
  } finally {
    stream.destroy?.();
  }
  if (sizeBytes !== entry.uncompressedSize) {
    throw new ArchiveInvalidError('corrupt', name, `${sizeBytes} bytes, ${entry.uncompressedSize} declared`);
  }
  if (checksum !== entry.crc32) {
    throw new ArchiveInvalidError('corrupt', name, 'CRC-32 mismatch: the content is damaged');
  }
}

/** yauzl's and zlib's errors become ArchiveInvalidError; our own errors pass through unchanged. */
function corrupt(name: string | undefined, error: unknown): unknown {
  if (error instanceof PayloadCacheError) return error;
  const detail = error instanceof Error ? error.message : 'the zip could not be read';
  return new ArchiveInvalidError('corrupt', name, detail, { cause: error });
}
