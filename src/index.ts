export type { ArchiveFormat } from './archive-safety.js';
export { CacheManager } from './cache-manager.js';
export { getCacheDir, resetCacheDir, setCacheDir } from './cache-root.js';
export {
  ArchiveInvalidError,
  type ArchiveInvalidReason,
  ArchiveUnsafeError,
  type ArchiveUnsafeReason,
  BulkPayloadCorruptError,
  CacheReadOnlyError,
  type CorruptReason,
  FileBusyError,
  ForeignFileError,
  InvalidKeyError,
  InvalidOptionsError,
  LockTimeoutError,
  NotCacheRootError,
  OfflineMissError,
  PayloadCacheError,
} from './errors.js';
export { HttpStatusError, type MirrorFailure, MirrorsFailedError, ProxyError } from './http-errors.js';
export { type HttpFetcherOptions, type HttpProgress, httpFetcher } from './http-fetcher.js';
export type { Manifest } from './manifest.js';
export type { HttpMirror, HttpSource } from './mirrors.js';
export type { CacheStats } from './observability.js';
export type { CacheManagerOptions } from './options.js';
export {
  type Body,
  type EntryInfo,
  type ExtractionInfo,
  type FetchContext,
  type FetchedBody,
  type FetchFn,
  type FetchResult,
  type ForeignItem,
  type ForeignReason,
  type GetOrExtractOptions,
  type GetOrFetchOptions,
  type JanitorPlan,
  type KeptItem,
  NOT_MODIFIED,
  type PayloadInfo,
  type PlannedRemoval,
  type PruneReport,
  type RemovalReason,
  type ReportItem,
  type VerifyReport,
} from './types.js';
