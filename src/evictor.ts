import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { entryPaths } from './entry-paths.js';
import { lastUsedAtMs, type RemovalOutcome, removeEntryIfUnchanged } from './entry-store.js';
import {
  extractionBytesByKey,
  provePublishedExtraction,
  removeExtractionIfUnchanged,
} from './extraction-on-disk.js';
import { lstatOrUndefined } from './file-system.js';
import type { SublayerPolicy } from './janitor.js';
import { lockHolder } from './soft-lock.js';
import {
  manifestCount,
  type PayloadFacts,
  readSublayer,
  type ScannedEntry,
  type ScannedExtraction,
  scanSublayer,
} from './sublayer-scan.js';
import type { PruneReport, ReportItem } from './types.js';

interface Evictable {
  readonly paths: { readonly key: string };
  readonly lastUsedAtMs: number;
}

/** Least recently used first (to the millisecond, see lastUsedAtMs); ties broken by key so the order is stable. */
function goesBefore(a: Evictable, b: Evictable): boolean {
  return a.lastUsedAtMs < b.lastUsedAtMs || (a.lastUsedAtMs === b.lastUsedAtMs && a.paths.key < b.paths.key);
}

/**
 * Entries in eviction order, taken as they are needed. A pass usually needs the first few of 10,000 or
 * 100,000: sorting all 100,000 held the event loop for 60–85 ms here, while a heap is built in linear time
 * and gives each next entry in logarithmic time. An entry found used since it was scanned goes back in
 * with its new facts.
 */
export class EvictionQueue<T extends Evictable> {
  readonly #heap: T[];

  constructor(entries: readonly T[]) {
    this.#heap = [...entries];
    for (let index = (this.#heap.length >> 1) - 1; index >= 0; index -= 1) this.#siftDown(index);
  }

  /** The least recently used entry left, removed from the queue. */
  next(): T | undefined {
    const heap = this.#heap;
    const first = heap[0];
    const last = heap.pop();
    if (heap.length > 0 && last !== undefined) {
      heap[0] = last;
      this.#siftDown(0);
    }
    return first;
  }

  push(entry: T): void {
    const heap = this.#heap;
    heap.push(entry);
    for (let child = heap.length - 1; child > 0; ) {
      const parent = (child - 1) >> 1;
      if (!goesBefore(heap[child] as T, heap[parent] as T)) return;
      [heap[parent], heap[child]] = [heap[child] as T, heap[parent] as T];
      child = parent;
    }
  }

  #siftDown(start: number): void {
    const heap = this.#heap;
    for (let parent = start; ; ) {
      const left = 2 * parent + 1;
      if (left >= heap.length) return;
      const right = left + 1;
      const child = right < heap.length && goesBefore(heap[right] as T, heap[left] as T) ? right : left;
      if (!goesBefore(heap[child] as T, heap[parent] as T)) return;
      [heap[parent], heap[child]] = [heap[child] as T, heap[parent] as T];
      parent = child;
    }
  }
}

/** The entries in eviction order, produced as they are asked for (see {@link EvictionQueue}). */
export function* inEvictionOrder<T extends Evictable>(entries: readonly T[]): Generator<T, void, undefined> {
  const queue = new EvictionQueue(entries);
  for (let entry = queue.next(); entry !== undefined; entry = queue.next()) yield entry;
}

/** All the entries in eviction order (see {@link inEvictionOrder}); the input is left as it was. */
export function evictionOrder<T extends Evictable>(entries: readonly T[]): T[] {
  return [...inEvictionOrder(entries)];
}

/** Keys a pass must spare: a `Set`, or a live view of keys still being written. */
export interface KeySet {
  has(key: string): boolean;
}

/** Why an entry must not be evicted now, or `undefined` if it may be. */
export function evictionShield(
  entry: ScannedEntry,
  justWritten: KeySet | undefined,
  nowMs: number,
  inUseWindowMs: number,
): 'just-written' | 'recently-used' | undefined {
  if (justWritten?.has(entry.paths.key)) return 'just-written';
  if (entry.lastUsedAtMs > nowMs - inUseWindowMs) return 'recently-used';
  return undefined;
}

/**
 * Eviction runs beside the process's own writes, and every file-system call of both waits in the same
 * libuv thread pool (4 threads by default). Measured at 10,000 entries on a 2-core machine shared with a
 * CI run: with 64 `lstat`s of the scan in flight, the median 1 KiB write next to a pass took ~83 ms; with
 * 4, ~18–21 ms (~10 ms with no pass running), the pass itself ~30 % slower, which nobody waits for.
 * Removals are chains of calls under each victim's lock (~1.7 ms one after another): 8 chains at once keep
 * the pool busy with a short queue.
 */
const SCAN_AT_ONCE = 4;
export const REMOVALS_AT_ONCE = 8;
const HOLDER_LOOKS = 5;
const HOLDER_LOOK_DELAY_MS = 10;

/**
 * What background passes of this process remember of each sublayer's payloads, so that a pass `lstat`s only
 * the payloads that are new since the last one: a lone pass went from ~400 ms to ~70 ms at 10,000 entries
 * and from ~4.4 s to ~1 s at 100,000 (docs/benchmarks.md, run 7). A remembered fact can be stale (a reader
 * elsewhere touched the entry); a victim is re-checked under its lock anyway, and one found changed is
 * looked at again and goes back into the order. Only an mtime moved
 * backwards (a host whose clock is behind) goes unseen, so everything is `lstat`ed afresh every 5 minutes
 * (at 100,000 entries that pass takes seconds), and a sublayer no pass has looked at for 30 s is forgotten.
 */
interface SublayerMemory {
  readonly payloads: Map<string, PayloadFacts>;
  fullScanAtMs: number;
  forget?: NodeJS.Timeout;
}

const MEMORY_REFRESH_MS = 300_000;
const MEMORY_IDLE_MS = 30_000;
const memories = new Map<string, SublayerMemory>();

function memoryOf(dir: string): SublayerMemory {
  const nowMs = performance.now();
  const previous = memories.get(dir);
  if (previous?.forget) clearTimeout(previous.forget);
  const memory =
    previous && nowMs - previous.fullScanAtMs <= MEMORY_REFRESH_MS
      ? previous
      : { payloads: new Map<string, PayloadFacts>(), fullScanAtMs: nowMs };
  memory.forget = setTimeout(() => memories.delete(dir), MEMORY_IDLE_MS).unref();
  memories.set(dir, memory);
  return memory;
}

/** How a pass may read the sublayer. */
export interface EvictOptions {
  /**
   * Skip the `lstat` of payloads an earlier pass of this process saw (see {@link SublayerMemory}); only
   * without `maxBytes`.
   */
  readonly remember?: boolean;
}

/**
 * Removes least-recently-used entries while the sublayer is over `keepN` or `maxBytes`, skipping the keys
 * `justWritten` names, entries used within the in-use window and entries whose lock is held, and re-checking
 * each victim under its lock (a valid manifest, no use since the scan). An entry's bytes include its
 * extractions', which go with it (each only if it too is out of the in-use window). The limits are exact:
 * victims are taken a batch at a time, never more than would bring the sublayer within them if all were
 * removed. Protected entries and extractions can keep a sublayer over the limits for a while. `report` is
 * filled as removals happen, so a pass that fails half-way still accounts for what it removed.
 */
export async function evict(
  policy: SublayerPolicy,
  justWritten: KeySet,
  report: PruneReport = { removed: [], kept: [], foreign: [] },
  options: EvictOptions = {},
): Promise<PruneReport> {
  const listing = await readSublayer(policy.dir);
  // Without a byte limit, names alone tell whether anything must go: no stat of every payload per write.
  if (policy.maxBytes === Number.POSITIVE_INFINITY && manifestCount(listing) <= policy.keepN) return report;
  // Remembered facts are good for the order only: a stale one is caught when its entry is picked. Sizes
  // summed for maxBytes would not be: an entry replaced by a bigger one elsewhere would go uncounted.
  const remembered =
    options.remember && policy.maxBytes === Number.POSITIVE_INFINITY
      ? memoryOf(policy.dir).payloads
      : undefined;
  if (remembered) for (const name of remembered.keys()) if (!listing.has(name)) remembered.delete(name);
  const { entries, extractions } = await scanSublayer(policy.dir, {
    listing,
    concurrency: SCAN_AT_ONCE,
    remembered,
  });
  const extractionBytes = await extractionBytesByKey(extractions);
  const bytesOf = (entry: ScannedEntry) => entry.sizeBytes + (extractionBytes.get(entry.paths.key) ?? 0);
  const totals = { count: entries.length, bytes: entries.reduce((sum, entry) => sum + bytesOf(entry), 0) };
  const over = (count: number, bytes: number) => count > policy.keepN || bytes > policy.maxBytes;
  const nowMs = policy.freshness.nowMs;
  const candidates = new EvictionQueue(entries);
  const lookedAtAgain = new Set<string>();
  while (over(totals.count, totals.bytes)) {
    const batch: ScannedEntry[] = [];
    let { count, bytes } = totals;
    while (batch.length < REMOVALS_AT_ONCE && over(count, bytes)) {
      const entry = candidates.next();
      if (!entry) break;
      const shield = evictionShield(entry, justWritten, nowMs, policy.inUseWindowMs);
      if (shield) {
        report.kept.push({ key: entry.paths.key, reason: shield });
        continue;
      }
      batch.push(entry);
      count -= 1;
      bytes -= bytesOf(entry);
    }
    if (batch.length === 0) break;
    const outcomes = await Promise.allSettled(batch.map((entry) => removeVictim(policy, entry, extractions)));
    // Every removal that succeeded is counted, in eviction order, before a failed one ends the pass: the
    // report and stats() then hold what was really removed.
    for (const [index, settled] of outcomes.entries()) {
      if (settled.status === 'rejected') continue;
      const { outcome, removed, extractionBytesRemoved } = settled.value;
      const entry = batch[index] as ScannedEntry;
      const name = path.basename(entry.paths.payload);
      report.removed.push(...removed);
      if (outcome === 'locked' || outcome === 'recently-used') {
        report.kept.push({ key: entry.paths.key, reason: outcome });
        continue;
      }
      remembered?.delete(name);
      // Changed since the scan: used (it still counts, by its new last use) or replaced, or no entry any more.
      const now = outcome === 'changed' && !lookedAtAgain.has(name) ? await committedEntry(entry) : undefined;
      if (now) {
        lookedAtAgain.add(name);
        remembered?.set(name, { sizeBytes: now.sizeBytes, lastUsedAtMs: now.lastUsedAtMs });
        totals.bytes += now.sizeBytes - entry.sizeBytes;
        candidates.push(now);
        continue;
      }
      // Removed, here or by another pass, or not the valid entry the scan counted: either way it no longer
      // counts toward the limits.
      totals.count -= 1;
      totals.bytes -= entry.sizeBytes + extractionBytesRemoved;
    }
    const failure = outcomes.find((settled) => settled.status === 'rejected');
    if (failure) throw failure.reason;
  }
  return report;
}

/** The entry as it is now: a regular payload with a regular manifest beside it, or `undefined`. */
async function committedEntry(entry: ScannedEntry): Promise<ScannedEntry | undefined> {
  const { paths } = entry;
  const [payload, manifest] = await Promise.all([
    lstatOrUndefined(paths.payload),
    lstatOrUndefined(paths.manifest),
  ]);
  if (!payload?.isFile() || !manifest?.isFile()) return undefined;
  return { paths, sizeBytes: payload.size, lastUsedAtMs: lastUsedAtMs(payload) };
}

/** Removes one victim under its lock, and its extractions with it. */
async function removeVictim(
  policy: SublayerPolicy,
  entry: ScannedEntry,
  extractions: readonly ScannedExtraction[],
): Promise<{ outcome: VictimOutcome; removed: ReportItem[]; extractionBytesRemoved: number }> {
  const outcome = await removeUnlessRemovedElsewhere(policy, entry);
  if (outcome !== 'removed') return { outcome, removed: [], extractionBytesRemoved: 0 };
  const removed: ReportItem[] = [{ key: entry.paths.key, path: entry.paths.payload, reason: 'evicted' }];
  const own = extractions.filter((extraction) => extraction.key === entry.paths.key);
  const extractionBytesRemoved = await removeExtractionsOf(policy, own, removed);
  return { outcome, removed, extractionBytesRemoved };
}

/** What became of a victim: a removal's outcome, or found being removed by another pass or janitor. */
type VictimOutcome = RemovalOutcome | 'removed-elsewhere';

/**
 * Removes a victim under its lock, as {@link removeEntryIfUnchanged} does. A victim whose lock is held is
 * usually being removed by another process's pass, which chose it by the same order: counted as gone
 * (`removed-elsewhere`), not replaced by the next entry, or two passes would evict one entry too many.
 * A victim held by a writer or an extraction is `locked`: it stays, and the next entry goes in its place.
 */
async function removeUnlessRemovedElsewhere(
  policy: SublayerPolicy,
  entry: ScannedEntry,
): Promise<VictimOutcome> {
  const removeIfUnchanged = () =>
    removeEntryIfUnchanged(
      entry.paths,
      {
        sizeBytes: entry.sizeBytes,
        lastUsedAtMs: entry.lastUsedAtMs,
        inUseWindowMs: policy.inUseWindowMs,
        nowMs: policy.freshness.nowMs,
      },
      policy.lockStaleMs,
      policy.modes,
    );
  let outcome = await removeIfUnchanged();
  // The holder may let go, or be a moment from writing its owner file, while we look: a few looks settle it.
  for (let look = 0; outcome === 'locked' && look < HOLDER_LOOKS; look += 1) {
    const holder = await lockHolder(entry.paths.lock);
    if (holder === 'removing') return 'removed-elsewhere';
    if (holder === 'other') return 'locked';
    if (holder === 'unknown') await delay(HOLDER_LOOK_DELAY_MS);
    outcome = await removeIfUnchanged();
  }
  return outcome;
}

/**
 * Removes the extractions of an entry just evicted, each proven the cache's and out of the in-use window
 * (a reader may be walking a tree whose archive was evicted); returns the bytes removed.
 */
async function removeExtractionsOf(
  policy: SublayerPolicy,
  extractions: readonly ScannedExtraction[],
  removed: ReportItem[],
): Promise<number> {
  let removedBytes = 0;
  for (const extraction of extractions) {
    const proof = await provePublishedExtraction(extraction);
    if (!proof) continue;
    const outcome = await removeExtractionIfUnchanged(
      extraction,
      entryPaths(policy.dir, extraction.key).lock,
      { markerText: proof.markerText, lastUsedAtMs: proof.lastUsedAtMs },
      { nowMs: policy.freshness.nowMs, inUseWindowMs: policy.inUseWindowMs },
      policy.lockStaleMs,
      policy.modes,
    );
    if (outcome === 'removed') {
      removed.push({ key: extraction.key, path: extraction.path, reason: 'evicted' });
      removedBytes += proof.marker.total_bytes ?? 0;
    }
  }
  return removedBytes;
}
