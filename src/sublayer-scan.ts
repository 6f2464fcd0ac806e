import { type Dirent, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import {
  classifyName,
  type EntryPaths,
  EXTRACTION_CONTENT_NAME,
  entryPaths,
  extractionOfName,
  MANIFEST_SUFFIX,
  tmpNameTarget,
} from './entry-paths.js';
import { lastUsedAtMs, lookupEntry } from './entry-store.js';
import { extractionOfShortenedTmp, provePublishedExtraction } from './extraction-on-disk.js';
import { assertRealDir, errorCode, lstatOrUndefined } from './file-system.js';
import type { Layer } from './layers.js';
import { type Freshness, parseTimestamp } from './manifest.js';
import type { EntryInfo, ExtractionInfo, ForeignItem } from './types.js';

/** A committed-looking entry: a regular payload file and a regular manifest file beside it, by name. */
export interface ScannedEntry {
  readonly paths: EntryPaths;
  readonly sizeBytes: number;
  readonly lastUsedAtMs: number;
}

/** A regular file named like a payload, with no manifest beside it. */
export interface LonePayload {
  readonly paths: EntryPaths;
  readonly sizeBytes: number;
  readonly mtimeMs: number;
}

/**
 * A tmp file the cache names `<name>.tmp.<host>.<pid>.<random>`, or a directory so named: a lock renamed
 * aside, or an extraction being built (or renamed aside to be removed).
 */
export interface TmpObject {
  readonly path: string;
  readonly sizeBytes: number;
  readonly mtimeMs: number;
  readonly isDirectory: boolean;
  /** For an extraction's tmp directory: the key and archive sha256 prefix its name gives. */
  readonly extraction?: ExtractionName | undefined;
}

/** What an extraction directory's name says: its archive's key and the first 16 hex digits of its sha256. */
export interface ExtractionName {
  readonly key: string;
  readonly shaPrefix: string;
}

/** A real directory named like an archive's extraction (`<key>.extracted.<sha16>`); not yet proven ours. */
export interface ScannedExtraction extends ExtractionName {
  readonly path: string;
}

/** Everything in one sublayer, sorted by what the cache may do with it. */
export interface SublayerScan {
  readonly entries: ScannedEntry[];
  readonly lonePayloads: LonePayload[];
  /** Regular files named like a manifest with no payload beside them. */
  readonly loneManifests: EntryPaths[];
  readonly tmpObjects: TmpObject[];
  /** Directories named like a lock. */
  readonly locks: EntryPaths[];
  /** Directories named like an extraction. */
  readonly extractions: ScannedExtraction[];
  /** Things no name or type rule of the cache accounts for; never touched. */
  readonly foreign: ForeignItem[];
}

/** A sublayer's names, each with its type where the file system gives one. */
export type SublayerListing = ReadonlyMap<string, Dirent>;

/**
 * Names read per call, and classified per turn of the event loop. A write beside a pass waits up to one
 * turn for each of its ~36 file-system calls. One `readdir` of 200,000 names (100,000 entries) held the event
 * loop for ~110 ms and building the lookup by name another ~130 ms; in chunks of 1,024 names read and
 * classified, a write into that sublayer while passes ran took ~58 ms at the median (p90 ~130 ms); reading
 * 256 and classifying 128 at a time, ~21 ms (p90 ~30–37 ms), the pass ~20 % longer (quiet 2-core machine).
 */
const NAMES_PER_READ = 256;
const NAMES_PER_TURN = 128;

/** The names in a sublayer, read in chunks; none for a missing directory. Refuses a symlinked one. */
export async function readSublayer(dir: string): Promise<SublayerListing> {
  const byName = new Map<string, Dirent>();
  try {
    await assertRealDir(dir);
    for await (const dirent of await fsp.opendir(dir, { bufferSize: NAMES_PER_READ }))
      byName.set(dirent.name, dirent);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return byName;
    throw error;
  }
  return byName;
}

/** A payload's size and last use, as an `lstat` found them. */
export interface PayloadFacts {
  readonly sizeBytes: number;
  readonly lastUsedAtMs: number;
}

/** How a scan reads: the listing it already has, and how many `lstat`s it may have in flight. */
export interface ScanOptions {
  /** From {@link readSublayer}, when the caller has just read it; else the scan reads it. */
  readonly listing?: SublayerListing;
  /** Default 64. */
  readonly concurrency?: number;
  /**
   * Payload facts from earlier scans, by file name: a regular file found here is not `lstat`ed again, and
   * the facts of every payload `lstat`ed are added. Remembered facts may be stale (a use elsewhere moves
   * the mtime), so only a caller that re-checks an entry before acting on it may pass this: eviction does,
   * under the entry's lock.
   */
  readonly remembered?: Map<string, PayloadFacts>;
}

/**
 * Lists a sublayer by name and one `lstat` per payload (none per manifest): it stays cheap at 10,000
 * entries, and changes nothing. Only names of the cache's own shapes, of the type the cache gives them
 * (regular files for payloads, manifests and tmp files; directories for locks), are candidates for any
 * janitor; everything else is foreign. A missing directory has nothing in it.
 */
export async function scanSublayer(dir: string, options: ScanOptions = {}): Promise<SublayerScan> {
  const scan: SublayerScan = {
    entries: [],
    lonePayloads: [],
    loneManifests: [],
    tmpObjects: [],
    locks: [],
    extractions: [],
    foreign: [],
  };
  const types = options.listing ?? (await readSublayer(dir));
  /** Whether `name` is a regular file, by the listing's type alone; `undefined` where it gave no type. */
  const regularByType = (name: string): boolean | undefined => {
    const dirent = types.get(name);
    if (!dirent) return false;
    if (dirent.isFile()) return true;
    return typeKnown(dirent) ? false : undefined;
  };
  // Some file systems do not report types in readdir; only then is an lstat needed.
  const isRegularFile = async (name: string) =>
    regularByType(name) ?? (await lstatOrUndefined(path.join(dir, name)))?.isFile() === true;
  const foreign = (name: string, reason: ForeignItem['reason']) => {
    scan.foreign.push({ path: path.join(dir, name), reason });
  };
  const addPayload = (key: string, { sizeBytes, lastUsedAtMs }: PayloadFacts, hasManifest: boolean) => {
    const paths = entryPaths(dir, key);
    if (hasManifest) scan.entries.push({ paths, sizeBytes, lastUsedAtMs });
    else scan.lonePayloads.push({ paths, sizeBytes, mtimeMs: lastUsedAtMs });
  };
  const manifestNameOf = (key: string) => `${key}${MANIFEST_SUFFIX}`;

  // What the names and the listing's types settle without a call: most names once payload facts are
  // remembered. Done without a promise per name: at 100,000 entries those cost a pass more than a second.
  const settledByName = (dirent: Dirent): boolean => {
    const name = dirent.name;
    const kind = classifyName(name);
    if (kind.kind === 'foreign') {
      foreign(name, 'unknown-name');
      return true;
    }
    if (kind.kind === 'manifest') {
      const isFile = regularByType(name);
      const hasPayload = regularByType(kind.key);
      if (isFile === undefined || (isFile && hasPayload === undefined)) return false;
      if (!isFile) foreign(name, 'not-a-regular-file');
      else if (!hasPayload) scan.loneManifests.push(entryPaths(dir, kind.key));
      return true;
    }
    if (kind.kind !== 'payload' || !dirent.isFile()) return false;
    const known = options.remembered?.get(name);
    const hasManifest = regularByType(manifestNameOf(kind.key));
    if (!known || hasManifest === undefined) return false;
    addPayload(kind.key, known, hasManifest);
    return true;
  };

  const settledByIo = async (dirent: Dirent): Promise<void> => {
    const name = dirent.name;
    const kind = classifyName(name);
    if (kind.kind === 'foreign') return foreign(name, 'unknown-name');
    if (kind.kind === 'lock') {
      const stats = await lstatOrUndefined(path.join(dir, name));
      if (stats?.isDirectory()) scan.locks.push(entryPaths(dir, kind.key));
      else if (stats) foreign(name, 'not-a-regular-file');
      return;
    }
    if (kind.kind === 'manifest') {
      if (!(await isRegularFile(name))) foreign(name, 'not-a-regular-file');
      else if (!(await isRegularFile(kind.key))) scan.loneManifests.push(entryPaths(dir, kind.key));
      return;
    }
    const stats = await lstatOrUndefined(path.join(dir, name));
    if (!stats) return; // gone since the readdir
    if (kind.kind === 'tmp') {
      const extraction = stats.isDirectory() ? await tmpExtractionOf(dir, name) : undefined;
      if (stats.isFile() || (stats.isDirectory() && isLockAside(name)) || extraction)
        scan.tmpObjects.push(tmpObject(dir, name, stats, extraction));
      else foreign(name, 'not-a-regular-file');
      return;
    }
    if (kind.kind === 'extraction') {
      const { key, shaPrefix } = kind;
      if (stats.isDirectory()) scan.extractions.push({ path: path.join(dir, name), key, shaPrefix });
      else foreign(name, 'not-a-regular-file');
      return;
    }
    if (!stats.isFile()) return foreign(name, 'not-a-regular-file');
    const facts = { sizeBytes: stats.size, lastUsedAtMs: lastUsedAtMs(stats) };
    options.remembered?.set(name, facts);
    addPayload(kind.key, facts, await isRegularFile(manifestNameOf(kind.key)));
  };

  const needIo: Dirent[] = [];
  let looked = 0;
  for (const dirent of types.values()) {
    // Other work (a write beside this pass) gets the event loop between chunks, as readSublayer gives it.
    if (++looked % NAMES_PER_TURN === 0) await new Promise<void>((resolve) => setImmediate(resolve));
    if (!settledByName(dirent)) needIo.push(dirent);
  }
  await forEachLimited(needIo, options.concurrency ?? 64, settledByIo);
  return scan;
}

/** The extraction a tmp directory was made for: by its name, or by its marker when the name was shortened. */
async function tmpExtractionOf(dir: string, name: string): Promise<ExtractionName | undefined> {
  const byName = extractionOfName(tmpNameTarget(name));
  if (byName || isLockAside(name)) return byName;
  return extractionOfShortenedTmp(path.join(dir, name));
}

/** A lock directory renamed aside on release: `<key>.lock.tmp.<host>.<pid>.<random>`. */
function isLockAside(name: string): boolean {
  return tmpNameTarget(name).endsWith('.lock');
}

function tmpObject(dir: string, name: string, stats: Stats, extraction?: ExtractionName): TmpObject {
  return {
    path: path.join(dir, name),
    sizeBytes: stats.size,
    mtimeMs: stats.mtimeMs,
    isDirectory: stats.isDirectory(),
    ...(extraction ? { extraction: { key: extraction.key, shaPrefix: extraction.shaPrefix } } : {}),
  };
}

function typeKnown(dirent: Dirent): boolean {
  return (
    dirent.isFile() ||
    dirent.isDirectory() ||
    dirent.isSymbolicLink() ||
    dirent.isFIFO() ||
    dirent.isSocket() ||
    dirent.isBlockDevice() ||
    dirent.isCharacterDevice()
  );
}

/**
 * At least as many as the committed entries, by name alone: the names of manifests (a manifest without
 * its payload is rare, and only makes this count high). Enough to tell that nothing is over `keepN`.
 */
export function manifestCount(listing: SublayerListing): number {
  let count = 0;
  for (const name of listing.keys()) if (name.endsWith(MANIFEST_SUFFIX)) count += 1;
  return count;
}

/** Runs `task` over `items` with at most `limit` at once. */
export async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Committed entries (fresh and expired) with their facts, most recently used first. Changes nothing. */
export async function listEntries(layer: Layer, freshness: Freshness): Promise<EntryInfo[]> {
  const { entries, extractions } = await scanSublayer(layer.dir);
  const extractionsByKey = await extractionInfos(extractions);
  const infos: EntryInfo[] = [];
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
      root: layer.root,
      readOnly: layer.readOnly,
      ...(found.manifest.sha256 ? { sha256: found.manifest.sha256 } : {}),
      ...extractionsOf(extractionsByKey.get(paths.key), found.manifest.sha256),
    });
  });
  return infos.sort((a, b) => b.lastUsedAt.getTime() - a.lastUsedAt.getTime());
}

/** The proven extractions of each key, with their facts; `current` is settled per entry. */
async function extractionInfos(
  extractions: readonly ScannedExtraction[],
): Promise<Map<string, ExtractionInfo[]>> {
  const byKey = new Map<string, ExtractionInfo[]>();
  await forEachLimited(extractions, 16, async (extraction) => {
    const proof = await provePublishedExtraction(extraction);
    if (!proof) return;
    const { marker } = proof;
    const list = byKey.get(extraction.key) ?? [];
    list.push({
      path: path.join(extraction.path, EXTRACTION_CONTENT_NAME),
      archiveSha256: marker.archive_sha256,
      current: false,
      fileCount: marker.file_count ?? 0,
      sizeBytes: marker.total_bytes ?? 0,
      createdAt: new Date(parseTimestamp(marker.created_at)),
      lastUsedAt: new Date(proof.lastUsedAtMs),
    });
    byKey.set(extraction.key, list);
  });
  return byKey;
}

function extractionsOf(
  infos: readonly ExtractionInfo[] | undefined,
  archiveSha256: string | undefined,
): { extractions?: ExtractionInfo[] } {
  if (!infos) return {};
  const extractions = infos
    .map((info) => ({ ...info, current: info.archiveSha256 === archiveSha256 }))
    .sort((a, b) => Number(b.current) - Number(a.current) || b.lastUsedAt.getTime() - a.lastUsedAt.getTime());
  return { extractions };
}
