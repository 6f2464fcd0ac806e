/**
 * Every error this library raises on purpose extends {@link PayloadCacheError} and carries a stable
 * `code`, so callers can branch on `err.code` without parsing messages. A fetcher's own errors and
 * file-system errors (`ENOSPC`, `EACCES`...) propagate unchanged.
 */
export class PayloadCacheError extends Error {
  /** Stable identifier of the failure (`ERR_PAYLOAD_CORRUPT`, `ERR_UNSAFE_PATH`...); branch on it. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Why a downloaded payload was refused. */
export type CorruptReason = 'validator-rejected' | 'size-mismatch' | 'hash-mismatch' | 'truncated';

/**
 * The bytes produced by a fetcher were refused before publication: the validator threw, the size or
 * sha256 differs from what the fetcher promised, or the body ended early. Nothing was published and the
 * previous entry is intact.
 */
export class BulkPayloadCorruptError extends PayloadCacheError {
  /** The key whose payload was refused. */
  readonly key: string;
  /** Which check refused it; for `validator-rejected` the validator's error is the `cause`. */
  readonly reason: CorruptReason;

  constructor(key: string, reason: CorruptReason, detail: string, options?: { cause?: unknown }) {
    super('ERR_PAYLOAD_CORRUPT', `payload for key "${key}" refused (${reason}): ${detail}`, options);
    this.key = key;
    this.reason = reason;
  }
}

/** A key or sublayer breaks one of the naming rules; `rule` names which. Raised before any I/O. */
export class InvalidKeyError extends PayloadCacheError {
  /** The refused key or sublayer, as given (possibly not a string). */
  readonly key: unknown;
  /** The naming rule it breaks, in words. */
  readonly rule: string;

  constructor(what: 'key' | 'sublayer', key: unknown, rule: string) {
    super('ERR_INVALID_KEY', `invalid ${what} ${describe(key)}: ${rule}`);
    this.key = key;
    this.rule = rule;
  }
}

/** Another writer held the key's lock for longer than `lockTimeoutMs`. */
export class LockTimeoutError extends PayloadCacheError {
  /** The key whose lock was not acquired. */
  readonly key: string;
  /** How long this caller waited, in milliseconds. */
  readonly waitedMs: number;
  /** `host/pid` of the lock's holder, or `undefined` when its owner file could not be read. */
  readonly holder: string | undefined;

  constructor(key: string, waitedMs: number, holder: string | undefined) {
    const heldBy = holder ? `, held by ${holder}` : '';
    super('ERR_LOCK_TIMEOUT', `gave up waiting for the lock of key "${key}" after ${waitedMs} ms${heldBy}`);
    this.key = key;
    this.waitedMs = waitedMs;
    this.holder = holder;
  }
}

/** An option, argument or fetcher answer is not usable (including `NOT_MODIFIED` with no previous entry). */
export class InvalidOptionsError extends PayloadCacheError {
  constructor(message: string) {
    super('ERR_INVALID_OPTIONS', message);
  }
}

/**
 * Something the cache did not write stands at one of its names (a directory where a payload, manifest or
 * lock belongs, a FIFO, a lock directory holding files of someone else's). The cache never deletes what it
 * cannot prove it wrote, so the operation stops here and the object is left as it is: remove it yourself.
 */
export class ForeignFileError extends PayloadCacheError {
  /** Absolute path of the object in the way. */
  readonly path: string;

  constructor(filePath: string, what: string) {
    super(
      'ERR_FOREIGN_FILE',
      `${what} that payload-cache did not create is in the way at ${filePath}; it was left untouched ` +
        '(remove or rename it yourself)',
    );
    this.path = filePath;
  }
}

/**
 * A payload could not be replaced because another process held it (or the new file) open for longer than
 * the rename retries last: Windows and SMB refuse to rename over an open file. The previous entry is kept;
 * try again once the reader is done.
 */
export class FileBusyError extends PayloadCacheError {
  /** The file that could not be replaced. */
  readonly path: string;

  constructor(filePath: string, options?: { cause?: unknown }) {
    super(
      'ERR_FILE_BUSY',
      `could not replace ${filePath}: another process holds it open; the previous entry is kept`,
      options,
    );
    this.path = filePath;
  }
}

/**
 * `prune()`, `clear()` and `verify({ fix: true })` act only on a cache root that carries payload-cache's
 * own `CACHEDIR.TAG` (written by the first write into that root), so that pointing them at the wrong
 * directory cannot delete anything there.
 */
export class NotCacheRootError extends PayloadCacheError {
  /** The directory that has no payload-cache marker. */
  readonly root: string;

  constructor(root: string) {
    super(
      'ERR_NOT_CACHE_ROOT',
      `${root} is not a payload-cache root (it has no CACHEDIR.TAG written by payload-cache); ` +
        'refusing to delete anything there',
    );
    this.root = root;
  }
}

function describe(value: unknown): string {
  if (typeof value !== 'string') return `(${value === null ? 'null' : typeof value})`;
  const shown = value.length > 60 ? `${value.slice(0, 60)}...` : value;
  return JSON.stringify(shown);
}

/**
 * A miss in offline mode (`offline: true` or `PAYLOAD_CACHE_OFFLINE=1`): no entry for the key, fresh or
 * expired, in the cache root or any read-only root, and offline mode never calls the fetcher.
 */
export class OfflineMissError extends PayloadCacheError {
  /** The key that was asked for. */
  readonly key: string;
  /** The sublayer it was looked up in. */
  readonly sublayer: string;
  /** Every cache root searched, the manager's own first, then its read-only roots in order. */
  readonly roots: readonly string[];

  constructor(key: string, sublayer: string, roots: readonly string[]) {
    super(
      'ERR_OFFLINE_MISS',
      `offline: no entry for key "${key}" in sublayer "${sublayer}" (searched ${roots.join(', ')}); ` +
        'offline mode never downloads',
    );
    this.key = key;
    this.sublayer = sublayer;
    this.roots = roots;
  }
}

/**
 * A miss in a cache root this process may read but not write (another user's cache, a read-only mount):
 * hits are still served, but nothing can be fetched into it. Give the manager a writable `root` of its own
 * and the shared one as a read-only root (`readOnlyRoots`) to fetch misses there instead.
 */
export class CacheReadOnlyError extends PayloadCacheError {
  /** The cache root that could not be written. */
  readonly root: string;
  /** The path whose creation failed. */
  readonly path: string;

  constructor(root: string, filePath: string, cause: unknown) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code ?? 'an error';
    super(
      'ERR_CACHE_READ_ONLY',
      `the cache root ${root} is read-only for this process (${code} creating ${filePath}): ` +
        'hits are served, misses cannot be fetched into it',
      { cause },
    );
    this.root = root;
    this.path = filePath;
  }
}

/**
 * Why an archive was refused as hostile. Each names one rule of the extraction core (see
 * `src/archive-safety.ts` and the README's "Archives" section).
 */
export type ArchiveUnsafeReason =
  | 'absolute-path'
  | 'parent-segment'
  | 'backslash'
  | 'unportable-name'
  | 'symlink'
  | 'hard-link'
  | 'special-file'
  | 'setuid-setgid'
  | 'duplicate-name'
  | 'case-collision'
  | 'file-directory-conflict'
  | 'too-many-entries'
  | 'too-many-bytes'
  | 'compression-ratio';

/**
 * An archive breaks one of the extraction's safety rules (a name that would land outside the extraction, a
 * link, a device, a limit passed...). The whole archive is refused: nothing of it is ever visible, and
 * nothing was written outside the extraction's private tmp directory.
 */
export class ArchiveUnsafeError extends PayloadCacheError {
  /** Which rule the archive breaks. */
  readonly reason: ArchiveUnsafeReason;
  /** The offending entry's name as the archive spells it; `undefined` for limits on the archive as a whole. */
  readonly entryName: string | undefined;

  constructor(reason: ArchiveUnsafeReason, entryName: string | undefined, detail: string) {
    const entry = entryName === undefined ? '' : ` in entry ${describe(entryName)}`;
    super('ERR_ARCHIVE_UNSAFE', `archive refused (${reason})${entry}: ${detail}`);
    this.reason = reason;
    this.entryName = entryName;
  }
}

/** Why an archive could not be read: not a known format, damaged, or using a feature the extractor lacks. */
export type ArchiveInvalidReason = 'unknown-format' | 'corrupt' | 'unsupported';

/**
 * An archive could not be extracted because it is not one: its bytes are not a zip, tar, tar.gz or gzip
 * file, they are damaged (a bad checksum, a truncated stream), or they use a feature the extractor does not
 * read (an encrypted entry, a compression method other than stored or deflate). The reading library's
 * error, if any, is the `cause`. Nothing of the archive is visible.
 */
export class ArchiveInvalidError extends PayloadCacheError {
  /** What is wrong with the archive. */
  readonly reason: ArchiveInvalidReason;
  /** The entry being read when it failed, as the archive spells it; `undefined` for the archive as a whole. */
  readonly entryName: string | undefined;

  constructor(
    reason: ArchiveInvalidReason,
    entryName: string | undefined,
    detail: string,
    options?: { cause?: unknown },
  ) {
    const entry = entryName === undefined ? '' : ` in entry ${describe(entryName)}`;
    super('ERR_ARCHIVE_INVALID', `archive not extracted (${reason})${entry}: ${detail}`, options);
    this.reason = reason;
    this.entryName = entryName;
  }
}
