import { Parser, type ReadEntry } from 'tar';
import type { EntrySink } from './archive-extract.js';
import type { EntryHeader, EntryKind } from './archive-safety.js';
import { ArchiveInvalidError, PayloadCacheError } from './errors.js';
import { isSystemCallError } from './file-system.js';

/**
 * Reads a tar stream with the `tar` package's Parser only (headers, pax records, GNU long names, header
 * checksums), never its extractor: every entry goes to the sink, which vets it and writes it itself. The
 * parser runs in strict mode, so a bad checksum, an invalid header or a truncated archive is an error
 * rather than a skipped entry, and with its own decompression sniffing off (the caller decompresses, so
 * that the bytes behind the ratio limit are counted by us).
 */

const TAR_TYPES: ReadonlyMap<string, EntryKind> = new Map([
  ['File', 'file'],
  ['OldFile', 'file'],
  ['ContiguousFile', 'file'],
  ['Directory', 'directory'],
  ['SymbolicLink', 'symlink'],
  ['Link', 'hard-link'],
  ['CharacterDevice', 'special-file'],
  ['BlockDevice', 'special-file'],
  ['FIFO', 'special-file'],
]);

/** Pax and GNU long-name records hold a name or two; anything larger is not an honest header. */
const MAX_META_ENTRY_BYTES = 64 * 1024;

/**
 * Feeds every entry of the tar stream `chunks` to `sink`, one at a time, with back-pressure: the source is
 * read only as fast as entries are written. What follows the end-of-archive marker is read to the end but
 * never parsed.
 */
export async function readTar(chunks: AsyncIterable<Uint8Array>, sink: EntrySink): Promise<void> {
  const parser = new Parser({
    strict: true,
    brotli: false,
    zstd: false,
    maxMetaEntrySize: MAX_META_ENTRY_BYTES,
  });
  let failure: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  let current: ReadEntry | undefined;
  let sawEndMarker = false;
  let ended = false;
  const fail = (error: unknown) => {
    failure ??= { error };
    wake?.();
    // A file being written waits for data that will not come now: end it, so that its writer returns.
    current?.destroy();
  };
  const failReading = (error: unknown) => fail(asArchiveError(error));
  // Entries arrive one at a time (the parser holds the next until this one has ended); the chain also keeps
  // the closing of one file ahead of the next entry's work.
  let work: Promise<void> = Promise.resolve();
  parser.on('entry', (entry: ReadEntry) => {
    // The parser reports every failure itself; an entry's own 'error' (a write after we destroyed it) must
    // not become an uncaught exception.
    entry.on('error', () => {});
    work = work.then(async () => {
      current = entry;
      try {
        if (!failure) await sink.accept(tarEntryHeader(entry), async () => entry);
      } catch (error) {
        fail(error);
      } finally {
        current = undefined;
        // An entry not read (a directory, a refused one) must still be drained for the parser to go on.
        entry.resume();
      }
    });
  });
  parser.on('ignoredEntry', (entry: ReadEntry) => {
    const name = entry.header.path ?? entry.path;
    fail(new ArchiveInvalidError('unsupported', name, `entries of type ${entry.type} are not read`));
  });
  parser.on('error', failReading);
  parser.on('eof', () => {
    sawEndMarker = true;
  });
  parser.on('end', () => {
    ended = true;
    wake?.();
  });
  const until = (event: 'drain' | 'end') =>
    new Promise<void>((resolve) => {
      if (failure) return resolve();
      const finish = () => {
        parser.off(event, finish);
        wake = undefined;
        resolve();
      };
      wake = finish;
      parser.on(event, finish);
    });

  try {
    for await (const chunk of chunks) {
      if (failure) break;
      // Past the end marker the parser would only buffer: the rest is read (a gzip stream must reach its
      // trailer for its CRC to be checked) but not parsed. The caller's meter bounds how much that is.
      if (sawEndMarker) continue;
      if (!parser.write(chunk)) await until('drain');
    }
  } catch (error) {
    failReading(error);
  }
  if (!failure) {
    const end = until('end');
    parser.end();
    if (!ended && !failure) await end;
  }
  await work;
  if (failure) throw failure.error;
}

/** An entry in the rules' terms, named as the archive spells it: `tar` rewrites `\` to `/` in `entry.path`
 * on Windows only, while `entry.header.path` (pax and GNU long names included) is the archive's text. */
export function tarEntryHeader(entry: ReadEntry): EntryHeader {
  const kind = TAR_TYPES.get(entry.type) ?? 'unsupported';
  const name = entry.header.path ?? entry.path;
  const mode = entry.header.mode === undefined ? undefined : entry.header.mode & 0o7777;
  const typeLabel = entry.type;
  // Like the name, the link target as the archive spells it (`entry.linkpath` is rewritten on Windows).
  const linkTarget = entry.header.linkpath || undefined;
  return { name, kind, mode, declaredBytes: kind === 'file' ? entry.size : 0, typeLabel, linkTarget };
}

/** The parser's and the source's errors become ArchiveInvalidError; our own errors pass unchanged. */
function asArchiveError(error: unknown): unknown {
  if (error instanceof PayloadCacheError || isSystemCallError(error)) return error;
  const detail = error instanceof Error ? error.message : 'the tar could not be read';
  return new ArchiveInvalidError('corrupt', undefined, detail, { cause: error });
}
