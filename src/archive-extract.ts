import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Header } from 'tar';
import {
  ARCHIVE_FORMATS,
  type ArchiveFormat,
  type EntryHeader,
  ExtractionBudget,
  type ExtractionLimits,
  LINK_POLICIES,
  type LinkPolicy,
  NameLedger,
  resolveLimits,
  vetEntry,
} from './archive-safety.js';
import { readTar } from './archive-tar.js';
import { readZip } from './archive-zip.js';
import { ArchiveInvalidError, ArchiveUnsafeError, InvalidOptionsError, PayloadCacheError } from './errors.js';
import { type ExtractedFile, ExtractionWriter } from './extraction-writer.js';
import { type CreateModes, isSystemCallError } from './file-system.js';

export type { ArchiveFormat };

/**
 * The extraction core: given an archive file and an empty directory private to the caller, detects the
 * format, vets every entry against the safety rules (`archive-safety.ts`) before any of it is written, and
 * writes files and directories below that directory only. It knows nothing of the cache: publishing the
 * directory, markers and locks are the caller's.
 */

export interface ExtractOptions extends Partial<ExtractionLimits> {
  /** The archive's format; detected from its first bytes when not given. */
  format?: ArchiveFormat;
  /**
   * The name of the one file a single gzip file becomes (the gzip header's own name is untrusted and
   * ignored). Default: the archive's file name without `.gz`.
   */
  gzipFileName?: string;
  /** Explicit modes for a group-shared cache; `undefined`: the umask decides. */
  modes?: CreateModes;
  /** Stops the extraction between chunks; it then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** `inside`: extract symbolic links that resolve inside, and hard links to earlier files. Default `none`. */
  allowLinks?: LinkPolicy;
}

/** What one extraction wrote. */
export interface ExtractionResult {
  readonly format: ArchiveFormat;
  /** Every file, in archive order, with its size and sha256. */
  readonly files: readonly ExtractedFile[];
  /** Every directory created, listed or implied, `/`-separated, parents first. */
  readonly directories: readonly string[];
  /** Bytes of content, all files together. */
  readonly totalBytes: number;
}

/** Where a reader hands each entry: vetted there, then written. */
export interface EntrySink {
  /** For formats that list their entries up front (zip): refuses too many before reading any. */
  checkEntryCount(count: number): void;
  /** Whether links may be extracted: a zip reader then reads a symlink's target (its content) first. */
  readonly readsLinks: boolean;
  /**
   * Vets `header` and writes the entry; `openBody` is called only for a file that passed, so a refused
   * entry is never even decompressed.
   */
  accept(header: EntryHeader, openBody: () => Promise<AsyncIterable<Uint8Array>>): Promise<void>;
}

/**
 * Extracts the archive at `archivePath` into `destDir`, which must exist, be empty and be private to the
 * caller. Either every entry passes the safety rules and is written, each file and directory flushed to
 * stable storage, or the promise rejects and everything it wrote is removed again (`destDir` stays):
 * {@link ArchiveUnsafeError} for a hostile archive, {@link ArchiveInvalidError} for one that cannot be
 * read, InvalidOptionsError for bad options, the file system's error for a failing disk, the signal's
 * reason on abort. Nothing is ever written outside `destDir`.
 */
export async function extractArchive(
  archivePath: string,
  destDir: string,
  options: ExtractOptions = {},
): Promise<ExtractionResult> {
  const limits = resolveLimits(options);
  if (options.format !== undefined && !ARCHIVE_FORMATS.includes(options.format)) {
    throw new InvalidOptionsError(
      `format must be one of ${ARCHIVE_FORMATS.join(', ')}, got ${String(options.format)}`,
    );
  }
  if (options.allowLinks !== undefined && !LINK_POLICIES.includes(options.allowLinks)) {
    throw new InvalidOptionsError(
      `allowLinks must be one of ${LINK_POLICIES.join(', ')}, got ${String(options.allowLinks)}`,
    );
  }
  options.signal?.throwIfAborted();
  const archiveSizeBytes = (await fsp.stat(archivePath)).size;
  const format = options.format ?? (await detectArchiveFormat(archivePath));
  const writer = new ExtractionWriter(destDir, options.modes);
  const budget = new ExtractionBudget(limits, archiveSizeBytes);
  const extraction = new Extraction(writer, budget, options.signal, options.allowLinks ?? 'none');
  try {
    switch (format) {
      case 'zip':
        await readZip(archivePath, extraction);
        break;
      case 'tar':
        await readTar(createReadStream(archivePath), extraction);
        break;
      case 'tar.gz':
        await readTar(
          metered(gunzipped(archivePath), (bytes) => budget.consumeDecompressed(bytes)),
          extraction,
        );
        break;
      case 'gzip':
        await readSingleGzip(archivePath, options.gzipFileName ?? gzipFileNameFor(archivePath), extraction);
        break;
    }
    await writer.finish();
  } catch (error) {
    await writer.discard();
    throw error;
  }
  return { format, ...extraction.result() };
}

/** Vets and writes entries as the readers hand them over, keeping the totals. */
class Extraction implements EntrySink {
  readonly #writer: ExtractionWriter;
  readonly #ledger = new NameLedger();
  readonly #budget: ExtractionBudget;
  readonly #signal: AbortSignal | undefined;
  readonly #links: LinkPolicy;
  readonly #files: ExtractedFile[] = [];
  /** Files by path, for hard links to find what they link to (only kept when links are allowed). */
  readonly #fileByPath = new Map<string, ExtractedFile>();
  readonly #directories: string[] = [];

  constructor(
    writer: ExtractionWriter,
    budget: ExtractionBudget,
    signal: AbortSignal | undefined,
    links: LinkPolicy,
  ) {
    this.#writer = writer;
    this.#budget = budget;
    this.#signal = signal;
    this.#links = links;
  }

  get readsLinks(): boolean {
    return this.#links === 'inside';
  }

  checkEntryCount(count: number): void {
    this.#budget.checkEntryCount(count);
  }

  async accept(header: EntryHeader, openBody: () => Promise<AsyncIterable<Uint8Array>>): Promise<void> {
    this.#signal?.throwIfAborted();
    const entry = vetEntry(header, this.#ledger, this.#budget, this.#links);
    for (const segments of entry.newDirectories) {
      await this.#writer.makeDirectory(segments);
      this.#directories.push(segments.join('/'));
    }
    const filePath = entry.segments.join('/');
    if (entry.kind === 'symlink') {
      const target = entry.symlinkTarget ?? '';
      this.#writer.addSymlink(header.name, entry.segments, target);
      this.#files.push({ path: filePath, sizeBytes: 0, sha256: EMPTY_SHA256, symlinkTarget: target });
      return;
    }
    if (entry.hardLinkTarget) {
      const linked = this.#fileByPath.get(entry.hardLinkTarget.join('/'));
      if (!linked) throw new ArchiveUnsafeError('hard-link', header.name, 'its target was not extracted');
      this.#writer.linkFile(entry.segments, entry.hardLinkTarget);
      this.#record({ path: filePath, sizeBytes: linked.sizeBytes, sha256: linked.sha256 });
      return;
    }
    if (entry.kind !== 'file') return;
    const body = await openBody();
    const file = await this.#writer.writeFile(entry, body, (bytes) => {
      this.#signal?.throwIfAborted();
      this.#budget.consume(bytes, header.name);
    });
    // A stream that ended early (a truncated tar) must not pass for the file the header promised.
    if (entry.declaredBytes !== undefined && file.sizeBytes !== entry.declaredBytes) {
      throw new ArchiveInvalidError(
        'corrupt',
        header.name,
        `${file.sizeBytes} bytes of content, ${entry.declaredBytes} declared: the archive is truncated`,
      );
    }
    this.#record(file);
  }

  #record(file: ExtractedFile): void {
    this.#files.push(file);
    if (this.#links === 'inside') this.#fileByPath.set(file.path, file);
  }

  result(): Omit<ExtractionResult, 'format'> {
    return { files: this.#files, directories: this.#directories, totalBytes: this.#budget.writtenBytes };
  }
}

/** The sha256 of no bytes: what a symbolic link's record carries (it holds no content of its own). */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

const TAR_BLOCK_BYTES = 512;
// A zip starts with a local file header, or (empty) with the end of central directory record.
const ZIP_SIGNATURES = [Buffer.from('PK\x03\x04', 'latin1'), Buffer.from('PK\x05\x06', 'latin1')];
const GZIP_SIGNATURE = Buffer.from([0x1f, 0x8b]);

/**
 * The archive's format from its first bytes: the zip and gzip signatures, then a tar header with a valid
 * checksum. A gzip file holds a tar when its first 512 decompressed bytes are such a header, else it is a
 * single compressed file. ArchiveInvalidError (`unknown-format`) for anything else.
 */
export async function detectArchiveFormat(archivePath: string): Promise<ArchiveFormat> {
  const head = await readHead(archivePath, TAR_BLOCK_BYTES);
  if (ZIP_SIGNATURES.some((signature) => startsWith(head, signature))) return 'zip';
  if (startsWith(head, GZIP_SIGNATURE)) {
    const inner = await gunzippedHead(archivePath, TAR_BLOCK_BYTES);
    return isTarHeader(inner) ? 'tar.gz' : 'gzip';
  }
  if (isTarHeader(head)) return 'tar';
  throw new ArchiveInvalidError(
    'unknown-format',
    undefined,
    'not a zip, tar, tar.gz or gzip file (pass format to say which it is)',
  );
}

function startsWith(bytes: Buffer, prefix: Buffer): boolean {
  return bytes.length >= prefix.length && bytes.subarray(0, prefix.length).equals(prefix);
}

/**
 * A tar header block: 512 bytes with a valid checksum. An archive of nothing but end-of-archive blocks (an
 * empty tar) has none; it is not worth caching, and reads as an unknown format.
 */
function isTarHeader(block: Buffer): boolean {
  if (block.length < TAR_BLOCK_BYTES) return false;
  try {
    return new Header(block.subarray(0, TAR_BLOCK_BYTES)).cksumValid;
  } catch {
    return false; // a numeric field no tar writer would produce: not a header
  }
}

async function readHead(filePath: string, maxBytes: number): Promise<Buffer> {
  const handle = await fsp.open(filePath, 'r');
  try {
    const buffer = Buffer.alloc(maxBytes);
    const { bytesRead } = await handle.read(buffer, 0, maxBytes, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Up to `maxBytes` of the decompressed stream; a damaged stream yields what came before the damage. */
async function gunzippedHead(archivePath: string, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of gunzipped(archivePath)) {
      chunks.push(chunk as Buffer);
      length += chunk.byteLength;
      if (length >= maxBytes) break; // destroys the streams: nothing past the head is decompressed
    }
  } catch {
    // Judged by what came out; extracting it will report the damage.
  }
  return Buffer.concat(chunks).subarray(0, maxBytes);
}

/** The decompressed content of a gzip file; errors of either stream end the iteration. */
function gunzipped(archivePath: string): AsyncIterable<Uint8Array> {
  const gunzip = createGunzip();
  pipeline(createReadStream(archivePath), gunzip, () => {});
  return gunzip;
}

async function* metered(
  chunks: AsyncIterable<Uint8Array>,
  meter: (bytes: number) => void,
): AsyncGenerator<Uint8Array> {
  for await (const chunk of chunks) {
    meter(chunk.byteLength);
    yield chunk;
  }
}

async function readSingleGzip(archivePath: string, fileName: string, sink: EntrySink): Promise<void> {
  const header: EntryHeader = { name: fileName, kind: 'file', declaredBytes: undefined, typeLabel: 'gzip' };
  await sink.accept(header, async () => gzipContent(archivePath, fileName));
}

async function* gzipContent(archivePath: string, fileName: string): AsyncGenerator<Uint8Array> {
  try {
    yield* gunzipped(archivePath);
  } catch (error) {
    if (error instanceof PayloadCacheError || isSystemCallError(error)) throw error;
    const detail = error instanceof Error ? error.message : 'the gzip stream could not be read';
    throw new ArchiveInvalidError('corrupt', fileName, detail, { cause: error });
  }
}

/**
 * The file a single gzip file becomes, named after the archive (a path or a key): `data.csv.gz` becomes
 * `data.csv`; a name without the suffix is kept as it is.
 */
export function gzipFileNameFor(archivePath: string): string {
  const name = path.basename(archivePath);
  const stem = name.replace(/\.gz$/i, '');
  return stem === '' ? name : stem;
}
