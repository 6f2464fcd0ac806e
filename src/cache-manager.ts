import path from 'node:path';
import { raceAbort } from './abort.js';
import { PayloadWriter } from './atomic-writer.js';
import { resolveRoot } from './cache-root.js';
import { crashPoint } from './crash-points.js';
import { type EntryPaths, entryPaths, sublayerDir, validateKey } from './entry-paths.js';
import {
  commitEntry,
  type EntryState,
  isCacheRoot,
  lookupEntry,
  type PendingManifest,
  removeEntry,
  renewEntry,
  retireManifest,
  sealEntry,
  touchEntry,
  writeCacheDirTag,
} from './entry-store.js';
import {
  CacheReadOnlyError,
  InvalidKeyError,
  InvalidOptionsError,
  NotCacheRootError,
  OfflineMissError,
} from './errors.js';
import { type EvictionRequester, requestEviction } from './eviction-pass.js';
import { evict } from './evictor.js';
import { ExtractionFlow } from './extraction-flow.js';
import type { PreparedExtraction } from './extraction-store.js';
import { asFetchedBody, checkIntegrity, oversizeGuard, releaseResult, runValidator } from './fetch-result.js';
import { ensureRealDir, errorCode, isRealDir, removeFile } from './file-system.js';
import { FlightTable } from './flight.js';
import { carryOut, planClear, planPrune, planSweep, type SublayerPolicy, verifySublayer } from './janitor.js';
import { findInLayers, type Layer, type LayeredEntry, layersOf } from './layers.js';
import type { Freshness } from './manifest.js';
import { type CacheStats, Observer } from './observability.js';
import {
  type CacheManagerOptions,
  type ExtractionRequest,
  isOffline,
  readOnlyRootsOf,
  resolveSettings,
  type Settings,
  validateExtractArgs,
  validateFetchArgs,
} from './options.js';
import { tryLock, waitForLock } from './soft-lock.js';
import { listEntries } from './sublayer-scan.js';
import {
  type EntryInfo,
  type FetchContext,
  type FetchedBody,
  type FetchFn,
  type FetchResult,
  type GetOrExtractOptions,
  type GetOrFetchOptions,
  type JanitorPlan,
  NOT_MODIFIED,
  type PruneReport,
  type VerifyReport,
} from './types.js';

const flights = new FlightTable<string>();
// getOrExtract's flights are apart from getOrFetch's: a caller joining one gets what that flight returns.
const EXTRACTION_FLIGHT_SUFFIX = '\u0000extract';

/** What a call returns for a fresh entry: the payload (getOrFetch), or the directory of its extraction. */
type Delivery =
  | { readonly kind: 'payload' }
  | { readonly kind: 'extraction'; readonly request: ExtractionRequest };
const PAYLOAD: Delivery = { kind: 'payload' };

const taggedRoots = new Set<string>();

/** Settles when the background orphan sweep started by a manager's first operation has finished. */
export const backgroundSweep = Symbol('payload-cache.backgroundSweep');

/**
 * Settles (never rejects) when every eviction pass a manager's writes have asked for so far has finished:
 * what a test or a benchmark awaits instead of guessing how long a pass takes.
 */
export const backgroundEviction = Symbol('payload-cache.backgroundEviction');

/** Where one operation works: the roots and sublayer as resolved now, and the clock read once. */
interface Scope {
  readonly root: string;
  readonly dir: string;
  /** The own root's sublayer first, then the read-only roots' in order. */
  readonly layers: readonly Layer[];
  readonly nowMs: number;
  readonly freshness: Freshness;
}

/**
 * A cache of large payloads in one sublayer of a cache root, safe to share between threads, processes
 * and hosts. `getOrFetch` returns the absolute path of a complete, validated file: concurrent callers
 * share one download, a crash leaves the previous entry or a miss, never a torn file.
 */
export class CacheManager {
  /** The directory name of this manager's entries under the cache root. */
  readonly sublayer: string;
  readonly #settings: Settings;
  readonly #sweptDirs = new Set<string>();
  readonly #observer: Observer;
  readonly #extractions: ExtractionFlow;
  readonly #evictionRequester: EvictionRequester = {
    // The policy (and the clock) as they are when the pass starts, not when it was asked for.
    evict: async (dir, spared, report) => {
      await evict({ ...this.#policy(this.#scope()), dir }, spared, report, { remember: true });
    },
    removed: (report) => this.#observer.evicted(report.removed),
    failed: (error, dir, latestKey) => this.#observer.evictionFailed(latestKey, dir, error),
  };
  /** @internal Settles when the background orphan sweep is done (tests wait on it). */
  [backgroundSweep]: Promise<void> = Promise.resolve();
  /** @internal Settles when the eviction passes asked for so far are done (tests wait on it). */
  [backgroundEviction]: Promise<void> = Promise.resolve();

  /** @throws InvalidOptionsError for a bad option, InvalidKeyError for a bad sublayer. */
  constructor(options: CacheManagerOptions) {
    this.#settings = resolveSettings(options);
    this.sublayer = this.#settings.sublayer;
    this.#observer = new Observer(this.sublayer);
    this.#extractions = new ExtractionFlow(this.#settings, this.#observer, () => this.#now());
  }

  /** Counters since this manager was created: hits, misses, fetches, bytes written, evictions, ... */
  stats(): CacheStats {
    return this.#observer.snapshot();
  }

  /**
   * The path of a fresh entry for `key`, fetching and publishing it first on a miss (DESIGN.md section 5).
   * Concurrent callers in this process share one fetch; other processes and hosts wait on the key's lock.
   */
  async getOrFetch(key: string, fetchFn: FetchFn, options: GetOrFetchOptions = {}): Promise<string> {
    try {
      validateKey(key);
      validateFetchArgs(fetchFn, options);
      return await this.#getOrFetch(key, fetchFn, options, PAYLOAD);
    } catch (error) {
      this.#observer.failed(error);
      throw error;
    }
  }

  /**
   * The path of a directory holding the extracted archive of a fresh entry for `key`, complete and
   * validated, fetching and extracting first on a miss. The archive stays a normal entry (TTL, ETag
   * revalidation, `NOT_MODIFIED`, `verify`); its extraction is tied to its sha256: a new archive gets a new
   * directory, an unchanged one (304) keeps it. A new archive is extracted before it is published, so a
   * hostile one (ArchiveUnsafeError) or an unreadable one (ArchiveInvalidError) publishes nothing and the
   * previous entry stays. One download and one extraction per key across threads, processes and hosts, as
   * for getOrFetch. Read-only roots are not consulted yet; offline, only an existing extraction is served.
   */
  async getOrExtract(key: string, fetchFn: FetchFn, options: GetOrExtractOptions = {}): Promise<string> {
    try {
      validateKey(key);
      const request = validateExtractArgs(fetchFn, options);
      return await this.#getOrFetch(key, fetchFn, options, { kind: 'extraction', request });
    } catch (error) {
      this.#observer.failed(error);
      throw error;
    }
  }

  async #getOrFetch(key: string, fetchFn: FetchFn, options: GetOrFetchOptions, delivery: Delivery) {
    // An aborted call touches nothing: no directory, no tag, no sweep.
    options.signal?.throwIfAborted();
    const scope = this.#scope();
    const paths = entryPaths(scope.dir, key);
    const refresh = options.refresh === true;
    const flightKey = delivery.kind === 'payload' ? paths.payload : paths.payload + EXTRACTION_FLIGHT_SUFFIX;
    // The common case first: with nothing in flight for this entry, a hit needs no flight bookkeeping.
    let checked: EntryState | undefined;
    if (!refresh && !flights.has(flightKey)) {
      this.#sweepOnce(scope);
      const { found, served } = await this.#hitCheck(paths, scope, delivery);
      if (served !== undefined) return served;
      checked = found;
    }
    if (isOffline(this.#settings)) {
      return delivery.kind === 'payload'
        ? this.#serveOffline(key, scope)
        : this.#extractions.serveAsIs(scope.layers, key, scope.freshness, this.sublayer);
    }
    if (!refresh) {
      const served = await this.#serveFromReadOnlyLayers(key, scope, delivery);
      if (served !== undefined) return served;
    }
    try {
      return await flights.run(flightKey, refresh, options.signal, (signal) =>
        this.#hitOrFetch(paths, fetchFn, options, signal, delivery, checked),
      );
    } catch (error) {
      return this.#serveStale(paths, options, error, delivery);
    }
  }

  async #hitOrFetch(
    paths: EntryPaths,
    fetchFn: FetchFn,
    options: GetOrFetchOptions,
    signal: AbortSignal,
    delivery: Delivery,
    checked: EntryState | undefined,
  ) {
    const scope = this.#scope();
    this.#sweepOnce(scope);
    // A miss this call saw a moment ago is not checked again: the check under the lock (step 4) decides.
    const hit =
      checked !== undefined
        ? { found: checked }
        : options.refresh
          ? { found: await lookupEntry(paths, scope.freshness) }
          : await this.#hitCheck(paths, scope, delivery);
    if (hit.served !== undefined) return hit.served;
    const { found } = hit;
    const reason = found.state !== 'fresh' ? found.state : options.refresh ? 'refresh' : 'not-extracted';
    this.#observer.miss(paths.key, reason);
    return this.#fetchUnderLock(paths, fetchFn, options, signal, delivery);
  }

  /**
   * Step 3, the hit check without a lock: the entry and, for getOrExtract, its extraction. `served` is the
   * path handed out (its use recorded) when it is a hit; `found` says what the entry is either way.
   */
  async #hitCheck(
    paths: EntryPaths,
    scope: Scope,
    delivery: Delivery,
  ): Promise<{ found: EntryState; served?: string | undefined }> {
    if (delivery.kind === 'extraction') return this.#extractions.hit(paths, scope.freshness);
    const found = await lookupEntry(paths, scope.freshness);
    return { found, served: found.state === 'fresh' ? await this.#serve(paths, found, scope) : undefined };
  }

  /**
   * Step 7's fallback, per caller: a caller that joined someone else's fetch gets its own `staleIfError`,
   * whatever the first caller asked for.
   */
  async #serveStale(
    paths: EntryPaths,
    options: GetOrFetchOptions,
    error: unknown,
    delivery: Delivery,
  ): Promise<string> {
    if (!options.staleIfError || options.signal?.aborted || isUsageError(error)) throw error;
    const scope = this.#scope();
    if (delivery.kind === 'extraction') {
      const served = await this.#extractions
        .serveAsIs(scope.layers, paths.key, scope.freshness, this.sublayer)
        .catch(() => undefined);
      if (served === undefined) throw error;
      this.#observer.staleServed(paths.key, served, error);
      return served;
    }
    const fallback = await findInLayers(scope.layers, paths.key, scope.freshness, true);
    if (!fallback) throw error;
    this.#observer.staleServed(paths.key, fallback.paths.payload, error);
    return this.#serveLayered(fallback, scope);
  }

  /** Offline mode: any committed entry in any layer, fresh first; never the fetcher, never a lock. */
  async #serveOffline(key: string, scope: Scope): Promise<string> {
    const entry = await findInLayers(scope.layers, key, scope.freshness, true);
    if (!entry) {
      const roots = scope.layers.map((layer) => layer.root);
      throw new OfflineMissError(key, this.sublayer, roots);
    }
    if (entry.found.state === 'expired') this.#observer.staleServedOffline(key, entry.paths.payload);
    return this.#serveLayered(entry, scope);
  }

  async #fetchUnderLock(
    paths: EntryPaths,
    fetchFn: FetchFn,
    options: GetOrFetchOptions,
    signal: AbortSignal,
    delivery: Delivery,
  ) {
    const { root, dir } = this.#scope();
    const { modes } = this.#settings;
    await ensureRealDir(dir, modes).catch(explainReadOnly(root));
    await this.#tagRoot(root);
    const waitStartedAt = Date.now();
    const meanwhile: { found?: EntryState } = {};
    const lock = await waitForLock(paths.lock, {
      key: paths.key,
      staleMs: this.#settings.lockStaleMs,
      timeoutMs: this.#settings.lockTimeoutMs,
      signal,
      modes,
      // Someone removed the sublayer while we waited: make it again and go on waiting.
      recreateDir: () => ensureRealDir(dir, modes),
      onStillWaiting: (waitedMs, holder) => this.#observer.stillWaiting(paths.key, waitedMs, holder),
      // The holder renames the manifest into place before it releases the lock: wake up for that.
      wakeOn: [path.basename(paths.manifest)],
      // Another writer holds the key: if it has published a fresh entry (and, for getOrExtract, its
      // extraction), serve it without the lock.
      satisfied: async () => {
        if (options.refresh) return false;
        meanwhile.found = await lookupEntry(paths, this.#scope().freshness);
        if (meanwhile.found.state !== 'fresh') return false;
        return (
          delivery.kind === 'payload' || (await this.#extractions.find(paths, meanwhile.found)) !== undefined
        );
      },
    }).catch(explainReadOnly(root));
    if (!lock) {
      this.#observer.lockWaited(paths.key, Date.now() - waitStartedAt);
      const found = meanwhile.found;
      if (found?.state !== 'fresh') throw new Error('lock wait ended without a fresh entry');
      const scope = this.#scope();
      if (delivery.kind === 'payload') return this.#serve(paths, found, scope);
      const located = await this.#extractions.find(paths, found);
      if (!located) throw new Error('lock wait ended without an extraction');
      return this.#extractions.serve(paths, found, located, scope.nowMs);
    }
    this.#observer.lockWaited(paths.key, lock.waitedMs);
    let published = false;
    try {
      await crashPoint('locked');
      const scope = this.#scope();
      const found = await lookupEntry(paths, scope.freshness);
      if (found.state === 'fresh' && !options.refresh) {
        if (delivery.kind === 'payload') return await this.#serve(paths, found, scope);
        // Awaited here, not returned as a promise: the lock must be held until the extraction is published.
        return await this.#extractions.extractUnderLock(
          paths,
          found.manifest.sha256,
          delivery.request,
          signal,
        );
      }
      const previous =
        found.state === 'absent' ? undefined : { path: paths.payload, manifest: found.manifest };
      const sha256 = await this.#fetchAndPublish(paths, previous, fetchFn, options, signal, delivery);
      published = true;
      if (delivery.kind === 'payload') return paths.payload;
      return await this.#extractions.extractUnderLock(paths, sha256, delivery.request, signal);
    } finally {
      await lock.release();
      if (published) this.#evictLater(paths);
    }
  }

  /**
   * Step 7, moved off the caller's path by issue 16 (DESIGN.md section 5 still evicts before the release):
   * the eviction pass a write asks for runs after the call has returned, so that no write waits for a scan
   * of the sublayer. Its removals are counted in `stats()` once it ends; its failures go to the
   * `payload-cache:evict:error` channel, since no caller is left to throw at.
   */
  #evictLater(paths: EntryPaths): void {
    const { keepN, maxBytes } = this.#settings;
    if (keepN === Number.POSITIVE_INFINITY && maxBytes === Number.POSITIVE_INFINITY) return;
    const pass = requestEviction(paths.dir, this.#evictionRequester, paths.key);
    this[backgroundEviction] = Promise.all([this[backgroundEviction], pass]).then(() => {});
  }

  /**
   * Steps 5 and 6: call the fetcher, then renew the entry (NOT_MODIFIED) or stream and commit the new one.
   * Resolves with the sha256 of the entry now in place, when it is known.
   */
  async #fetchAndPublish(
    paths: EntryPaths,
    previous: FetchContext['previous'],
    fetchFn: FetchFn,
    options: GetOrFetchOptions,
    signal: AbortSignal,
    delivery: Delivery,
  ): Promise<string | undefined> {
    const startedAt = performance.now();
    this.#observer.fetchStarted(paths.key, previous !== undefined);
    let writer: PayloadWriter | undefined;
    try {
      const context: FetchContext = {
        key: paths.key,
        signal,
        previous,
        resetBody: () => writer?.requestReset(),
      };
      const answer = Promise.resolve().then(() => fetchFn(context));
      const result: FetchResult = await raceAbort(answer, signal).catch((error: unknown) => {
        // An answer that arrives after the abort is nobody's: let go of its body (and its socket).
        if (signal.aborted) answer.then(releaseResult, () => {});
        throw error;
      });
      if (result === NOT_MODIFIED) {
        if (!previous)
          throw new InvalidOptionsError(`fetchFn answered NOT_MODIFIED but "${paths.key}" has no entry`);
        if (await renewEntry(paths, previous.manifest, this.#now(), this.#settings.modes)) {
          this.#observer.fetchEnded(paths.key, 'not-modified', performance.now() - startedAt);
          return previous.manifest.sha256;
        }
        // The entry the fetcher judged unchanged is not there any more (deleted, or replaced meanwhile):
        // "not modified" says nothing about what is on disk now, so fetch it whole.
        return this.#fetchAndPublish(paths, undefined, fetchFn, options, signal, delivery);
      }
      const fetched = asFetchedBody(result);
      const { modes } = this.#settings;
      writer = await PayloadWriter.create(paths.payload, () => ensureRealDir(paths.dir, modes), modes);
      await this.#writeAndPublish(paths, writer, fetched, options, signal, delivery);
      const sizeBytes = writer.sizeBytes;
      this.#observer.fetchEnded(paths.key, 'written', performance.now() - startedAt, { sizeBytes });
      return writer.sha256;
    } catch (error) {
      this.#observer.fetchEnded(paths.key, 'failed', performance.now() - startedAt, { error });
      throw error;
    }
  }

  /**
   * Streams, checks and validates the payload in its tmp file, then commits it; on any failure the tmp file
   * goes. For getOrExtract the sealed tmp file is extracted before the commit (a refused archive publishes
   * nothing), and the extraction is published right after it.
   */
  async #writeAndPublish(
    paths: EntryPaths,
    writer: PayloadWriter,
    fetched: FetchedBody,
    options: GetOrFetchOptions,
    signal: AbortSignal,
    delivery: Delivery,
  ): Promise<void> {
    let prepared: PreparedExtraction | undefined;
    let pending: PendingManifest | undefined;
    try {
      await writer.writeBody(fetched.body, signal, oversizeGuard(paths.key, fetched));
      checkIntegrity(paths.key, writer, fetched);
      await runValidator(paths.key, writer, options.validator, signal);
      signal.throwIfAborted();
      const nowMs = this.#now();
      const facts = { createdAtMs: nowMs, etag: fetched.etag, lastModified: fetched.lastModified };
      pending = await sealEntry(paths, writer, facts, this.#settings.modes);
      await crashPoint('sealed');
      const extraction =
        delivery.kind === 'extraction'
          ? this.#extractions.steps(paths, writer.sha256, delivery.request, nowMs, signal)
          : undefined;
      prepared = await extraction?.prepareUnlessPublished(writer.tmpPath);
      // Once the commit has begun the pending manifest is its own: removed on a failure before the
      // payload's rename, kept after it (it then proves the lone payload is ours).
      const committing = pending;
      pending = undefined;
      await commitEntry(paths, writer, committing);
      if (prepared) await extraction?.publish(prepared);
    } catch (error) {
      await prepared?.discard();
      if (pending) await removeFile(pending.tmpPath).catch(() => {});
      await writer.discard();
      throw error;
    }
  }

  async #serve(
    paths: EntryPaths,
    found: Exclude<EntryState, { state: 'absent' }>,
    scope: Scope,
  ): Promise<string> {
    await touchEntry(paths, found.lastUsedAtMs, scope.nowMs, this.#settings.touchIntervalMs);
    this.#observer.hit(paths.key, paths.payload);
    return paths.payload;
  }

  /** A fresh entry (for getOrExtract, a fresh archive and its extraction) in a read-only layer, served in place. */
  async #serveFromReadOnlyLayers(key: string, scope: Scope, delivery: Delivery): Promise<string | undefined> {
    const readOnlyLayers = scope.layers.slice(1);
    if (delivery.kind === 'extraction') {
      const shared = await this.#extractions.findInLayers(readOnlyLayers, key, scope.freshness, false);
      return shared && this.#extractions.serveLayered(shared, scope.nowMs);
    }
    const shared = await findInLayers(readOnlyLayers, key, scope.freshness, false);
    return shared && this.#serveLayered(shared, scope);
  }

  /** Serves an entry from whichever layer it is in; only the own root records the use. */
  async #serveLayered({ layer, paths, found }: LayeredEntry, scope: Scope): Promise<string> {
    if (!layer.readOnly) return this.#serve(paths, found, scope);
    this.#observer.hit(paths.key, paths.payload);
    return paths.payload;
  }

  /**
   * The path of a fresh entry (in the own root, else in a read-only root), or `undefined`; never fetches,
   * never deletes. Counts as a use.
   */
  async get(key: string): Promise<string | undefined> {
    validateKey(key);
    const scope = this.#scope();
    const entry = await findInLayers(scope.layers, key, scope.freshness, false);
    return entry && this.#serveLayered(entry, scope);
  }

  /** Whether a fresh entry exists in any root (`get()` would return a path). Changes nothing: not even a use. */
  async has(key: string): Promise<boolean> {
    validateKey(key);
    const scope = this.#scope();
    return (await findInLayers(scope.layers, key, scope.freshness, false)) !== undefined;
  }

  /**
   * Removes the entry for `key`; `true` if there was one. If a writer holds the key's lock, only the
   * manifest goes (the key is a miss at once), and that writer may publish afterwards. Files at the key's
   * names that the cache did not write (a directory, say) are left alone: ForeignFileError.
   */
  async delete(key: string): Promise<boolean> {
    validateKey(key);
    const paths = entryPaths(this.#scope().dir, key);
    if (!(await isRealDir(paths.dir))) return false;
    const held = await tryLock(paths.lock, this.#settings.lockStaleMs, this.#settings.modes).catch(
      () => undefined,
    );
    // The payload stays for the writer; the retired manifest left beside it proves it is ours to sweep.
    if (!held) return (await retireManifest(paths.manifest)) !== undefined;
    try {
      return await removeEntry(paths);
    } finally {
      await held.release();
    }
  }

  /**
   * Makes every key a miss: removes every committed entry and every orphan, but never a lock held by a
   * live process nor a tmp file younger than `staleTmpMs`. A writer already in flight may publish afterwards.
   * Only in a cache root (one with payload-cache's CACHEDIR.TAG): elsewhere NotCacheRootError.
   */
  async clear(): Promise<PruneReport> {
    return this.carryOut(await this.planClear());
  }

  /**
   * Removes expired entries and orphans, then evicts down to `keepN`/`maxBytes`; reports each removal and
   * everything it left alone. Only in a cache root: elsewhere NotCacheRootError.
   */
  async prune(): Promise<PruneReport> {
    return this.carryOut(await this.planPrune());
  }

  /**
   * What `prune()` would remove now, and what it would keep, without changing anything (a dry run). Pass the
   * plan to {@link CacheManager.carryOut} to remove exactly that.
   */
  async planPrune(): Promise<JanitorPlan> {
    return planPrune(await this.#janitorPolicy());
  }

  /** What `clear()` would remove now, without changing anything; {@link CacheManager.carryOut} does it. */
  async planClear(): Promise<JanitorPlan> {
    return planClear(await this.#janitorPolicy());
  }

  /**
   * Removes exactly what `plan` lists and nothing else, each item only if it is still as the plan saw it
   * (same manifest, same size, and for expiry and eviction no use since); the rest is reported as kept.
   */
  async carryOut(plan: JanitorPlan): Promise<PruneReport> {
    const report = await carryOut(await this.#janitorPolicy(), plan);
    this.#observer.evicted(report.removed.filter((item) => item.reason === 'evicted'));
    return report;
  }

  /**
   * Committed entries (fresh and expired) of the own root, most recently used first, then those of each
   * read-only root (`readOnly: true`). Changes nothing.
   */
  async list(): Promise<EntryInfo[]> {
    const scope = this.#scope();
    const listings = await Promise.all(scope.layers.map((layer) => listEntries(layer, scope.freshness)));
    return listings.flat();
  }

  /**
   * Re-hashes every payload against its manifest; `fix` removes bad entries and orphans (only in a cache
   * root: elsewhere NotCacheRootError). Without `fix` it changes nothing.
   */
  async verify(options: { fix?: boolean } = {}): Promise<VerifyReport> {
    const fix = options.fix === true;
    const policy = fix ? await this.#janitorPolicy() : this.#policy(this.#scope());
    return verifySublayer(policy, fix);
  }

  #now(): number {
    return this.#settings.now();
  }

  #scope(): Scope {
    const root = resolveRoot(this.#settings.root);
    const nowMs = this.#now();
    const { ttl, maxClockSkewMs } = this.#settings;
    return {
      root,
      dir: sublayerDir(root, this.sublayer),
      layers: layersOf(root, readOnlyRootsOf(this.#settings, root), this.sublayer),
      nowMs,
      freshness: { ttlMs: ttl, maxClockSkewMs, nowMs },
    };
  }

  /** The policy for a janitor that deletes: refused unless the root is marked as a payload-cache root. */
  async #janitorPolicy(): Promise<SublayerPolicy> {
    const scope = this.#scope();
    if ((await isRealDir(scope.dir)) && !(await isCacheRoot(scope.root)))
      throw new NotCacheRootError(scope.root);
    return this.#policy(scope);
  }

  #policy(scope: Scope): SublayerPolicy {
    const s = this.#settings;
    return {
      dir: scope.dir,
      keepN: s.keepN,
      maxBytes: s.maxBytes,
      lockStaleMs: s.lockStaleMs,
      staleTmpMs: s.staleTmpMs,
      // A hit records its use at most once per touchIntervalMs, so the recorded use can lag the last real
      // one by that much: sparing twice the interval plus the grace keeps a path handed out for at least
      // touchIntervalMs + evictionGraceMs after it was handed out, as promised.
      inUseWindowMs: 2 * s.touchIntervalMs + s.evictionGraceMs,
      freshness: scope.freshness,
      modes: s.modes,
    };
  }

  async #tagRoot(root: string): Promise<void> {
    if (taggedRoots.has(root)) return;
    taggedRoots.add(root);
    await writeCacheDirTag(root, this.#settings.modes);
  }

  /**
   * Once per manager and directory, sweep orphans in the background (only in a marked cache root); it never
   * delays or fails an operation.
   */
  #sweepOnce(scope: Scope): void {
    if (this.#sweptDirs.has(scope.dir)) return;
    this.#sweptDirs.add(scope.dir);
    this[backgroundSweep] = new Promise<void>((resolve) => setImmediate(resolve))
      .then(async () => {
        if (!(await isCacheRoot(scope.root))) return;
        const policy = { ...this.#policy(this.#scope()), dir: scope.dir };
        await carryOut(policy, await planSweep(policy));
      })
      .then(
        () => {},
        () => {},
      );
  }
}

// Not EPERM: Windows and network file systems answer it for passing conditions that a retry outlasts.
const READ_ONLY_CODES = new Set(['EACCES', 'EROFS']);

/** A miss that cannot create its files in `root` is told so: the cache is read-only for this process. */
function explainReadOnly(root: string) {
  return (error: unknown): never => {
    if (!READ_ONLY_CODES.has(errorCode(error))) throw error;
    const failedPath = (error as NodeJS.ErrnoException).path ?? root;
    throw new CacheReadOnlyError(root, failedPath, error);
  };
}

/** Errors in the caller's own input: `staleIfError` must not hide them. */
function isUsageError(error: unknown): boolean {
  return error instanceof InvalidOptionsError || error instanceof InvalidKeyError;
}

export type { CacheManagerOptions };
