import type { ArchiveFormat, LinkPolicy } from './archive-safety.js';
import type { Manifest } from './manifest.js';

/** Answer of a fetcher meaning "the previous entry is still current": the entry is renewed, not re-downloaded. */
export const NOT_MODIFIED: unique symbol = Symbol.for('payload-cache.NOT_MODIFIED');

/** Bytes a fetcher can hand over. Streams are consumed chunk by chunk, in constant memory. */
export type Body =
  | Uint8Array
  | ArrayBuffer
  | string
  | NodeJS.ReadableStream
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array>;

/** A body with what the fetcher knows about it; `expectedSize` and `sha256` are checked before publishing. */
export interface FetchedBody {
  /** The payload bytes, consumed once. */
  body: Body;
  /** Stored in the manifest, offered back in `ctx.previous` for conditional requests. */
  etag?: string;
  /** Stored in the manifest, offered back in `ctx.previous` for conditional requests. */
  lastModified?: string;
  /** Exact byte count; a shorter body is `truncated`, a longer one a `size-mismatch`. */
  expectedSize?: number;
  /** Expected sha256 as 64 hex digits; a different digest is a `hash-mismatch`. */
  sha256?: string;
}

/**
 * What a fetcher answers: the bytes, the bytes with their facts, or {@link NOT_MODIFIED} (only when
 * `ctx.previous` exists; otherwise it is an `InvalidOptionsError`).
 */
export type FetchResult = Body | FetchedBody | typeof NOT_MODIFIED;

/** What `getOrFetch` passes to the fetcher on a miss, an expiry or a refresh. */
export interface FetchContext {
  /** The key being fetched. */
  readonly key: string;
  /** Aborts when every caller joined to this fetch has aborted; pass it to your HTTP client. */
  readonly signal: AbortSignal;
  /** The expired (or refreshed) entry, for conditional requests (`If-None-Match`, `If-Modified-Since`). */
  readonly previous?: {
    /** The payload of the expired (or refreshed) entry. */
    readonly path: string;
    /** Its manifest: `etag` and `last_modified` are the validators for a conditional request. */
    readonly manifest: Manifest;
  };
  /** Discards the body bytes received so far: the next chunk is byte 0 again (for restarted downloads). */
  resetBody(): void;
}

/**
 * Produces the bytes for a key on a miss. Any function will do; {@link httpFetcher} builds one for a URL.
 * Its errors propagate to the caller unchanged.
 */
export type FetchFn = (ctx: FetchContext) => FetchResult | Promise<FetchResult>;

/** What a validator sees: the complete downloaded payload, still in its private tmp file. */
export interface PayloadInfo {
  /** The key being fetched. */
  readonly key: string;
  /** The tmp file; valid only while the validator runs. */
  readonly path: string;
  /** Exact size of the payload, in bytes. */
  readonly sizeBytes: number;
  /** The payload's sha256, lower-case hex, as computed while it was written. */
  readonly sha256: string;
  /** Aborts when every caller waiting for this payload has aborted: a long validation should stop then. */
  readonly signal: AbortSignal;
  /** Reads the whole payload into memory: convenient for small payloads only. */
  bytes(): Promise<Buffer>;
}

/**
 * Per-call options of `getOrFetch`. A caller that joins a fetch already running in its process shares that
 * fetch, including the first caller's fetcher and `validator`.
 */
export interface GetOrFetchOptions {
  /** Runs on the tmp file before publication; throw (or reject) to refuse the bytes. */
  validator?: (payload: PayloadInfo) => void | Promise<void>;
  /**
   * This caller rejects with `signal.reason` at once; the fetch itself stops (and its tmp file is removed)
   * only when every joined caller has aborted.
   */
  signal?: AbortSignal;
  /** Fetch even if a fresh entry exists (the fetcher still gets `previous`). */
  refresh?: boolean;
  /**
   * When producing a new entry fails (fetcher error, refused payload, lock timeout) and an expired entry
   * exists, return its path instead of the error. Invalid input and aborts still reject.
   */
  staleIfError?: boolean;
}

/**
 * `getOrExtract` options: those of `getOrFetch`, plus the archive's format and the extraction's limits.
 * The validator runs on the archive's tmp file, before it is extracted.
 */
export interface GetOrExtractOptions extends GetOrFetchOptions {
  /** `zip`, `tar`, `tar.gz` or `gzip` (one compressed file); detected from the archive's bytes when not given. */
  format?: ArchiveFormat;
  /** Most entries the archive may list; default 100,000. */
  maxEntries?: number;
  /** Most bytes of extracted content, all files together; default 64 GiB. */
  maxExtractedBytes?: number;
  /** Most bytes of extracted content per byte of archive, over the whole archive; default 200. */
  maxCompressionRatio?: number;
  /**
   * `'inside'`: extract symbolic links whose target, once every entry is in place, resolves inside the
   * extraction, and hard links to a file extracted before them. Default `'none'`: any link refuses the
   * archive (`ArchiveUnsafeError`).
   */
  allowLinks?: LinkPolicy;
}

/** One committed entry, as `list()` reports it. */
export interface EntryInfo {
  /** The entry's key. */
  key: string;
  /** Absolute path of the payload. */
  path: string;
  /** Payload size, in bytes. */
  sizeBytes: number;
  /** When the entry was published or last renewed (the manifest's `created_at`); freshness counts from it. */
  createdAt: Date;
  /** Last recorded use (the payload's mtime); a hit updates it at most once per `touchIntervalMs`. */
  lastUsedAt: Date;
  /** Whether the entry is past its `ttl` (or its `created_at` is beyond `maxClockSkewMs` in the future). */
  expired: boolean;
  /** The payload's sha256 from the manifest; absent when the manifest has none (imf_reader manifests). */
  sha256?: string;
  /** The cache root the entry is in: the manager's own, or one of its `readOnlyRoots`. */
  root: string;
  /** Whether that root is one of the manager's read-only roots (never touched, evicted or removed by it). */
  readOnly: boolean;
  /** The archive's extractions made by `getOrExtract`, when it has any: the current one and older ones. */
  extractions?: ExtractionInfo[];
}

/** One extraction of an entry's archive, as `list()` reports it. */
export interface ExtractionInfo {
  /** Absolute path of the directory holding the extracted files (what `getOrExtract` returned). */
  path: string;
  /** The sha256 of the archive it was extracted from. */
  archiveSha256: string;
  /** Whether it is the extraction of the archive now in the entry (older ones go once out of use). */
  current: boolean;
  /** Files extracted (directories not counted). */
  fileCount: number;
  /** Bytes of extracted content. */
  sizeBytes: number;
  /** When it was extracted (its marker's `created_at`). */
  createdAt: Date;
  /** Last recorded use (its marker's mtime). */
  lastUsedAt: Date;
}

/** Why a file was removed, or found bad, by `prune()`, `clear()` or `verify()`. */
export type RemovalReason =
  | 'expired'
  | 'evicted'
  | 'orphan-tmp'
  | 'orphan-payload'
  | 'orphan-manifest'
  | 'stale-lock'
  | 'size-mismatch'
  | 'hash-mismatch'
  | 'wrong-key'
  | 'cleared'
  | 'superseded'
  | 'orphan-extraction';

/** One file or directory that `prune()`, `clear()` or `verify()` removed or found bad. */
export interface ReportItem {
  /** The entry's key, when the file belongs to one. */
  key?: string;
  /** Absolute path of the file or directory. */
  path: string;
  /** Why it was removed or found bad. */
  reason: RemovalReason;
}

/**
 * Why something in a sublayer is "foreign": the cache cannot prove it wrote it, so no janitor deletes it.
 * - `unknown-name`: a name the cache never gives a file (`notes.txt.bak~` is fine as a key, `.hidden` is not).
 * - `not-a-regular-file`: a directory, symlink, FIFO or device where the cache keeps regular files
 *   (payload, manifest, tmp file), or something other than a directory at a lock's name.
 * - `unproven-payload`: a file named like a payload with no manifest and no record the cache left for it.
 * - `invalid-manifest`: a file named like a manifest that is not a payload-cache manifest.
 * - `foreign-lock`: a directory named like a lock that holds files the cache never puts there.
 * - `unproven-extraction`: a directory named like an archive's extraction without the marker, naming its
 *   key and archive, that the cache writes into every extraction.
 */
export type ForeignReason =
  | 'unknown-name'
  | 'not-a-regular-file'
  | 'unproven-payload'
  | 'invalid-manifest'
  | 'foreign-lock'
  | 'unproven-extraction';

/** Something in a sublayer the cache did not write: reported, never deleted. */
export interface ForeignItem {
  /** Absolute path. */
  path: string;
  /** Why the cache does not count it as its own. */
  reason: ForeignReason;
}

/** An entry a janitor left in place, and why. */
export interface KeptItem {
  /** The entry's key. */
  key: string;
  /**
   * `locked`: someone else holds its lock; `recently-used`: used within `touchIntervalMs +
   * evictionGraceMs`; `just-written`: the key whose write triggered the eviction; `changed`: it is no longer
   * what the plan saw (republished, renewed, used or replaced since), so the plan no longer covers it.
   */
  reason: 'locked' | 'recently-used' | 'just-written' | 'changed';
}

/** One removal a plan ({@link JanitorPlan}) will carry out if the file is still as it was seen. */
export interface PlannedRemoval {
  /** The entry's key, when the file belongs to one. */
  key?: string;
  /** Absolute path of the payload (for entries) or of the file or directory itself. */
  path: string;
  /** Why it goes. */
  reason: RemovalReason;
  /** Payload bytes that go with it (0 for tmp files, manifests and locks). */
  sizeBytes: number;
  /** For entries: their last recorded use. */
  lastUsedAt?: Date;
}

/**
 * What `planPrune()` or `planClear()` found: what would go, what stays and why, and what is foreign.
 * Nothing was changed to make it. `carryOut(plan)` removes exactly these items and nothing else, each only
 * if it is still as it was seen.
 */
export interface JanitorPlan {
  /** The sublayer directory the plan was made for. */
  readonly dir: string;
  readonly remove: readonly PlannedRemoval[];
  readonly kept: readonly KeptItem[];
  readonly foreign: readonly ForeignItem[];
}

/** What `prune()`, `clear()` or `carryOut()` did. */
export interface PruneReport {
  /** Files and directories removed, each with its reason. */
  removed: ReportItem[];
  /** Entries left in place although expired, over `keepN`/`maxBytes` or planned: in use, locked or changed. */
  kept: KeptItem[];
  /** What the cache did not write; left untouched. */
  foreign: ForeignItem[];
}

/** What `verify()` found and, with `fix: true`, removed. */
export interface VerifyReport {
  /**
   * Entries that passed (the payload has the manifest's size and, when the manifest has one, its sha256),
   * and extractions that passed (every listed file has its recorded size and sha256).
   */
  checked: number;
  /** Entries (and orphans) found bad. */
  bad: ReportItem[];
  /** What `fix: true` removed; empty without it. */
  removed: ReportItem[];
  /** What the cache did not write; reported, never removed. */
  foreign: ForeignItem[];
}
