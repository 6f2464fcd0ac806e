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

export type FetchResult = Body | FetchedBody | typeof NOT_MODIFIED;

export interface FetchContext {
  readonly key: string;
  /** Aborts when every caller joined to this fetch has aborted. */
  readonly signal: AbortSignal;
  /** The expired (or refreshed) entry, for conditional requests (`If-None-Match`, `If-Modified-Since`). */
  readonly previous?: { readonly path: string; readonly manifest: Manifest };
  /** Discards the body bytes received so far: the next chunk is byte 0 again (for restarted downloads). */
  resetBody(): void;
}

export type FetchFn = (ctx: FetchContext) => FetchResult | Promise<FetchResult>;

/** What a validator sees: the complete downloaded payload, still in its private tmp file. */
export interface PayloadInfo {
  readonly key: string;
  /** The tmp file; valid only while the validator runs. */
  readonly path: string;
  readonly sizeBytes: number;
  readonly sha256: string;
  /** Reads the whole payload into memory: convenient for small payloads only. */
  bytes(): Promise<Buffer>;
}

export interface GetOrFetchOptions {
  /** Runs on the tmp file before publication; throw (or reject) to refuse the bytes. */
  validator?: (payload: PayloadInfo) => void | Promise<void>;
  /** Aborts this caller's wait; the fetch itself stops when every joined caller has aborted. */
  signal?: AbortSignal;
  /** Fetch even if a fresh entry exists (the fetcher still gets `previous`). */
  refresh?: boolean;
  /** When producing a new entry fails (fetcher error, corrupt payload, lock timeout), serve an expired one. */
  staleIfError?: boolean;
}

export interface EntryInfo {
  key: string;
  path: string;
  sizeBytes: number;
  createdAt: Date;
  lastUsedAt: Date;
  expired: boolean;
  sha256?: string;
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
  | 'cleared';

export interface ReportItem {
  /** The entry's key, when the file belongs to one. */
  key?: string;
  path: string;
  reason: RemovalReason;
}

export interface PruneReport {
  /** Files and directories removed, each with its reason. */
  removed: ReportItem[];
  /** Entries left although they are over `keepN`/`maxBytes`, because they are in use or locked. */
  kept: { key: string; reason: 'locked' | 'recently-used' | 'just-written' }[];
}

export interface VerifyReport {
  /** Entries whose payload was re-hashed and matched. */
  checked: number;
  /** Entries (and orphans) found bad. */
  bad: ReportItem[];
  /** What `fix: true` removed; empty without it. */
  removed: ReportItem[];
}
