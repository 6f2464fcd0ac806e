import diagnosticsChannel from 'node:diagnostics_channel';
import { debuglog } from 'node:util';
import type { ReportItem } from './types.js';

/**
 * `node:diagnostics_channel` channels, one per event. Each message names the manager's `sublayer` and the
 * `key`; the rest is listed per channel in the README. Publishing costs nothing without subscribers.
 */
export const channels = {
  hit: diagnosticsChannel.channel('payload-cache:hit'),
  miss: diagnosticsChannel.channel('payload-cache:miss'),
  fetchStart: diagnosticsChannel.channel('payload-cache:fetch:start'),
  fetchEnd: diagnosticsChannel.channel('payload-cache:fetch:end'),
  evict: diagnosticsChannel.channel('payload-cache:evict'),
  evictError: diagnosticsChannel.channel('payload-cache:evict:error'),
  lockWait: diagnosticsChannel.channel('payload-cache:lock:wait'),
  stale: diagnosticsChannel.channel('payload-cache:stale'),
  extract: diagnosticsChannel.channel('payload-cache:extract'),
};

/** `NODE_DEBUG=payload-cache` turns these lines on. */
export const debug = debuglog('payload-cache');

/** Counters of one manager since it was created (`cache.stats()`). */
export interface CacheStats {
  /** Paths served from an entry already on disk by `getOrFetch` or `get` (`staleIfError` ones included). */
  hits: number;
  /** `getOrFetch` lookups that found no fresh entry (absent or expired) or were asked to `refresh`. */
  misses: number;
  /** Calls of a fetcher (a `NOT_MODIFIED` answer included). */
  fetches: number;
  /** Payload bytes published. */
  bytesWritten: number;
  /**
   * Entries removed to stay within `keepN`/`maxBytes`: by `prune()`, and by the background pass that
   * follows writes, counted once that pass has finished.
   */
  evictions: number;
  /** Expired entries served by `staleIfError`. */
  staleServed: number;
  /** Expired entries served in offline mode (which never fetches a fresh one). */
  staleServedOffline: number;
  /** Lock acquisitions that had to wait for another holder, and the time spent waiting. */
  lockWaits: {
    /** Lock acquisitions that found the lock held by someone else. */
    count: number;
    /** Total time those acquisitions waited, in milliseconds. */
    totalMs: number;
  };
  /** Failed `getOrFetch` calls by error code (`ERR_PAYLOAD_CORRUPT`, `ENOSPC`, `AbortError`...). */
  errors: Record<string, number>;
}

/** `not-extracted`: `getOrExtract` found the archive fresh, but no extraction of it. */
export type MissReason = 'absent' | 'expired' | 'refresh' | 'not-extracted';

/** Counts, publishes and debug-logs what one manager does; every method is cheap when nobody listens. */
export class Observer {
  readonly #sublayer: string;
  readonly #stats: CacheStats = {
    hits: 0,
    misses: 0,
    fetches: 0,
    bytesWritten: 0,
    evictions: 0,
    staleServed: 0,
    staleServedOffline: 0,
    lockWaits: { count: 0, totalMs: 0 },
    errors: {},
  };

  constructor(sublayer: string) {
    this.#sublayer = sublayer;
  }

  snapshot(): CacheStats {
    return structuredClone(this.#stats);
  }

  hit(key: string, path: string): void {
    this.#stats.hits += 1;
    this.#emit(channels.hit, 'hit', { key, path });
  }

  miss(key: string, reason: MissReason): void {
    this.#stats.misses += 1;
    this.#emit(channels.miss, 'miss', { key, reason });
  }

  fetchStarted(key: string, conditional: boolean): void {
    this.#stats.fetches += 1;
    this.#emit(channels.fetchStart, 'fetch:start', { key, conditional });
  }

  fetchEnded(
    key: string,
    outcome: 'written' | 'not-modified' | 'failed',
    durationMs: number,
    details: { sizeBytes?: number; error?: unknown } = {},
  ): void {
    if (outcome === 'written') this.#stats.bytesWritten += details.sizeBytes ?? 0;
    this.#emit(channels.fetchEnd, 'fetch:end', { key, outcome, durationMs, ...details });
  }

  evicted(removed: ReportItem[]): void {
    for (const item of removed) {
      this.#stats.evictions += 1;
      this.#emit(channels.evict, 'evict', { key: item.key, path: item.path, reason: item.reason });
    }
  }

  /**
   * A background eviction pass failed (it has no caller to throw at): `key` is the write that asked for
   * it, the latest when several writes share one pass; `dir` the sublayer directory it worked on.
   */
  evictionFailed(key: string, dir: string, error: unknown): void {
    this.#emit(channels.evictError, 'evict:error', { key, dir, error });
  }

  lockWaited(key: string, waitedMs: number): void {
    if (waitedMs <= 0) return;
    this.#stats.lockWaits.count += 1;
    this.#stats.lockWaits.totalMs += waitedMs;
    this.#emit(channels.lockWait, 'lock:wait', { key, waitedMs });
  }

  stillWaiting(key: string, waitedMs: number, holder: string | undefined): void {
    debug(
      'still waiting for %s/%s after %d ms, held by %s',
      this.#sublayer,
      key,
      waitedMs,
      holder ?? 'unknown',
    );
  }

  staleServed(key: string, path: string, error: unknown): void {
    this.#stats.staleServed += 1;
    this.#emit(channels.stale, 'stale', { key, path, error });
  }

  staleServedOffline(key: string, path: string): void {
    this.#stats.staleServedOffline += 1;
    this.#emit(channels.stale, 'stale', { key, path, offline: true });
  }

  /**
   * An extraction ended: `published` (this call made it), `already-published` (another writer's, same
   * archive, was there first) or `failed`.
   */
  extracted(
    key: string,
    path: string,
    outcome: 'published' | 'already-published' | 'failed',
    durationMs: number,
    details: { error?: unknown } = {},
  ): void {
    this.#emit(channels.extract, 'extract', { key, path, outcome, durationMs, ...details });
  }

  failed(error: unknown): void {
    const code = errorLabel(error);
    this.#stats.errors[code] = (this.#stats.errors[code] ?? 0) + 1;
  }

  #emit(channel: diagnosticsChannel.Channel, event: string, message: Record<string, unknown>): void {
    if (channel.hasSubscribers) channel.publish({ sublayer: this.#sublayer, ...message });
    if (debug.enabled) debug('%s %s/%s %o', event, this.#sublayer, message.key, message);
  }
}

function errorLabel(error: unknown): string {
  if (error && typeof error === 'object') {
    const { code, name } = error as { code?: unknown; name?: unknown };
    if (typeof code === 'string' && code) return code;
    if (typeof name === 'string' && name) return name;
  }
  return 'unknown';
}
