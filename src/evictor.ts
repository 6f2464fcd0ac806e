import { setTimeout as delay } from 'node:timers/promises';
import { entryPaths } from './entry-paths.js';
import { type RemovalOutcome, removeEntryIfUnchanged } from './entry-store.js';
import {
  extractionBytesByKey,
  provePublishedExtraction,
  removeExtractionIfUnchanged,
} from './extraction-on-disk.js';
import type { SublayerPolicy } from './janitor.js';
import { lockHolder } from './soft-lock.js';
import {
  manifestCount,
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
 * The entries in eviction order, produced as they are asked for. A pass usually needs the first few of
 * 10,000 or 100,000: sorting all 100,000 held the event loop for 60–85 ms here, while a heap is built in
 * linear time and gives each next entry in logarithmic time.
 */
export function* inEvictionOrder<T extends Evictable>(entries: readonly T[]): Generator<T, void, undefined> {
  const heap = [...entries];
  const siftDown = (start: number, size: number) => {
    let parent = start;
    for (;;) {
      const left = 2 * parent + 1;
      if (left >= size) return;
      const right = left + 1;
      const child = right < size && goesBefore(heap[right] as T, heap[left] as T) ? right : left;
      if (!goesBefore(heap[child] as T, heap[parent] as T)) return;
      [heap[parent], heap[child]] = [heap[child] as T, heap[parent] as T];
      parent = child;
    }
  };
  for (let index = (heap.length >> 1) - 1; index >= 0; index -= 1) siftDown(index, heap.length);
  for (let size = heap.length; size > 0; size -= 1) {
    const first = heap[0] as T;
    heap[0] = heap[size - 1] as T;
    siftDown(0, size - 1);
    yield first;
  }
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
): Promise<PruneReport> {
  const listing = await readSublayer(policy.dir);
  // Without a byte limit, names alone tell whether anything must go: no stat of every payload per write.
  if (policy.maxBytes === Number.POSITIVE_INFINITY && manifestCount(listing) <= policy.keepN) return report;
  const { entries, extractions } = await scanSublayer(policy.dir, { listing, concurrency: SCAN_AT_ONCE });
  const extractionBytes = await extractionBytesByKey(extractions);
  const bytesOf = (entry: ScannedEntry) => entry.sizeBytes + (extractionBytes.get(entry.paths.key) ?? 0);
  const totals = { count: entries.length, bytes: entries.reduce((sum, entry) => sum + bytesOf(entry), 0) };
  const over = (count: number, bytes: number) => count > policy.keepN || bytes > policy.maxBytes;
  const nowMs = policy.freshness.nowMs;
  const candidates = inEvictionOrder(entries);
  while (over(totals.count, totals.bytes)) {
    const batch: ScannedEntry[] = [];
    let { count, bytes } = totals;
    while (batch.length < REMOVALS_AT_ONCE && over(count, bytes)) {
      const candidate = candidates.next();
      if (candidate.done) break;
      const entry = candidate.value;
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
      report.removed.push(...removed);
      if (outcome !== 'removed' && outcome !== 'changed') {
        report.kept.push({ key: entry.paths.key, reason: outcome });
        continue;
      }
      // Removed, or not the valid entry the scan counted (a broken manifest, a replaced payload): either way
      // it no longer counts toward the limits.
      totals.count -= 1;
      totals.bytes -= entry.sizeBytes + extractionBytesRemoved;
    }
    const failure = outcomes.find((settled) => settled.status === 'rejected');
    if (failure) throw failure.reason;
  }
  return report;
}

/** Removes one victim under its lock, and its extractions with it. */
async function removeVictim(
  policy: SublayerPolicy,
  entry: ScannedEntry,
  extractions: readonly ScannedExtraction[],
): Promise<{ outcome: RemovalOutcome; removed: ReportItem[]; extractionBytesRemoved: number }> {
  const outcome = await removeUnlessRemovedElsewhere(policy, entry);
  if (outcome !== 'removed') return { outcome, removed: [], extractionBytesRemoved: 0 };
  const removed: ReportItem[] = [{ key: entry.paths.key, path: entry.paths.payload, reason: 'evicted' }];
  const own = extractions.filter((extraction) => extraction.key === entry.paths.key);
  const extractionBytesRemoved = await removeExtractionsOf(policy, own, removed);
  return { outcome, removed, extractionBytesRemoved };
}

/**
 * Removes a victim under its lock, as {@link removeEntryIfUnchanged} does. A victim whose lock is held is
 * usually being removed by another process's pass, which chose it by the same order: counted as gone
 * (`changed`), not replaced by the next entry, or two passes would evict one entry too many between them.
 * A victim held by a writer or an extraction is `locked`: it stays, and the next entry goes in its place.
 */
async function removeUnlessRemovedElsewhere(
  policy: SublayerPolicy,
  entry: ScannedEntry,
): Promise<RemovalOutcome> {
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
    if (holder === 'removing') return 'changed';
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
