import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { type EntryPaths, entryPaths, extractionOfName, MANIFEST_SUFFIX } from './entry-paths.js';
import { lastUsedAtMs, lookupEntry, removeEntryIfUnchanged, retireManifest } from './entry-store.js';
import { ForeignFileError, InvalidOptionsError } from './errors.js';
import { evictionShield, inEvictionOrder } from './evictor.js';
import {
  checkExtractionFiles,
  extractionBytesByKey,
  proveExtraction,
  provePublishedExtraction,
  removeExtractionIfUnchanged,
  removeExtractionTree,
} from './extraction-on-disk.js';
import { type CreateModes, errorCode, lstatOrUndefined, removeFile, sha256OfFile } from './file-system.js';
import {
  describesKey,
  type Freshness,
  isExpired,
  type Manifest,
  parseManifest,
  readManifestText,
} from './manifest.js';
import { isLockHeld, isOwnLockDir, removeLockDir, tryLock, whileLocked } from './soft-lock.js';
import {
  forEachLimited,
  type LonePayload,
  type ScannedEntry,
  type ScannedExtraction,
  type SublayerScan,
  scanSublayer,
  type TmpObject,
} from './sublayer-scan.js';
import type {
  ForeignItem,
  JanitorPlan,
  KeptItem,
  PlannedRemoval,
  PruneReport,
  RemovalReason,
  ReportItem,
  VerifyReport,
} from './types.js';

/**
 * The janitor: prune, clear, the background sweep and verify's fix. Each works in two steps. A plan is made
 * from one look at the sublayer and changes nothing (a dry run is a plan). Carrying it out removes exactly
 * the planned items and nothing else, each only after re-checking, under its lock where it has one, that it
 * is still what the plan saw. Only what the cache can prove it wrote is ever planned (DESIGN.md section 6):
 * entries with a valid manifest, orphans of the cache's own shapes, and lock directories holding only the
 * lock's own files. The rest is foreign: reported, never touched.
 */

/** What the janitor needs to know about one sublayer and the moment it runs. */
export interface SublayerPolicy {
  readonly dir: string;
  readonly keepN: number;
  readonly maxBytes: number;
  readonly lockStaleMs: number;
  readonly staleTmpMs: number;
  /** Entries whose recorded use is this recent may be in use by a reader: `2 × touchIntervalMs + evictionGraceMs`. */
  readonly inUseWindowMs: number;
  readonly freshness: Freshness;
  /** Modes for the lock directories the janitor creates (a group-shared cache); `undefined`: the umask's. */
  readonly modes?: CreateModes | undefined;
}

/** The facts a planned removal is re-checked against just before it is carried out. */
type Check =
  | { kind: 'entry'; paths: EntryPaths; manifestText: string; sizeBytes: number; lastUsedAtMs?: number }
  | { kind: 'cleared-entry'; paths: EntryPaths; manifestText: string; sizeBytes: number }
  | { kind: 'lone-payload'; paths: EntryPaths; sizeBytes: number; mtimeMs: number; proof: string }
  | { kind: 'lone-manifest'; paths: EntryPaths; manifestText: string }
  | { kind: 'tmp'; path: string; mtimeMs: number; isDirectory: boolean }
  | { kind: 'lock'; paths: EntryPaths }
  | { kind: 'extraction'; path: string; lock: string; markerText: string; lastUsedAtMs?: number }
  | { kind: 'extraction-tmp'; path: string; lock: string; key: string; shaPrefix: string };

// Only plans made here can be carried out: a removal without its recorded check is never acted on.
const checks = new WeakMap<PlannedRemoval, Check>();

class PlanBuilder {
  readonly remove: PlannedRemoval[] = [];
  readonly kept: KeptItem[] = [];
  readonly foreign: ForeignItem[] = [];

  constructor(readonly dir: string) {}

  add(removal: PlannedRemoval, check: Check): void {
    this.remove.push(removal);
    checks.set(removal, check);
  }

  removeEntry(entry: ReadEntry, reason: RemovalReason, check: Check): void {
    this.add(
      {
        key: entry.paths.key,
        path: entry.paths.payload,
        reason,
        sizeBytes: entry.sizeBytes,
        lastUsedAt: new Date(entry.lastUsedAtMs),
      },
      check,
    );
  }

  plan(): JanitorPlan {
    return { dir: this.dir, remove: this.remove, kept: this.kept, foreign: this.foreign };
  }
}

/** A scanned entry with its manifest read: valid, ours but broken, or not a payload-cache manifest. */
interface ReadEntry extends ScannedEntry {
  readonly manifestText: string;
  readonly manifest: Manifest | undefined;
  /** Why a manifest of ours does not describe this payload; `undefined` when it does. */
  readonly mismatch: 'size-mismatch' | 'wrong-key' | undefined;
}

async function readEntries(entries: readonly ScannedEntry[], builder: PlanBuilder): Promise<ReadEntry[]> {
  const read: ReadEntry[] = [];
  await forEachLimited(entries, 64, async (entry) => {
    const manifestText = await readManifestText(entry.paths.manifest);
    if (manifestText === undefined) return; // gone since the scan
    const manifest = parseManifest(manifestText);
    if (!manifest) {
      builder.foreign.push({ path: entry.paths.manifest, reason: 'invalid-manifest' });
      return;
    }
    const mismatch = !describesKey(manifest, entry.paths.key)
      ? 'wrong-key'
      : manifest.size_bytes !== entry.sizeBytes
        ? 'size-mismatch'
        : undefined;
    read.push({ ...entry, manifestText, manifest, mismatch });
  });
  return read;
}

interface OrphanRules {
  /** Remove lone payloads the cache can prove it wrote at any age, not only once older than `staleTmpMs`. */
  readonly lonePayloadsAtAnyAge: boolean;
}

/**
 * Plans the removal of orphans: tmp files and lock leftovers older than `staleTmpMs`, lone payloads a
 * record proves the cache wrote (its pending manifest or the tombstone of its retired one), manifests of
 * ours without a payload, and stale locks. Keys whose lock is held are in flight and left alone.
 */
async function planOrphans(
  policy: SublayerPolicy,
  scan: SublayerScan,
  builder: PlanBuilder,
  rules: OrphanRules,
): Promise<void> {
  const oldBefore = orphanAgeLimit(policy);
  const records = scan.lonePayloads.length > 0 ? await manifestRecords(scan) : new Map<string, Record[]>();
  const proofsInUse = new Set<string>();
  for (const lone of scan.lonePayloads) {
    const proof = records.get(lone.paths.key)?.find((record) => record.sizeBytes === lone.sizeBytes);
    if (!proof) {
      builder.foreign.push({ path: lone.paths.payload, reason: 'unproven-payload' });
      continue;
    }
    proofsInUse.add(proof.path);
    if (!rules.lonePayloadsAtAnyAge && lone.mtimeMs >= oldBefore) continue;
    if (await isLockHeld(lone.paths.lock, policy.lockStaleMs)) continue;
    builder.add(lonePayloadRemoval(lone), { kind: 'lone-payload', ...lone, proof: proof.path });
  }
  for (const paths of scan.loneManifests) {
    const manifestText = await readManifestText(paths.manifest);
    if (manifestText === undefined) continue;
    const manifest = parseManifest(manifestText);
    if (!manifest || !describesKey(manifest, paths.key)) {
      builder.foreign.push({ path: paths.manifest, reason: 'invalid-manifest' });
    } else if (!(await isLockHeld(paths.lock, policy.lockStaleMs))) {
      const removal: PlannedRemoval = {
        key: paths.key,
        path: paths.manifest,
        reason: 'orphan-manifest',
        sizeBytes: 0,
      };
      builder.add(removal, { kind: 'lone-manifest', paths, manifestText });
    }
  }
  for (const tmp of scan.tmpObjects) {
    if (tmp.mtimeMs >= oldBefore || proofsInUse.has(tmp.path)) continue;
    if (tmp.extraction) {
      await planTmpExtraction(policy, tmp, tmp.extraction, builder);
      continue;
    }
    if (tmp.isDirectory && !(await isOwnLockDir(tmp.path).catch(() => false))) {
      builder.foreign.push({ path: tmp.path, reason: 'foreign-lock' });
      continue;
    }
    builder.add({ path: tmp.path, reason: 'orphan-tmp', sizeBytes: tmp.sizeBytes }, { kind: 'tmp', ...tmp });
  }
  for (const paths of scan.locks) {
    if (!(await isOwnLockDir(paths.lock).catch(() => false))) {
      builder.foreign.push({ path: paths.lock, reason: 'foreign-lock' });
    } else if (!(await isLockHeld(paths.lock, policy.lockStaleMs))) {
      builder.add(
        { key: paths.key, path: paths.lock, reason: 'stale-lock', sizeBytes: 0 },
        { kind: 'lock', paths },
      );
    }
  }
}

/**
 * An extraction's tmp directory, older than `staleTmpMs`: one that was being built (or removed) when its
 * writer died. Removable only when its marker proves it is the cache's (or it is empty) and the key's lock
 * is free: a live extraction holds that lock, and its directory's own mtime does not move while it writes
 * deeper down.
 */
async function planTmpExtraction(
  policy: SublayerPolicy,
  tmp: TmpObject,
  name: NonNullable<TmpObject['extraction']>,
  builder: PlanBuilder,
): Promise<void> {
  if (!(await proveExtraction(tmp.path, name.key, name.shaPrefix))) {
    builder.foreign.push({ path: tmp.path, reason: 'unproven-extraction' });
    return;
  }
  const { lock } = entryPaths(policy.dir, name.key);
  if (await isLockHeld(lock, policy.lockStaleMs)) return;
  builder.add(
    { key: name.key, path: tmp.path, reason: 'orphan-tmp', sizeBytes: 0 },
    { kind: 'extraction-tmp', path: tmp.path, lock, key: name.key, shaPrefix: name.shaPrefix },
  );
}

/**
 * Plans the removal of published extractions. `clear`: every one the cache can prove it made. Otherwise
 * (prune, sweep): those whose entry goes in this plan (`goingWithEntry`, with the entry's reason), those
 * whose archive is gone (`orphan-extraction`) and those of an older archive than the entry's
 * (`superseded`), but never one used within the in-use window (a reader may be walking its tree) nor one
 * whose key's lock is held. The current extraction of an entry that stays is kept.
 */
async function planExtractions(
  policy: SublayerPolicy,
  extractions: readonly ScannedExtraction[],
  builder: PlanBuilder,
  mode: 'clear' | 'prune',
  goingWithEntry: ReadonlyMap<string, RemovalReason> = new Map(),
): Promise<void> {
  for (const extraction of extractions) {
    const { key, path: dir } = extraction;
    const proof = await provePublishedExtraction(extraction);
    if (!proof) {
      builder.foreign.push({ path: dir, reason: 'unproven-extraction' });
      continue;
    }
    const { lock } = entryPaths(policy.dir, key);
    const removal = {
      key,
      path: dir,
      sizeBytes: proof.marker.total_bytes ?? 0,
      lastUsedAt: new Date(proof.lastUsedAtMs),
    };
    const check = { kind: 'extraction' as const, path: dir, lock, markerText: proof.markerText };
    if (mode === 'clear') {
      builder.add({ ...removal, reason: 'cleared' }, check);
      continue;
    }
    // An older archive's extraction is `superseded` even when its entry goes too; the entry's current one
    // goes with the entry's reason.
    const reason =
      (await extractionStaleness(policy, key, proof.marker.archive_sha256)) ?? goingWithEntry.get(key);
    if (reason === undefined) continue;
    if (proof.lastUsedAtMs > policy.freshness.nowMs - policy.inUseWindowMs) {
      builder.kept.push({ key, reason: 'recently-used' });
    } else if (await isLockHeld(lock, policy.lockStaleMs)) {
      builder.kept.push({ key, reason: 'locked' });
    } else {
      builder.add({ ...removal, reason }, { ...check, lastUsedAtMs: proof.lastUsedAtMs });
    }
  }
}

/** Why an extraction of `archiveSha256` no longer serves `key`'s entry, or `undefined` when it does. */
async function extractionStaleness(
  policy: SublayerPolicy,
  key: string,
  archiveSha256: string,
): Promise<'orphan-extraction' | 'superseded' | undefined> {
  const found = await lookupEntry(entryPaths(policy.dir, key), policy.freshness);
  if (found.state === 'absent') return 'orphan-extraction';
  // An old manifest without sha256 (imf_reader) cannot say which extraction is its own: keep them all.
  const current = found.manifest.sha256;
  return current === undefined || current === archiveSha256 ? undefined : 'superseded';
}

/**
 * Files last changed before this are old enough to be orphans. A tmp file's mtime comes from the real clock
 * (the file system sets it while a writer streams), a sealed payload's from the manager's `now`: judged by
 * the earlier of the two clocks, a `now` running ahead of the real one never makes a live write look old.
 */
function orphanAgeLimit(policy: SublayerPolicy): number {
  return Math.min(policy.freshness.nowMs, Date.now()) - policy.staleTmpMs;
}

function lonePayloadRemoval(lone: LonePayload): PlannedRemoval {
  return {
    key: lone.paths.key,
    path: lone.paths.payload,
    reason: 'orphan-payload',
    sizeBytes: lone.sizeBytes,
    lastUsedAt: new Date(lone.mtimeMs),
  };
}

interface Record {
  readonly path: string;
  readonly sizeBytes: number;
}

/**
 * Manifests the cache left under tmp names: a commit's pending manifest and a removal's tombstone. Either
 * names its key and payload size, and so proves that a lone payload of that key and size is the cache's.
 */
async function manifestRecords(scan: SublayerScan): Promise<Map<string, Record[]>> {
  const byKey = new Map<string, Record[]>();
  const small = scan.tmpObjects.filter((tmp) => !tmp.isDirectory && tmp.sizeBytes <= 64 * 1024);
  await forEachLimited(small, 16, async (tmp) => {
    const text = await readManifestText(tmp.path);
    const manifest = text === undefined ? undefined : parseManifest(text);
    if (manifest?.key === undefined) return;
    const list = byKey.get(manifest.key) ?? [];
    list.push({ path: tmp.path, sizeBytes: manifest.size_bytes });
    byKey.set(manifest.key, list);
  });
  return byKey;
}

/**
 * Plans `prune()`: expired entries (outside the in-use window and not locked), broken entries of ours and
 * orphans older than `staleTmpMs`, then least recently used entries while the sublayer is over `keepN`
 * entries or `maxBytes` bytes. The limits are exact: eviction stops as soon as the sublayer is within them.
 */
export async function planPrune(policy: SublayerPolicy): Promise<JanitorPlan> {
  const builder = new PlanBuilder(policy.dir);
  const scan = await scanSublayer(policy.dir);
  builder.foreign.push(...scan.foreign);
  const entries = await readEntries(scan.entries, builder);
  const oldBefore = orphanAgeLimit(policy);
  const remaining: ReadEntry[] = [];
  for (const entry of entries) {
    const { manifest, mismatch } = entry;
    if (mismatch) {
      if (entry.lastUsedAtMs < oldBefore && !(await isLockHeld(entry.paths.lock, policy.lockStaleMs))) {
        builder.removeEntry(entry, mismatch, entryCheck(entry));
      }
      continue;
    }
    if (!manifest || !isExpired(manifest, policy.freshness)) {
      remaining.push(entry);
      continue;
    }
    const shield = await protection(entry, policy);
    if (shield) {
      builder.kept.push({ key: entry.paths.key, reason: shield });
      remaining.push(entry);
    } else builder.removeEntry(entry, 'expired', entryCheck(entry, entry.lastUsedAtMs));
  }
  await planOrphans(policy, scan, builder, { lonePayloadsAtAnyAge: false });
  await planEviction(policy, remaining, builder, await extractionBytesByKey(scan.extractions));
  await planExtractions(policy, scan.extractions, builder, 'prune', entriesGoing(builder.remove));
  return builder.plan();
}

/** The keys whose entry a plan removes, with the reason, so that their extractions go with them. */
function entriesGoing(removals: readonly PlannedRemoval[]): Map<string, RemovalReason> {
  const going = new Map<string, RemovalReason>();
  for (const removal of removals) {
    if (removal.key !== undefined && ENTRY_REASONS.has(removal.reason))
      going.set(removal.key, removal.reason);
  }
  return going;
}

const ENTRY_REASONS: ReadonlySet<RemovalReason> = new Set([
  'expired',
  'evicted',
  'size-mismatch',
  'wrong-key',
]);

/** `extractionBytes`: what each key's extractions add to its entry's bytes (they go with it). */
async function planEviction(
  policy: SublayerPolicy,
  entries: ReadEntry[],
  builder: PlanBuilder,
  extractionBytes: ReadonlyMap<string, number>,
): Promise<void> {
  const bytesOf = (entry: ReadEntry) => entry.sizeBytes + (extractionBytes.get(entry.paths.key) ?? 0);
  let count = entries.length;
  let bytes = entries.reduce((sum, entry) => sum + bytesOf(entry), 0);
  for (const entry of inEvictionOrder(entries)) {
    if (count <= policy.keepN && bytes <= policy.maxBytes) break;
    const shield = await protection(entry, policy);
    if (shield) {
      if (!builder.kept.some((kept) => kept.key === entry.paths.key))
        builder.kept.push({ key: entry.paths.key, reason: shield });
      continue;
    }
    builder.removeEntry(entry, 'evicted', entryCheck(entry, entry.lastUsedAtMs));
    count -= 1;
    bytes -= bytesOf(entry);
  }
}

/** Why an entry may not be removed for disuse now: recently used, or locked by a writer. */
async function protection(
  entry: ScannedEntry,
  policy: SublayerPolicy,
): Promise<KeptItem['reason'] | undefined> {
  const shield = evictionShield(entry, undefined, policy.freshness.nowMs, policy.inUseWindowMs);
  if (shield) return shield;
  return (await isLockHeld(entry.paths.lock, policy.lockStaleMs)) ? 'locked' : undefined;
}

function entryCheck(entry: ReadEntry, lastUsedAtMs?: number): Check {
  return {
    kind: 'entry',
    paths: entry.paths,
    manifestText: entry.manifestText,
    sizeBytes: entry.sizeBytes,
    ...(lastUsedAtMs === undefined ? {} : { lastUsedAtMs }),
  };
}

/**
 * Plans `clear()`: every entry of ours, fresh or expired, broken or not, whatever its last use; lone
 * payloads the cache can prove it wrote and manifests without payload, at any age; tmp files and lock
 * leftovers older than `staleTmpMs` and stale locks. Never a live lock nor a younger tmp file.
 */
export async function planClear(policy: SublayerPolicy): Promise<JanitorPlan> {
  const builder = new PlanBuilder(policy.dir);
  const scan = await scanSublayer(policy.dir);
  builder.foreign.push(...scan.foreign);
  for (const entry of await readEntries(scan.entries, builder)) {
    const check: Check = {
      kind: 'cleared-entry',
      paths: entry.paths,
      manifestText: entry.manifestText,
      sizeBytes: entry.sizeBytes,
    };
    builder.removeEntry(entry, 'cleared', check);
  }
  await planOrphans(policy, scan, builder, { lonePayloadsAtAnyAge: true });
  await planExtractions(policy, scan.extractions, builder, 'clear');
  return builder.plan();
}

/** Plans the background sweep: orphans only, by the same rules as `prune()`. */
export async function planSweep(policy: SublayerPolicy): Promise<JanitorPlan> {
  const builder = new PlanBuilder(policy.dir);
  const scan = await scanSublayer(policy.dir);
  await planOrphans(policy, scan, builder, { lonePayloadsAtAnyAge: false });
  await planExtractions(policy, scan.extractions, builder, 'prune');
  return builder.plan();
}

/**
 * Carries out a plan made by {@link planPrune}, {@link planClear} or {@link planSweep} for this sublayer:
 * exactly its removals, each re-checked just before it is acted on. A removal whose file changed since the
 * plan is reported as kept (`changed`, `recently-used` or `locked`) and left in place.
 */
export async function carryOut(policy: SublayerPolicy, plan: JanitorPlan): Promise<PruneReport> {
  if (plan.dir !== policy.dir) {
    throw new InvalidOptionsError(`this plan is for ${plan.dir}, not for ${policy.dir}`);
  }
  const report: PruneReport = { removed: [], kept: [...plan.kept], foreign: [...plan.foreign] };
  for (const removal of plan.remove) {
    const check = checks.get(removal);
    if (!check)
      throw new InvalidOptionsError('carryOut() takes only plans made by planPrune() or planClear()');
    try {
      const outcome = await execute(check, policy);
      if (outcome === 'removed') report.removed.push(reportItem(removal));
      else if (outcome === 'manifest-retired') {
        report.removed.push({ ...reportItem(removal), path: `${removal.path}${MANIFEST_SUFFIX}` });
      } else if (outcome !== 'gone' && removal.key !== undefined) {
        report.kept.push({ key: removal.key, reason: outcome });
      }
    } catch (error) {
      // Swapped for something that is not ours since the plan: it stays, and it is reported as such.
      if (!(error instanceof ForeignFileError)) throw error;
      report.foreign.push({ path: error.path, reason: 'not-a-regular-file' });
    }
  }
  return report;
}

function reportItem({ key, path, reason }: PlannedRemoval): ReportItem {
  return key === undefined ? { path, reason } : { key, path, reason };
}

type Outcome = 'removed' | 'manifest-retired' | 'gone' | KeptItem['reason'];

async function execute(check: Check, policy: SublayerPolicy): Promise<Outcome> {
  switch (check.kind) {
    case 'entry':
      return removeEntryIfUnchanged(
        check.paths,
        {
          manifestText: check.manifestText,
          sizeBytes: check.sizeBytes,
          ...(check.lastUsedAtMs === undefined
            ? {}
            : {
                lastUsedAtMs: check.lastUsedAtMs,
                inUseWindowMs: policy.inUseWindowMs,
                nowMs: policy.freshness.nowMs,
              }),
        },
        policy.lockStaleMs,
        policy.modes,
      );
    case 'cleared-entry': {
      const outcome = await removeEntryIfUnchanged(check.paths, check, policy.lockStaleMs, policy.modes);
      if (outcome !== 'locked') return outcome;
      // A live writer holds the key: its manifest goes (the key is a miss at once), its payload stays, since
      // that writer may be about to publish over it. The tombstone left behind proves the payload is ours.
      if ((await readManifestText(check.paths.manifest)) !== check.manifestText) return 'changed';
      return (await retireManifest(check.paths.manifest)) ? 'manifest-retired' : 'gone';
    }
    case 'lone-payload': {
      const outcome = await whileLocked(
        check.paths.lock,
        policy.lockStaleMs,
        async () => {
          const [payload, manifest, proof] = await Promise.all(
            [check.paths.payload, check.paths.manifest, check.proof].map(lstatOrUndefined),
          );
          if (manifest || !proof?.isFile() || !payload?.isFile()) return 'changed';
          if (payload.size !== check.sizeBytes || lastUsedAtMs(payload) !== check.mtimeMs) return 'changed';
          await removeFile(check.paths.payload);
          await removeFile(check.proof);
          return 'removed';
        },
        policy.modes,
      );
      return outcome ?? 'locked';
    }
    case 'lone-manifest': {
      const outcome = await whileLocked(
        check.paths.lock,
        policy.lockStaleMs,
        async () => {
          if (await lstatOrUndefined(check.paths.payload)) return 'changed';
          if ((await readManifestText(check.paths.manifest)) !== check.manifestText) return 'changed';
          return (await removeFile(check.paths.manifest)) ? 'removed' : 'gone';
        },
        policy.modes,
      );
      return outcome ?? 'locked';
    }
    case 'tmp': {
      const stats = await lstatOrUndefined(check.path);
      if (!stats) return 'gone';
      if (stats.mtimeMs !== check.mtimeMs || stats.isDirectory() !== check.isDirectory) return 'changed';
      if (check.isDirectory) return (await removeLockDir(check.path)) ? 'removed' : 'changed';
      return (await removeFile(check.path)) ? 'removed' : 'gone';
    }
    case 'extraction': {
      const name = extractionNameOf(check.path);
      if (!name) return 'gone';
      const extraction = { path: check.path, ...name };
      const seen = { markerText: check.markerText, lastUsedAtMs: check.lastUsedAtMs };
      const window = { nowMs: policy.freshness.nowMs, inUseWindowMs: policy.inUseWindowMs };
      return removeExtractionIfUnchanged(
        extraction,
        check.lock,
        seen,
        window,
        policy.lockStaleMs,
        policy.modes,
      );
    }
    case 'extraction-tmp': {
      const outcome = await whileLocked(
        check.lock,
        policy.lockStaleMs,
        async (): Promise<Outcome> => {
          const proof = await proveExtraction(check.path, check.key, check.shaPrefix);
          if (!proof) return 'changed';
          // Proven by being empty, it is removed only while still empty: rmdir never takes a file with it.
          if (proof === 'empty') return removeEmptyDir(check.path);
          return (await removeExtractionTree(check.path)) ? 'removed' : 'gone';
        },
        policy.modes,
      );
      return outcome ?? 'locked';
    }
    case 'lock': {
      // Taking a stale lock over removes it; releasing ours removes the directory. A lock released (not
      // broken by us) meanwhile was no stale lock of ours to report.
      const held = await tryLock(check.paths.lock, policy.lockStaleMs, policy.modes);
      if (!held) return 'locked';
      await held.release();
      return held.tookOver ? 'removed' : 'gone';
    }
  }
}

/**
 * Re-hashes every payload against its manifest and reports what is bad: broken entries, orphans, stale
 * locks. With `fix`, carries out the removal of the bad ones by the rules of `clear()` for orphans (a
 * lone payload proven ours goes at any age unless its lock is held), re-checking each under its lock.
 */
export async function verifySublayer(policy: SublayerPolicy, fix: boolean): Promise<VerifyReport> {
  const builder = new PlanBuilder(policy.dir);
  const scan = await scanSublayer(policy.dir);
  builder.foreign.push(...scan.foreign);
  let checked = 0;
  for (const entry of await readEntries(scan.entries, builder)) {
    const problem = entry.mismatch ?? (await hashMismatch(entry));
    if (problem) builder.removeEntry(entry, problem, entryCheck(entry));
    else checked += 1;
  }
  checked += await verifyExtractions(policy, scan.extractions, builder);
  await planOrphans(policy, scan, builder, { lonePayloadsAtAnyAge: true });
  const plan = builder.plan();
  const bad = plan.remove.map(reportItem);
  const removed = fix ? (await carryOut(policy, plan)).removed : [];
  return { checked, bad, removed, foreign: [...plan.foreign] };
}

/**
 * Checks every published extraction the cache can prove it made, file by file; plans the removal of the bad
 * ones (carried out with `fix`, whatever their last use: their files are not what was extracted). Returns
 * how many passed. Unproven ones are foreign.
 */
async function verifyExtractions(
  policy: SublayerPolicy,
  extractions: readonly ScannedExtraction[],
  builder: PlanBuilder,
): Promise<number> {
  let passed = 0;
  for (const extraction of extractions) {
    const proof = await provePublishedExtraction(extraction);
    if (!proof) {
      builder.foreign.push({ path: extraction.path, reason: 'unproven-extraction' });
      continue;
    }
    const problem = await checkExtractionFiles(extraction.path, proof.marker);
    if (!problem) {
      passed += 1;
      continue;
    }
    const { lock } = entryPaths(policy.dir, extraction.key);
    builder.add(
      {
        key: extraction.key,
        path: extraction.path,
        reason: problem,
        sizeBytes: proof.marker.total_bytes ?? 0,
      },
      { kind: 'extraction', path: extraction.path, lock, markerText: proof.markerText },
    );
  }
  return passed;
}

async function removeEmptyDir(dir: string): Promise<Outcome> {
  try {
    await fsp.rmdir(dir);
    return 'removed';
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return 'gone';
    if (['ENOTEMPTY', 'EEXIST', 'ENOTDIR'].includes(errorCode(error))) return 'changed';
    throw error;
  }
}

/** The key and sha256 prefix of a published extraction's directory, from its name. */
function extractionNameOf(dir: string): { key: string; shaPrefix: string } | undefined {
  return extractionOfName(path.basename(dir));
}

async function hashMismatch(entry: ReadEntry): Promise<'hash-mismatch' | undefined> {
  if (!entry.manifest?.sha256) return undefined;
  const sha256 = await sha256OfFile(entry.paths.payload).catch(() => undefined);
  // Unreadable means gone or replaced since the scan: nothing to judge.
  return sha256 === undefined || sha256 === entry.manifest.sha256 ? undefined : 'hash-mismatch';
}
