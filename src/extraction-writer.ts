import { createHash } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { VettedEntry } from './archive-safety.js';
import { WRITE_BUFFER_BYTES, WriteBehind } from './atomic-writer.js';
import { type CreateModes, fsyncDir } from './file-system.js';
import { forEachLimited } from './sublayer-scan.js';

/** One file an extraction wrote. */
export interface ExtractedFile {
  /** Path below the extraction directory, `/`-separated on every platform. */
  readonly path: string;
  readonly sizeBytes: number;
  /** Lower-case hex sha256 of the content, computed while it was written. */
  readonly sha256: string;
}

// O_EXCL refuses anything already at the name, a symlink included; O_NOFOLLOW says so twice where it exists.
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | (constants.O_NOFOLLOW ?? 0);
const FILE_MODE = 0o644;
const EXECUTABLE_FILE_MODE = 0o755;
const DIRECTORY_MODE = 0o755;
const EXECUTE_BITS = 0o111;
/**
 * Files whose fsync is still running. An fsync waits for the disk, so many in flight let the file system
 * merge them into few journal commits while the next files are written; the bound keeps open handles few.
 */
const MAX_PENDING_SYNCS = 32;
/** Smallest write buffer for a file: small files get one write, without a 1 MiB buffer each. */
const MIN_WRITE_BUFFER_BYTES = 64 * 1024;

/**
 * Writes the files and directories of one extraction below `root`, a directory private to the caller, and
 * nothing anywhere else: every path is made of segments the safety rules passed (no `..`, no separators),
 * every directory is created here one level at a time (so no path ever resolves through something this
 * writer did not create), and every file is created exclusively without following links. It remembers what
 * it created, so that {@link ExtractionWriter.discard} removes exactly that, without recursion.
 */
export class ExtractionWriter {
  readonly #root: string;
  readonly #modes: CreateModes | undefined;
  readonly #createdFiles: string[] = [];
  /** Parents before children, in creation order. */
  readonly #createdDirectories: string[] = [];
  readonly #syncs = new SyncQueue();

  /** `modes`: explicit modes for a group-shared cache; `undefined`: the umask decides. */
  constructor(root: string, modes?: CreateModes) {
    this.#root = path.resolve(root);
    this.#modes = modes;
  }

  /** Creates one directory whose parent this writer created already (or the root itself). */
  async makeDirectory(segments: readonly string[]): Promise<void> {
    const directoryPath = this.#pathOf(segments);
    await fsp.mkdir(directoryPath, DIRECTORY_MODE);
    this.#createdDirectories.push(directoryPath);
    if (this.#modes) await fsp.chmod(directoryPath, this.#modes.dir);
  }

  /**
   * Streams `body` into a new file at the entry's path, calling `meter` with each chunk's size before the
   * chunk is written (it throws to stop the extraction), and hashing as it goes. The file's fsync is
   * started but not awaited: {@link ExtractionWriter.finish} waits for every one.
   */
  async writeFile(
    entry: VettedEntry,
    body: AsyncIterable<Uint8Array>,
    meter: (bytes: number) => void,
  ): Promise<ExtractedFile> {
    const filePath = this.#pathOf(entry.segments);
    const handle = await fsp.open(
      filePath,
      CREATE_FLAGS,
      entry.executable ? EXECUTABLE_FILE_MODE : FILE_MODE,
    );
    this.#createdFiles.push(filePath);
    let handedOver = false;
    try {
      if (this.#modes) await handle.chmod(this.#modes.file | (entry.executable ? EXECUTE_BITS : 0));
      const hash = createHash('sha256');
      let sizeBytes = 0;
      const writes = new WriteBehind(handle, filePath, writeBufferBytes(entry.declaredBytes));
      try {
        for await (const chunk of body) {
          meter(chunk.byteLength);
          hash.update(chunk);
          sizeBytes += chunk.byteLength;
          await writes.append(chunk);
        }
        await writes.finish();
      } finally {
        await writes.settle();
      }
      handedOver = true;
      await this.#syncs.add(handle);
      return { path: entry.segments.join('/'), sizeBytes, sha256: hash.digest('hex') };
    } finally {
      if (!handedOver) await handle.close().catch(() => {});
    }
  }

  /**
   * Waits until every file written is on stable storage and closed, then fsyncs every directory created
   * and the root, so that the names survive a power loss as well as the bytes: after this resolves, a
   * rename of the root publishes a complete tree.
   */
  async finish(): Promise<void> {
    await this.#syncs.drain();
    await forEachLimited([this.#root, ...this.#createdDirectories], MAX_PENDING_SYNCS, fsyncDir);
  }

  /**
   * Removes what this writer created, files first, then directories deepest first; never recurses and
   * never throws (it runs on error paths). The root stays: it is the caller's.
   */
  async discard(): Promise<void> {
    await this.#syncs.drain().catch(() => {});
    for (const filePath of this.#createdFiles.reverse()) {
      await fsp.unlink(filePath).catch(() => {});
    }
    for (const directoryPath of this.#createdDirectories.reverse()) {
      await fsp.rmdir(directoryPath).catch(() => {});
    }
  }

  #pathOf(segments: readonly string[]): string {
    const target = path.join(this.#root, ...segments);
    // The safety rules already make this impossible; a second, independent check costs nothing.
    const relative = path.relative(this.#root, target);
    if (relative === '' || relative.startsWith('..') || path.isAbsolute(relative)) {
      throw new Error(`internal error: extraction path ${JSON.stringify(segments)} leaves ${this.#root}`);
    }
    return target;
  }
}

function writeBufferBytes(declaredBytes: number | undefined): number {
  if (declaredBytes === undefined) return WRITE_BUFFER_BYTES;
  return Math.min(WRITE_BUFFER_BYTES, Math.max(MIN_WRITE_BUFFER_BYTES, declaredBytes));
}

/** fsync-then-close of written files, a bounded number at a time; the first failure is kept for drain(). */
class SyncQueue {
  readonly #pending = new Set<Promise<void>>();
  #failure: { error: unknown } | undefined;

  /** Takes ownership of `handle`; waits only while the queue is full. */
  async add(handle: fsp.FileHandle): Promise<void> {
    const settled: Promise<void> = handle
      .sync()
      .finally(() => handle.close())
      .catch((error: unknown) => {
        this.#failure ??= { error };
      })
      .finally(() => this.#pending.delete(settled));
    this.#pending.add(settled);
    if (this.#pending.size >= MAX_PENDING_SYNCS) await Promise.race(this.#pending);
    this.#throwFailure();
  }

  async drain(): Promise<void> {
    await Promise.all(this.#pending);
    this.#throwFailure();
  }

  #throwFailure(): void {
    if (this.#failure) throw this.#failure.error;
  }
}
