import { createHash } from 'node:crypto';
import fs, { constants, createReadStream, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import { sleep } from './abort.js';
import { ForeignFileError, PayloadCacheError } from './errors.js';

/** The file-system helpers every module shares: error codes, safe removal, real directories, durable renames. */

export function errorCode(error: unknown): string {
  return (error as NodeJS.ErrnoException | undefined)?.code ?? '';
}

/**
 * Whether `error` is a system call's failure (`ENOSPC`, `EACCES`, `EIO`...): the disk's or the operating
 * system's fault, to be passed on unchanged rather than blamed on the data being read.
 */
export function isSystemCallError(error: unknown): boolean {
  const errno = error as NodeJS.ErrnoException | undefined;
  return typeof errno?.syscall === 'string' && typeof errno.code === 'string';
}

/** `lstat`, or `undefined` when nothing is there. */
export async function lstatOrUndefined(filePath: string): Promise<Stats | undefined> {
  try {
    return await fsp.lstat(filePath);
  } catch (error) {
    if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ENOTDIR') return undefined;
    throw error;
  }
}

/**
 * Reads the start of a file into `buffer` with one `read` at offset 0; resolves the bytes read. Through a
 * plain descriptor rather than a FileHandle: on the hit path (open, read, close of a manifest beside an
 * `lstat`) a FileHandle cost ~30 µs more per call here (165 against 134 µs for the pair), an object per open
 * and a promise per close. The descriptor is closed whatever happens.
 */
export function readFileStart(filePath: string, flags: number, buffer: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.open(filePath, flags, (openError, fd) => {
      if (openError) return reject(openError);
      fs.read(fd, buffer, 0, buffer.length, 0, (readError, bytesRead) => {
        fs.close(fd, () => (readError ? reject(readError) : resolve(bytesRead)));
      });
    });
  });
}

/**
 * Removes a file by its name; `false` when nothing was there. It never recurses: a directory at the name was
 * not made by the cache (whose only directories are locks, removed by the lock's own code), so it is left
 * alone and reported as a {@link ForeignFileError}. A symlink is unlinked, never followed.
 */
export async function removeFile(filePath: string): Promise<boolean> {
  try {
    await fsp.unlink(filePath);
    return true;
  } catch (error) {
    const code = errorCode(error);
    if (code === 'ENOENT') return false;
    // unlink refuses a directory with EISDIR (Linux) or EPERM (POSIX, macOS).
    if ((code === 'EISDIR' || code === 'EPERM') && (await lstatOrUndefined(filePath))?.isDirectory()) {
      throw new ForeignFileError(filePath, 'a directory');
    }
    throw error;
  }
}

/** What a file-system object is, in words, for messages about things the cache did not make. */
export function describeKind(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isSymbolicLink()) return 'a symlink';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isSocket()) return 'a socket';
  if (stats.isBlockDevice() || stats.isCharacterDevice()) return 'a device';
  return 'a file';
}

/**
 * Modes set explicitly on everything the cache creates, whatever each process's umask, so that every member
 * of a group can use a shared cache (`shared: 'group'`): directories group-writable with the setgid bit (new
 * files inherit the directory's group), files group-readable and writable. `undefined`: the umask decides.
 */
export interface CreateModes {
  readonly file: number;
  readonly dir: number;
}

export const GROUP_SHARED_MODES: CreateModes = { file: 0o664, dir: 0o2775 };

/**
 * Creates `dir` and its parents, giving the directories it creates `modes.dir`. An existing directory is
 * fine (its mode is left as it is), but not a symlink: in a shared cache directory, a planted symlink would
 * send this writer's files outside the cache root.
 */
export async function ensureRealDir(dir: string, modes?: CreateModes): Promise<void> {
  // Every miss comes here, and the directory is nearly always there: one lstat answers, where a mkdir
  // (EEXIST) would still need the lstat for the symlink check.
  const existing = await lstatOrUndefined(dir).catch(() => undefined);
  if (existing?.isDirectory()) return;
  const created: string[] = [];
  // A plain mkdir first: a recursive one reports a read-only parent as a misleading ENOENT (Node 20).
  try {
    await fsp.mkdir(dir);
    created.push(dir);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') {
      const parent = path.dirname(dir);
      const firstCreated = await fsp.mkdir(parent, { recursive: true });
      if (firstCreated !== undefined) created.push(...pathsFromTo(firstCreated, parent));
      if (await fsp.mkdir(dir).then(() => true, ignoreCode('EEXIST'))) created.push(dir);
    } else if (errorCode(error) !== 'EEXIST') throw error;
  }
  await assertRealDir(dir);
  if (modes) for (const made of created) await fsp.chmod(made, modes.dir);
}

/** `ancestor`, then each directory below it down to `descendant`. */
function pathsFromTo(ancestor: string, descendant: string): string[] {
  const paths: string[] = [];
  for (let at = descendant; at.length >= ancestor.length; at = path.dirname(at)) {
    paths.unshift(at);
    if (at === ancestor || at === path.dirname(at)) break;
  }
  return paths;
}

/** Gives a file the cache just created `modes.file` (see {@link CreateModes}). */
export async function applyFileMode(handle: fsp.FileHandle, modes: CreateModes | undefined): Promise<void> {
  if (modes) await handle.chmod(modes.file);
}

/**
 * Throws `ERR_UNSAFE_PATH` when `dir` is a symlink: the cache never writes or deletes through one, since
 * in a shared cache directory it may point anywhere (a sweep there would delete a stranger's files).
 */
export async function assertRealDir(dir: string): Promise<void> {
  if ((await fsp.lstat(dir)).isSymbolicLink()) {
    throw new PayloadCacheError('ERR_UNSAFE_PATH', `refusing to work through a symlink: ${dir}`);
  }
}

/** `false` for a missing directory; rejects with ERR_UNSAFE_PATH for a symlink. */
export async function isRealDir(dir: string): Promise<boolean> {
  return assertRealDir(dir).then(
    () => true,
    (error: unknown) => {
      if (errorCode(error) === 'ENOENT') return false;
      throw error;
    },
  );
}

function ignoreCode(code: string) {
  return (error: unknown) => {
    if (errorCode(error) !== code) throw error;
  };
}

// Windows: antivirus and indexers hold a freshly written file for a moment; rename then fails briefly.
const TRANSIENT_RENAME_CODES = new Set(['EPERM', 'EBUSY', 'EACCES']);
// SMB (and other network file systems) refuse a rename while either file is open on some client: EBUSY
// for the source, EEXIST for the target. A local rename of a file never fails so, so retrying costs nothing.
const NETWORK_BUSY_RENAME_CODES = new Set(['EBUSY', 'EEXIST']);
const BUSY_RENAME_CODES = process.platform === 'win32' ? TRANSIENT_RENAME_CODES : NETWORK_BUSY_RENAME_CODES;
const RENAME_RETRY_BUDGET_MS = 3_000;

/** Whether a rename failed because a file was held open (on this platform), not for lack of permission. */
export function isBusyRenameError(error: unknown): boolean {
  return BUSY_RENAME_CODES.has(errorCode(error));
}

export interface RenameRetryOptions {
  rename?: (from: string, to: string) => Promise<void>;
  /** Error codes worth retrying; by default the Windows sharing-violation codes on Windows, EBUSY and EEXIST elsewhere. */
  retryCodes?: ReadonlySet<string>;
  budgetMs?: number;
}

/** `rename`, retried with backoff for a bounded time while another process holds one of the files open. */
export async function renameWithRetry(
  from: string,
  to: string,
  options: RenameRetryOptions = {},
): Promise<void> {
  const rename = options.rename ?? fsp.rename;
  const retryCodes = options.retryCodes ?? BUSY_RENAME_CODES;
  const deadline = Date.now() + (options.budgetMs ?? RENAME_RETRY_BUDGET_MS);
  for (let delayMs = 10; ; delayMs = Math.min(delayMs * 2, 250)) {
    try {
      return await rename(from, to);
    } catch (error) {
      if (!retryCodes.has(errorCode(error)) || Date.now() + delayMs > deadline) throw error;
      await sleep(delayMs);
    }
  }
}

// File systems that cannot fsync a directory (Windows, some FUSE mounts) say so with one of these.
const DIR_FSYNC_UNSUPPORTED = new Set(['EISDIR', 'EINVAL', 'ENOTSUP', 'EPERM', 'EBADF', 'EACCES', 'ENOSYS']);

/** Makes renames in `dir` durable: without it a crash can lose an entry that was already returned. */
export async function fsyncDir(dir: string): Promise<void> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(dir, constants.O_RDONLY);
    await handle.sync();
  } catch (error) {
    if (!DIR_FSYNC_UNSUPPORTED.has(errorCode(error))) throw error;
  } finally {
    await handle?.close().catch(() => {});
  }
}

/** The sha256 of a file's bytes, read whole. */
export async function sha256OfFile(filePath: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(filePath)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Whether the file holds exactly the bytes of `sha256`; `false` when it cannot be read or none is known. */
export async function fileHasSha256(filePath: string, sha256: string | undefined): Promise<boolean> {
  if (sha256 === undefined) return false;
  return (await sha256OfFile(filePath).catch(() => undefined)) === sha256;
}
