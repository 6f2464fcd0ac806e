import { entryPaths } from './entry-paths.js';
import { removeEntryIfUnchanged } from './entry-store.js';
import {
  extractionBytesByKey,
  provePublishedExtraction,
  removeExtractionIfUnchanged,
} from './extraction-on-disk.js';
import type { SublayerPolicy } from './janitor.js';
import {
  countEntriesByName,
  type ScannedEntry,
  type ScannedExtraction,
  scanSublayer,
} from './sublayer-scan.js';
import type { PruneReport } from './types.js';

/** Least recently used first (to the millisecond, see lastUsedAtMs); ties broken by key so the order is stable. */
export function evictionOrder<T extends { paths: { key: string }; lastUsedAtMs: number }>(entries: T[]): T[] {
  return [...entries].sort((a, b) => a.lastUsedAtMs - b.lastUsedAtMs || (a.paths.key < b.paths.key ? -1 : 1));
}

/** Why an entry must not be evicted now, or `undefined` if it may be. */
export function evictionShield(
  entry: ScannedEntry,
  justWrittenKey: string | undefined,
  nowMs: number,
  inUseWindowMs: number,
): 'just-written' | 'recently-used' | undefined {
  if (entry.paths.key === justWrittenKey) return 'just-written';
  if (entry.lastUsedAtMs > nowMs - inUseWindowMs) return 'recently-used';
  return undefined;
}

/**
 * After a write: removes least-recently-used entries while the sublayer is over `keepN` or `maxBytes`,
 * skipping the key just written, entries used within the in-use window and entries whose lock is held, and
 * re-checking each victim under its lock (a valid manifest, no use since the scan). An entry's bytes include
 * its extractions', which go with it (each only if it too is out of the in-use window). The limits are
 * exact, but protected entries and extractions can keep a sublayer over them for a while.
 */
export async function evict(policy: SublayerPolicy, justWrittenKey: string): Promise<PruneReport> {
  const report: PruneReport = { removed: [], kept: [], foreign: [] };
  // Without a byte limit, names alone tell whether anything must go: no stat of every payload per write.
  if (
    policy.maxBytes === Number.POSITIVE_INFINITY &&
    (await countEntriesByName(policy.dir)) <= policy.keepN
  ) {
    return report;
  }
  const { entries, extractions } = await scanSublayer(policy.dir);
  const extractionBytes = await extractionBytesByKey(extractions);
  const bytesOf = (entry: ScannedEntry) => entry.sizeBytes + (extractionBytes.get(entry.paths.key) ?? 0);
  let count = entries.length;
  let bytes = entries.reduce((sum, entry) => sum + bytesOf(entry), 0);
  const nowMs = policy.freshness.nowMs;
  for (const entry of evictionOrder(entries)) {
    if (count <= policy.keepN && bytes <= policy.maxBytes) break;
    const shield = evictionShield(entry, justWrittenKey, nowMs, policy.inUseWindowMs);
    if (shield) {
      report.kept.push({ key: entry.paths.key, reason: shield });
      continue;
    }
    const outcome = await removeEntryIfUnchanged(
      entry.paths,
      {
        sizeBytes: entry.sizeBytes,
        lastUsedAtMs: entry.lastUsedAtMs,
        inUseWindowMs: policy.inUseWindowMs,
        nowMs,
      },
      policy.lockStaleMs,
      policy.modes,
    );
    if (outcome === 'removed') {
      report.removed.push({ key: entry.paths.key, path: entry.paths.payload, reason: 'evicted' });
      const gone = extractions.filter((extraction) => extraction.key === entry.paths.key);
      bytes -= await removeExtractionsOf(policy, gone, report);
    } else if (outcome !== 'changed') {
      report.kept.push({ key: entry.paths.key, reason: outcome });
      continue;
    }
    // Removed, or not the valid entry the scan counted (a broken manifest, a replaced payload): either way
    // it no longer counts toward the limits.
    count -= 1;
    bytes -= entry.sizeBytes;
  }
  return report;
}

/**
 * Removes the extractions of an entry just evicted, each proven the cache's and out of the in-use window
 * (a reader may be walking a tree whose archive was evicted); returns the bytes removed.
 */
async function removeExtractionsOf(
  policy: SublayerPolicy,
  extractions: readonly ScannedExtraction[],
  report: PruneReport,
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
      report.removed.push({ key: extraction.key, path: extraction.path, reason: 'evicted' });
      removedBytes += proof.marker.total_bytes ?? 0;
    }
  }
  return removedBytes;
}
