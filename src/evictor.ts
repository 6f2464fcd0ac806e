import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import { assertRealDir, errorCode, removeFile } from './atomic-writer.js';
import { classifyName, type EntryPaths, entryPaths, MANIFEST_SUFFIX } from './entry-paths.js';
import { lookupEntry } from './entry-store.js';
import {
  describesKey,
  type Freshness,
  isExpired,
  type Manifest,
  parseTimestamp,
  readManifest,
} from './manifest.js';
import { tryLock } from './soft-lock.js';
import type { EntryInfo, PruneReport, RemovalReason, ReportItem, VerifyReport } from './types.js';

/** What the janitor needs to know about one sublayer and the moment it runs. */
export interface SublayerPolicy {
  readonly dir: string;
  readonly keepN: number;
  readonly maxBytes: number;
  readonly lockStaleMs: number;
  readonly staleTmpMs: number;
  /** Entries used this recently may be in use by a reader: `touchIntervalMs + evictionGraceMs`. */
  readonly inUseWindowMs: number;
  readonly freshness: Freshness;
}

/** A committed-looking entry: payload and manifest are both present by name. */
export interface ScannedEntry {
  readonly paths: EntryPaths;
  readonly sizeBytes: number;
  readonly lastUsedAtMs: number;
}

interface SublayerScan {
  entries: ScannedEntry[];
  /** Payloads with no manifest beside them (or not regular files), with their age. */
  lonePayloads: { paths: EntryPaths; mtimeMs: number }[];
  /** Manifests with no payload beside them. */
  loneManifests: EntryPaths[];
  tmpFiles: { path: string; mtimeMs: number }[];
  locks: EntryPaths[];
}

/** Lists a sublayer by name and payload `lstat` only: no manifest is read, so it stays cheap at 10,000 entries. */
export async function scanSublayer(dir: string): Promise<SublayerScan> {
  const scan: SublayerScan = { entries: [], lonePayloads: [], loneManifests: [], tmpFiles: [], locks: [] };
  let names: string[];
  try {
    await assertRealDir(dir);
    names = await fsp.readdir(dir);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return scan;
    throw error;
  }
  const present = new Set(names);
  await forEachLimited(names, 64, async (name) => {
    const kind = classifyName(name);
    if (kind.kind === 'tmp') {
      const stats = await lstatOrUndefined(path.join(dir, name));
      if (stats) scan.tmpFiles.push({ path: path.join(dir, name), mtimeMs: stats.mtimeMs });
    } else if (kind.kind === 'lock') {
      scan.locks.push(entryPaths(dir, kind.key));
    } else if (kind.kind === 'manifest' && !present.has(kind.key)) {
      scan.loneManifests.push(entryPaths(dir, kind.key));
    } else if (kind.kind === 'payload') {
      const paths = entryPaths(dir, kind.key);
      const stats = await lstatOrUndefined(paths.payload);
      if (!stats) return;
      if (stats.isFile() && present.has(path.basename(paths.manifest))) {
        scan.entries.push({ paths, sizeBytes: stats.size, lastUsedAtMs: stats.mtimeMs });
      } else {
        scan.lonePayloads.push({ paths, mtimeMs: stats.mtimeMs });
      }
    }
  });
  return scan;
}

/**
 * Once over `keepN`, eviction goes 1 % further, so that in a large sublayer the next writes find it under
 * the limit by name alone instead of stating every payload again (keepN stays a maximum).
 */
export function lowWaterMark(keepN: number): number {
  return keepN === Number.POSITIVE_INFINITY ? keepN : keepN - Math.floor(keepN / 100);
}

/** Committed-looking entries counted from one `readdir`: names with both a payload and a manifest. */
async function countByName(dir: string): Promise<number> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  const present = new Set(names);
  let count = 0;
  for (const name of names) {
    if (name.endsWith(MANIFEST_SUFFIX) && present.has(name.slice(0, -MANIFEST_SUFFIX.length))) count += 1;
  }
  return count;
}

/** Least recently used first; ties broken by key so the order is stable. */
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
 * Removes least-recently-used entries while the sublayer is over `keepN` or `maxBytes`, skipping the key
 * just written, entries used within the in-use window, and entries whose lock is held. The limits are
 * therefore targets that protected entries can exceed for a while.
 */
export async function evict(
  policy: SublayerPolicy,
  justWrittenKey: string | undefined,
  scan?: SublayerScan,
): Promise<PruneReport> {
  const report: PruneReport = { removed: [], kept: [] };
  // Without a byte limit, names alone tell whether anything must go: no stat of every payload per write.
  if (
    !scan &&
    policy.maxBytes === Number.POSITIVE_INFINITY &&
    (await countByName(policy.dir)) <= policy.keepN
  ) {
    return report;
  }
  const { entries } = scan ?? (await scanSublayer(policy.dir));
  let count = entries.length;
  let bytes = entries.reduce((sum, entry) => sum + entry.sizeBytes, 0);
  const countLimit = count > policy.keepN ? lowWaterMark(policy.keepN) : policy.keepN;
  const overLimits = () => count > countLimit || bytes > policy.maxBytes;
  const nowMs = policy.freshness.nowMs;
  for (const entry of evictionOrder(entries)) {
    if (!overLimits()) break;
    const shield = evictionShield(entry, justWrittenKey, nowMs, policy.inUseWindowMs);
    if (shield) {
      report.kept.push({ key: entry.paths.key, reason: shield });
      continue;
    }
    const removed = await withEntryLock(entry.paths, policy, async () => {
      // A hit since the scan may have made it recently used.
      const current = await lstatOrUndefined(entry.paths.payload);
      if (current && current.mtimeMs > nowMs - policy.inUseWindowMs) return false;
      await removeEntry(entry.paths);
      return true;
    });
    if (removed === undefined) report.kept.push({ key: entry.paths.key, reason: 'locked' });
    else if (removed) {
      report.removed.push({ key: entry.paths.key, path: entry.paths.payload, reason: 'evicted' });
      count -= 1;
      bytes -= entry.sizeBytes;
    } else report.kept.push({ key: entry.paths.key, reason: 'recently-used' });
  }
  return report;
}

/**
 * Removes orphans: tmp files older than `staleTmpMs`, payloads without a valid manifest older than
 * `staleTmpMs`, manifests without a payload, and stale locks. Never a live lock or a young tmp file.
 */
export async function sweepOrphans(policy: SublayerPolicy, scan?: SublayerScan): Promise<ReportItem[]> {
  const found = scan ?? (await scanSublayer(policy.dir));
  const removed: ReportItem[] = [];
  const oldBefore = policy.freshness.nowMs - policy.staleTmpMs;
  for (const tmp of found.tmpFiles) {
    if (tmp.mtimeMs >= oldBefore) continue;
    await fsp.rm(tmp.path, { recursive: true, force: true });
    removed.push({ path: tmp.path, reason: 'orphan-tmp' });
  }
  for (const { paths, mtimeMs } of found.lonePayloads) {
    if (mtimeMs >= oldBefore) continue;
    if (await withEntryLock(paths, policy, () => removeFile(paths.payload))) {
      removed.push({ key: paths.key, path: paths.payload, reason: 'orphan-payload' });
    }
  }
  for (const entry of found.entries) {
    if (entry.lastUsedAtMs >= oldBefore) continue;
    const manifest = await readManifest(entry.paths.manifest);
    if (manifest && manifest.size_bytes === entry.sizeBytes && describesKey(manifest, entry.paths.key))
      continue;
    if (await withEntryLock(entry.paths, policy, () => removeEntry(entry.paths))) {
      removed.push({ key: entry.paths.key, path: entry.paths.payload, reason: 'orphan-payload' });
    }
  }
  for (const paths of found.loneManifests) {
    if (await withEntryLock(paths, policy, () => removeFile(paths.manifest))) {
      removed.push({ key: paths.key, path: paths.manifest, reason: 'orphan-manifest' });
    }
  }
  removed.push(...(await removeStaleLocks(found.locks, policy)));
  return removed;
}

async function removeStaleLocks(locks: EntryPaths[], policy: SublayerPolicy): Promise<ReportItem[]> {
  const removed: ReportItem[] = [];
  for (const paths of locks) {
    // Taking a stale lock over removes it; releasing ours removes the directory.
    const held = await tryLock(paths.lock, policy.lockStaleMs).catch(() => undefined);
    if (!held) continue;
    await held.release();
    removed.push({ key: paths.key, path: paths.lock, reason: 'stale-lock' });
  }
  return removed;
}

/** Expired entries (outside the in-use window and not locked), orphans, then eviction down to the limits. */
export async function prune(policy: SublayerPolicy): Promise<PruneReport> {
  const scan = await scanSublayer(policy.dir);
  const removed: ReportItem[] = [];
  const kept: PruneReport['kept'] = [];
  const remaining: ScannedEntry[] = [];
  const manifests = new Map<ScannedEntry, Manifest | undefined>();
  await forEachLimited(scan.entries, 64, async (entry) => {
    manifests.set(entry, await readManifest(entry.paths.manifest));
  });
  for (const entry of scan.entries) {
    const manifest = manifests.get(entry);
    if (!manifest || !isExpired(manifest, policy.freshness)) {
      remaining.push(entry);
      continue;
    }
    if (evictionShield(entry, undefined, policy.freshness.nowMs, policy.inUseWindowMs)) {
      kept.push({ key: entry.paths.key, reason: 'recently-used' });
      remaining.push(entry);
      continue;
    }
    const done = await withEntryLock(entry.paths, policy, () => removeEntry(entry.paths));
    if (done) removed.push({ key: entry.paths.key, path: entry.paths.payload, reason: 'expired' });
    else {
      kept.push({ key: entry.paths.key, reason: 'locked' });
      remaining.push(entry);
    }
  }
  removed.push(...(await sweepOrphans(policy, { ...scan, entries: remaining })));
  const eviction = await evict(policy, undefined, {
    ...scan,
    entries: remaining.filter(stillPresent(removed)),
  });
  return { removed: [...removed, ...eviction.removed], kept: [...kept, ...eviction.kept] };
}

function stillPresent(removed: ReportItem[]) {
  const gone = new Set(removed.map((item) => item.key));
  return (entry: ScannedEntry) => !gone.has(entry.paths.key);
}

/**
 * Removes every committed entry and every orphan. A key whose lock is held by a live writer loses only
 * its manifest (which makes it a miss): its payload may be the one that writer is about to name in its
 * new manifest. Live locks and tmp files younger than `staleTmpMs` are never touched.
 */
export async function clearSublayer(policy: SublayerPolicy): Promise<ReportItem[]> {
  const scan = await scanSublayer(policy.dir);
  const removed: ReportItem[] = [];
  const keyed = [...scan.entries.map((entry) => entry.paths), ...scan.lonePayloads.map((lone) => lone.paths)];
  for (const paths of [...keyed, ...scan.loneManifests]) {
    const whole = await withEntryLock(paths, policy, () => removeEntry(paths));
    if (whole === undefined && (await removeFile(paths.manifest))) {
      removed.push({ key: paths.key, path: paths.manifest, reason: 'cleared' });
    } else if (whole) {
      removed.push({ key: paths.key, path: paths.payload, reason: 'cleared' });
    }
  }
  removed.push(
    ...(await sweepOrphans(policy, { ...scan, entries: [], lonePayloads: [], loneManifests: [] })),
  );
  return removed;
}

/** Re-hashes every payload against its manifest; with `fix`, removes bad entries and old orphans. */
export async function verifySublayer(policy: SublayerPolicy, fix: boolean): Promise<VerifyReport> {
  const scan = await scanSublayer(policy.dir);
  const report: VerifyReport = { checked: 0, bad: [], removed: [] };
  for (const entry of scan.entries) {
    const manifest = await readManifest(entry.paths.manifest);
    const problem = manifest ? await payloadProblem(entry, manifest) : 'size-mismatch';
    if (!problem) {
      report.checked += 1;
      continue;
    }
    const item: ReportItem = { key: entry.paths.key, path: entry.paths.payload, reason: problem };
    report.bad.push(item);
    if (fix && (await withEntryLock(entry.paths, policy, () => removeEntry(entry.paths))))
      report.removed.push(item);
  }
  const oldBefore = policy.freshness.nowMs - policy.staleTmpMs;
  for (const tmp of scan.tmpFiles) {
    if (tmp.mtimeMs < oldBefore) report.bad.push({ path: tmp.path, reason: 'orphan-tmp' });
  }
  for (const { paths, mtimeMs } of scan.lonePayloads) {
    if (mtimeMs < oldBefore)
      report.bad.push({ key: paths.key, path: paths.payload, reason: 'orphan-payload' });
  }
  for (const paths of scan.loneManifests) {
    report.bad.push({ key: paths.key, path: paths.manifest, reason: 'orphan-manifest' });
  }
  if (fix) report.removed.push(...(await sweepOrphans(policy, { ...scan, entries: [] })));
  return report;
}

async function payloadProblem(entry: ScannedEntry, manifest: Manifest): Promise<RemovalReason | undefined> {
  if (!describesKey(manifest, entry.paths.key)) return 'wrong-key';
  if (manifest.size_bytes !== entry.sizeBytes) return 'size-mismatch';
  if (!manifest.sha256) return undefined;
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(entry.paths.payload)) hash.update(chunk as Buffer);
  return hash.digest('hex') === manifest.sha256 ? undefined : 'hash-mismatch';
}

/** Deletes manifest first, then payload: a crash in between leaves an orphan payload (a miss), never a lie. */
export async function removeEntry(paths: EntryPaths): Promise<boolean> {
  const hadManifest = await removeFile(paths.manifest);
  const hadPayload = await removeFile(paths.payload);
  return hadManifest || hadPayload;
}

/** Runs `action` holding the entry's lock; `undefined` (and nothing run) when someone else holds it. */
async function withEntryLock<T>(
  paths: EntryPaths,
  policy: SublayerPolicy,
  action: () => Promise<T>,
): Promise<T | undefined> {
  const held = await tryLock(paths.lock, policy.lockStaleMs);
  if (!held) return undefined;
  try {
    return await action();
  } finally {
    await held.release();
  }
}

async function lstatOrUndefined(filePath: string): Promise<Stats | undefined> {
  try {
    return await fsp.lstat(filePath);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  }
}

async function forEachLimited<T>(items: T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Committed entries (fresh and expired) with their facts, most recently used first. */
export async function listEntries(dir: string, freshness: Freshness): Promise<EntryInfo[]> {
  const { entries } = await scanSublayer(dir);
  const infos: (EntryInfo | undefined)[] = [];
  await forEachLimited(entries, 64, async ({ paths }) => {
    const found = await lookupEntry(paths, freshness);
    if (found.state === 'absent') return;
    infos.push({
      key: paths.key,
      path: paths.payload,
      sizeBytes: found.sizeBytes,
      createdAt: new Date(parseTimestamp(found.manifest.created_at)),
      lastUsedAt: new Date(found.lastUsedAtMs),
      expired: found.state === 'expired',
      ...(found.manifest.sha256 ? { sha256: found.manifest.sha256 } : {}),
    });
  });
  return infos
    .filter((info): info is EntryInfo => info !== undefined)
    .sort((a, b) => b.lastUsedAt.getTime() - a.lastUsedAt.getTime());
}
