import type { EntryInfo } from '../index.js';
import { IN_USE_WINDOW_MS, totalBytes } from './sublayers.js';

export interface PrunePlan {
  /** Entries prune() is expected to remove, expired ones first, then evictions in LRU order. */
  readonly remove: { readonly entry: EntryInfo; readonly reason: 'expired' | 'evicted' }[];
  /** Entries that are expired or over the limits but used too recently to be removed. */
  readonly keep: { readonly entry: EntryInfo; readonly reason: 'recently-used' }[];
}

/**
 * Forecasts what `prune()` will do to one sublayer's entries, by the same rules (DESIGN.md section 6):
 * expired entries go unless used within the in-use window; then, least recently used first, entries go
 * while the sublayer is over `keepN` or `maxBytes`, again sparing recently used ones. It cannot see held
 * locks or orphans, so prune() may keep an entry listed here (a writer holds it) and removes orphans too.
 */
export function planPrune(
  entries: readonly EntryInfo[],
  limits: { keepN: number; maxBytes: number },
  nowMs: number,
  inUseWindowMs = IN_USE_WINDOW_MS,
): PrunePlan {
  const plan: PrunePlan = { remove: [], keep: [] };
  const recentlyUsed = (entry: EntryInfo) => entry.lastUsedAt.getTime() > nowMs - inUseWindowMs;
  const spare = (entry: EntryInfo) => {
    if (!plan.keep.some((kept) => kept.entry === entry)) plan.keep.push({ entry, reason: 'recently-used' });
  };
  const remaining: EntryInfo[] = [];
  for (const entry of entries) {
    if (entry.expired && !recentlyUsed(entry)) {
      plan.remove.push({ entry, reason: 'expired' });
      continue;
    }
    if (entry.expired) spare(entry);
    remaining.push(entry);
  }
  let count = remaining.length;
  let bytes = totalBytes(remaining);
  for (const entry of leastRecentlyUsedFirst(remaining)) {
    if (count <= limits.keepN && bytes <= limits.maxBytes) break;
    if (recentlyUsed(entry)) {
      spare(entry);
      continue;
    }
    plan.remove.push({ entry, reason: 'evicted' });
    count -= 1;
    bytes -= entry.sizeBytes;
  }
  return plan;
}

/** The library's eviction order: least recently used first, ties broken by key. */
function leastRecentlyUsedFirst(entries: readonly EntryInfo[]): EntryInfo[] {
  return [...entries].sort(
    (a, b) => a.lastUsedAt.getTime() - b.lastUsedAt.getTime() || (a.key < b.key ? -1 : 1),
  );
}
