import { createHash, type Hash } from 'node:crypto';
import { constants, promises as fsp, type Stats } from 'node:fs';
import { raceAbort } from './abort.js';
import { crashPoint } from './crash-points.js';
import { tmpPathFor } from './entry-paths.js';
import { FileBusyError, InvalidOptionsError } from './errors.js';
import {
  applyFileMode,
  type CreateModes,
  errorCode,
  fileHasSha256,
  isBusyRenameError,
  removeFile,
  renameWithRetry,
} from './file-system.js';
import type { Body } from './types.js';

// O_EXCL makes the create fail on anything already there, a planted symlink included.
const EXCLUSIVE_CREATE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;

/**
 * A payload being written into its own exclusively created tmp file beside its final path. The tmp file
 * is private to this writer until {@link PayloadWriter.renameTo}, so a reader can never see it half-written,
 * and two writers (even when the lock failed open) never share one.
 */
export class PayloadWriter {
  readonly tmpPath: string;
  #handle: fsp.FileHandle | undefined;
  #hash: Hash = createHash('sha256');
  #sizeBytes = 0;
  #resetRequested = false;
  #sha256: string | undefined;
  /** The sealed file's size and mtime as the file system keeps them: what tells it from any other. */
  #sealed: { sizeBytes: number; mtimeMs: number } | undefined;

  private constructor(tmpPath: string, handle: fsp.FileHandle) {
    this.tmpPath = tmpPath;
    this.#handle = handle;
  }

  /**
   * Creates the tmp file beside `target` (with `modes.file` when given); if its directory has vanished,
   * `recreateDir` makes it again.
   */
  static async create(
    target: string,
    recreateDir?: () => Promise<void>,
    modes?: CreateModes,
  ): Promise<PayloadWriter> {
    const tmpPath = tmpPathFor(target);
    const open = () => createExclusive(tmpPath, modes);
    const handle = await open().catch(async (error: unknown) => {
      if (errorCode(error) !== 'ENOENT' || !recreateDir) throw error;
      await recreateDir();
      return open();
    });
    return new PayloadWriter(tmpPath, handle);
  }

  get sizeBytes(): number {
    return this.#sizeBytes;
  }

  /** The sha256 of everything written since the last reset; final once the body has ended. */
  get sha256(): string {
    this.#sha256 ??= this.#hash.digest('hex');
    return this.#sha256;
  }

  /** The next chunk starts the payload over at byte 0 (a fetcher restarting a download). */
  requestReset(): void {
    this.#resetRequested = true;
  }

  /**
   * Streams `body` into the tmp file, counting and hashing as it goes. It stops at once when `signal` aborts,
   * and at the first byte past `limit`. Whatever happens, the source is let go of at the end: a Node stream
   * destroyed (and kept from crashing the process with a late 'error'), a web stream cancelled, even with a
   * read still pending.
   */
  async writeBody(body: Body, signal: AbortSignal, limit?: SizeLimit): Promise<void> {
    const handle = this.#openHandle();
    if (typeof body === 'string') return this.#writeWhole(handle, Buffer.from(body, 'utf8'), limit);
    if (body instanceof ArrayBuffer) return this.#writeWhole(handle, new Uint8Array(body), limit);
    if (body instanceof Uint8Array) return this.#writeWhole(handle, body, limit);
    const chunks = chunksOf(body);
    ignoreLateErrors(body);
    const writes = new WriteBehind(handle, this.tmpPath);
    try {
      for (;;) {
        signal.throwIfAborted();
        const next = await raceAbort(chunks.next(), signal);
        if (next.done) break;
        await this.#applyPendingReset(handle, writes);
        const chunk = toBytes(next.value);
        if (limit && this.#sizeBytes + chunk.byteLength > limit.maxBytes()) {
          throw limit.error(this.#sizeBytes + chunk.byteLength);
        }
        this.#hash.update(chunk);
        this.#sizeBytes += chunk.byteLength;
        await writes.append(chunk);
        await crashPoint('streaming');
      }
      await this.#applyPendingReset(handle, writes);
      await writes.finish();
    } finally {
      await writes.settle();
      // Never wait on the source here: an abandoned read may never settle.
      Promise.resolve(chunks.return?.()).catch(() => {});
      releaseBody(body);
    }
  }

  /**
   * Flushes the bytes to stable storage, closes the file (SMB and Windows refuse to rename a file that is
   * still open) and then sets the last-used time: a network client may flush cached writes on close, and
   * the server then stamps its own mtime over one set before (smbnetfs does). The size and mtime the file
   * system reports after that, in the reply that also refreshes the client's attribute cache, are what
   * {@link PayloadWriter.isPublishedAt} recognises the file by.
   */
  async seal(lastUsedAtMs: number): Promise<void> {
    const handle = this.#openHandle();
    await handle.sync();
    await this.close();
    // A random fraction of a millisecond (kept where the file system keeps nanoseconds, dropped on SMB)
    // tells this file from another writer's sealed in the same millisecond; as a last-used time it changes
    // nothing, since readers round mtimes to the millisecond (lastUsedAtMs). Kept within 0.05 to 0.45 ms:
    // timestamps passed as float seconds come back a microsecond or so off, and must still round to this
    // millisecond.
    const whenSeconds = (lastUsedAtMs + 0.05 + Math.random() * 0.4) / 1_000;
    await fsp.lutimes(this.tmpPath, whenSeconds, whenSeconds);
    const stats = await fsp.lstat(this.tmpPath);
    this.#sealed = { sizeBytes: stats.size, mtimeMs: stats.mtimeMs };
  }

  async close(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    await handle?.close();
  }

  /**
   * Whether `filePath` still holds what this writer published: the same size and the same mtime (set at
   * sealing, with a random sub-millisecond part). Inode numbers would be stronger but FUSE and SMB renumber
   * files on rename, which would withdraw good entries; two writers whose locks failed open would need to
   * seal equal sizes at the same instant (within the same second on SMB, which keeps whole seconds) to be
   * confused. Where only the mtime differs, the bytes decide: a Samba server moves a file's mtime to the
   * time of its last write some time after the client set it (its delayed write-time update, seen in the
   * SMB lane on about one write in thirty), and a "no" would withdraw a true manifest.
   */
  async isPublishedAt(filePath: string): Promise<boolean> {
    const stats = await freshStats(filePath);
    if (!stats || stats.size !== this.#sealed?.sizeBytes) return false;
    return stats.mtimeMs === this.#sealed.mtimeMs || (await fileHasSha256(filePath, this.sha256));
  }

  /**
   * Publishes the sealed tmp file at `target` by rename, replacing the previous payload (or a symlink or
   * FIFO planted there: rename replaces the name, never what it points to). The caller has refused a
   * directory at `target` (commitEntry: ForeignFileError), which the cache did not make and never replaces.
   */
  async renameTo(target: string): Promise<void> {
    try {
      await renameWithRetry(this.tmpPath, target);
    } catch (error) {
      if (isBusyRenameError(error)) {
        throw new FileBusyError(target, { cause: error });
      }
      throw error;
    }
  }

  /** Closes and removes the tmp file; never throws (it runs on error paths). */
  async discard(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    await handle?.close().catch(() => {});
    await removeFile(this.tmpPath).catch(() => {});
  }

  #openHandle(): fsp.FileHandle {
    if (!this.#handle) throw new Error('payload tmp file is already closed');
    return this.#handle;
  }

  async #applyPendingReset(handle: fsp.FileHandle, writes?: WriteBehind): Promise<void> {
    if (!this.#resetRequested) return;
    this.#resetRequested = false;
    await writes?.reset();
    await handle.truncate(0);
    this.#hash = createHash('sha256');
    this.#sizeBytes = 0;
  }

  async #writeWhole(handle: fsp.FileHandle, bytes: Uint8Array, limit: SizeLimit | undefined): Promise<void> {
    await this.#applyPendingReset(handle);
    if (limit && bytes.byteLength > limit.maxBytes()) throw limit.error(bytes.byteLength);
    this.#sizeBytes = bytes.byteLength;
    // Hash on the main thread while the write runs in the thread pool.
    const written = writeFully(handle, bytes, 0);
    this.#hash.update(bytes);
    await written.catch((error: unknown) => {
      throw withPath(error, this.tmpPath);
    });
  }
}

/** Size of each of the two write buffers of a streamed body: few, large writes; memory stays at 2 MiB. */
const WRITE_BUFFER_BYTES = 1024 * 1024;

/**
 * Write buffers of finished writers, for the next: a fresh 1 MiB buffer costs its allocation and a page
 * fault per 4 KiB on first touch, which at 1 MiB weighs as much as the copy itself several times over.
 * Two (one writer's pair) are kept, so a process holds at most 2 MiB for this between writes.
 */
const spareBuffers: Buffer[] = [];
const MAX_SPARE_BUFFERS = 2;

/**
 * Double-buffered writing of a streamed body: chunks are copied into one buffer while the other is being
 * written, so reading the source, hashing and writing overlap. The copy also keeps the bytes on disk equal
 * to the bytes hashed when a source reuses its chunk buffers after yielding them.
 */
/** @internal Exported for its tests only. */
export class WriteBehind {
  readonly #handle: fsp.FileHandle;
  readonly #tmpPath: string;
  readonly #buffers: (Buffer | undefined)[] = [undefined, undefined];
  #filling = 0;
  #filled = 0;
  #fileOffset = 0;
  #inFlight: Promise<void> = Promise.resolve();

  constructor(handle: fsp.FileHandle, tmpPath: string) {
    this.#handle = handle;
    this.#tmpPath = tmpPath;
  }

  async append(chunk: Uint8Array): Promise<void> {
    for (let offset = 0; offset < chunk.byteLength; ) {
      const buffer = this.#buffer();
      const length = Math.min(chunk.byteLength - offset, buffer.length - this.#filled);
      buffer.set(chunk.subarray(offset, offset + length), this.#filled);
      this.#filled += length;
      offset += length;
      if (this.#filled === buffer.length) await this.#flush();
    }
  }

  /** Writes what is buffered and waits for every write. */
  async finish(): Promise<void> {
    await this.#flush();
    await this.#inFlight;
  }

  /** Drops what is buffered and starts again at offset 0 (the caller truncates the file). */
  async reset(): Promise<void> {
    await this.#inFlight;
    this.#filled = 0;
    this.#fileOffset = 0;
  }

  /**
   * Waits for a write still running, ignoring its outcome (on error paths, before the file is closed),
   * then hands the buffers on to the next writer: no write reads them any more.
   */
  async settle(): Promise<void> {
    await this.#inFlight.catch(() => {});
    for (const [index, buffer] of this.#buffers.entries()) {
      this.#buffers[index] = undefined;
      if (buffer && spareBuffers.length < MAX_SPARE_BUFFERS) spareBuffers.push(buffer);
    }
  }

  #buffer(): Buffer {
    const existing = this.#buffers[this.#filling];
    if (existing) return existing;
    const created = spareBuffers.pop() ?? Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
    this.#buffers[this.#filling] = created;
    return created;
  }

  async #flush(): Promise<void> {
    if (this.#filled === 0) return;
    const bytes = this.#buffer().subarray(0, this.#filled);
    const position = this.#fileOffset;
    await this.#inFlight; // the other buffer's write: once done, that buffer is free to fill
    this.#inFlight = writeFully(this.#handle, bytes, position).catch((error: unknown) => {
      throw withPath(error, this.#tmpPath);
    });
    this.#inFlight.catch(() => {}); // observed by the next flush or finish; never unhandled
    this.#fileOffset += this.#filled;
    this.#filled = 0;
    this.#filling = 1 - this.#filling;
  }
}

async function writeFully(handle: fsp.FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await handle.write(chunk, offset, chunk.byteLength - offset, position + offset);
    offset += bytesWritten;
  }
}

function chunksOf(body: Body): AsyncIterator<unknown> {
  if (typeof (body as ReadableStream).getReader === 'function')
    return webStreamChunks(body as ReadableStream);
  const iterable = body as AsyncIterable<unknown>;
  if (typeof iterable[Symbol.asyncIterator] === 'function') return iterable[Symbol.asyncIterator]();
  throw new InvalidOptionsError(
    'fetchFn must return a Uint8Array, ArrayBuffer, string, Node or web stream, async iterable, ' +
      '{ body, ... } or NOT_MODIFIED',
  );
}

/**
 * A web stream's chunks. `return()` cancels the stream at once, even while a read is pending (that read
 * then ends as done); an async generator's `return()` would wait behind the pending read instead.
 */
function webStreamChunks(stream: ReadableStream): AsyncIterator<unknown> {
  const reader = stream.getReader();
  return {
    next: () => reader.read() as Promise<IteratorResult<unknown>>,
    return: async () => {
      await reader.cancel().catch(() => {});
      reader.releaseLock();
      return { done: true, value: undefined };
    },
  };
}

/** A stream of bytes must not pass this size: the first chunk beyond it fails the write with `error`. */
export interface SizeLimit {
  /** Read at every chunk: the limit may change while the body streams. */
  readonly maxBytes: () => number;
  readonly error: (receivedBytes: number) => Error;
}

/**
 * A Node stream may emit 'error' after its last chunk (with `autoDestroy: false`, say), when nobody listens
 * any more: that would crash the process after a successful publish. Its outcome is already decided.
 */
function ignoreLateErrors(body: Body): void {
  const emitter = body as { on?: unknown; pipe?: unknown };
  if (typeof emitter.on === 'function' && typeof emitter.pipe === 'function') {
    (body as NodeJS.ReadableStream).on('error', () => {});
  }
}

/**
 * Lets go of a body that will not be read (any further): destroys a Node stream, cancels an unlocked web
 * stream, returns an iterator. An HTTP response then does not hold its socket open.
 */
export function releaseBody(body: unknown): void {
  const source = body as {
    destroy?: () => void;
    cancel?: () => Promise<void>;
    return?: () => Promise<unknown>;
    locked?: boolean;
  };
  try {
    if (typeof source.destroy === 'function') source.destroy();
    else if (typeof source.cancel === 'function' && source.locked !== true) source.cancel().catch(() => {});
    else if (typeof source.return === 'function') source.return().catch(() => {});
  } catch {}
}

function toBytes(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  throw new InvalidOptionsError(`a body stream yielded a ${typeof chunk}, not bytes`);
}

/**
 * Creates `filePath` exclusively, with `modes.file` when given, and runs `fill` on it; if either fails the
 * file is closed and removed again.
 */
async function createExclusive(
  filePath: string,
  modes: CreateModes | undefined,
  fill?: (handle: fsp.FileHandle) => Promise<void>,
): Promise<fsp.FileHandle> {
  const handle = await fsp.open(filePath, EXCLUSIVE_CREATE, 0o644);
  try {
    await applyFileMode(handle, modes);
    await fill?.(handle);
    return handle;
  } catch (error) {
    await handle.close().catch(() => {});
    await removeFile(filePath).catch(() => {});
    throw error;
  }
}

/** Writes `data` into a fresh, exclusively created tmp file beside `target`, flushed and closed; returns its path. */
export async function writeTmpFile(
  target: string,
  data: string | Uint8Array,
  modes?: CreateModes,
): Promise<string> {
  const tmpPath = tmpPathFor(target);
  await createExclusive(tmpPath, modes, async (handle) => {
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
  });
  return tmpPath;
}

/** Writes a small file atomically: exclusive tmp, write, fsync, rename. The caller fsyncs the directory. */
export async function writeFileAtomic(
  target: string,
  data: string | Uint8Array,
  modes?: CreateModes,
): Promise<void> {
  const tmpPath = await writeTmpFile(target, data, modes);
  try {
    await renameWithRetry(tmpPath, target);
  } catch (error) {
    await removeFile(tmpPath).catch(() => {});
    throw error;
  }
}

/** Adds the file's path to a system error that lacks one (`write` errors such as ENOSPC name none). */
function withPath(error: unknown, filePath: string): unknown {
  const errno = error as NodeJS.ErrnoException;
  if (errno instanceof Error && errno.code && !errno.path) {
    errno.path = filePath;
    errno.message = `${errno.message} '${filePath}'`;
  }
  return error;
}

/**
 * A file's size and mtime as the server has them: open + fstat, not stat, because a network client
 * revalidates a file's attributes on open, while a path's cached attributes may be a second old or still
 * describe the file a rename replaced. `undefined` when nothing (or a symlink) is there.
 */
async function freshStats(filePath: string): Promise<Stats | undefined> {
  const handle = await fsp
    .open(filePath, constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0))
    .catch(() => undefined);
  if (!handle) return undefined;
  try {
    return await handle.stat();
  } finally {
    await handle.close().catch(() => {});
  }
}
