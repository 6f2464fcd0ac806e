import { constants, promises as fsp } from 'node:fs';
import { z } from 'zod';
import { readFileStart } from './file-system.js';

/** Written by this version; readers also accept imf_reader's string versions such as `"1.5.0"`. */
export const SCHEMA_VERSION = 1;
/** A manifest is a few hundred bytes; anything past this is not one of ours and reads as a miss. */
const MAX_MANIFEST_BYTES = 64 * 1024;
// Manifests are a few hundred bytes; Buffer.allocUnsafe serves up to 4 KiB from its shared pool.
const FIRST_READ_BYTES = 4095;
// Never through a symlink, and never blocking on a FIFO planted in its place.
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);

// ISO 8601 date-time with a zone: `...Z`, `...+00:00` or imf_reader's `...+0000`.
const ISO_TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$/;

/** Milliseconds since the epoch for an ISO 8601 timestamp with a zone, or NaN (also for 2026-02-30). */
export function parseTimestamp(text: string): number {
  if (!ISO_TIMESTAMP.test(text)) return Number.NaN;
  const [year, month, day] = text.slice(0, 10).split('-').map(Number) as [number, number, number];
  // Date.parse rolls impossible days over (Feb 30 -> Mar 2); such a timestamp was not written by a clock.
  if (new Date(Date.UTC(year, month - 1, day)).getUTCDate() !== day) return Number.NaN;
  return Date.parse(text.replace(/([+-]\d{2})(\d{2})$/, '$1:$2'));
}

const optionalText = z
  .string()
  .nullish()
  .transform((value) => value ?? undefined);

const manifestSchema = z.looseObject({
  schema_version: z.union([z.number().int().nonnegative(), z.string().min(1)]),
  key: optionalText,
  created_at: z.string().refine((text) => !Number.isNaN(parseTimestamp(text)), 'not an ISO 8601 timestamp'),
  size_bytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  sha256: z
    .string()
    .regex(/^[0-9a-fA-F]{64}$/)
    .nullish()
    .transform((value) => value?.toLowerCase()),
  etag: optionalText,
  last_modified: optionalText,
});

/** The commit marker of one entry (DESIGN.md section 3). Unknown fields survive a rewrite. */
export interface Manifest {
  /** 1 for manifests written here; imf_reader writes strings such as "1.5.0". */
  schema_version: number | string;
  /** The key it was written for; a manifest naming another key is a miss, one without a key fits any. */
  key?: string | undefined;
  /** When the entry was published or last renewed: ISO 8601 with a zone. Freshness counts from it. */
  created_at: string;
  /** Exact payload size in bytes; a payload of any other size makes the entry a miss. */
  size_bytes: number;
  /** Lower-case hex. */
  sha256?: string | undefined;
  /** The fetcher's `etag`, offered back for `If-None-Match` once the entry has expired. */
  etag?: string | undefined;
  /** The fetcher's `lastModified`, offered back for `If-Modified-Since` once the entry has expired. */
  last_modified?: string | undefined;
  [field: string]: unknown;
}

/** Parses manifest text; `undefined` for anything that is not a valid manifest (never throws). */
export function parseManifest(text: string): Manifest | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = manifestSchema.safeParse(json);
  return parsed.success ? (parsed.data as Manifest) : undefined;
}

/**
 * Reads and parses a manifest, normally with one small read; `undefined` when it is missing, unreadable,
 * a symlink, oversized or invalid. A bad manifest is a miss, never an exception.
 */
export async function readManifest(manifestPath: string): Promise<Manifest | undefined> {
  try {
    // The hit path: one read into a small pooled buffer, no second read to see the end of the file. A
    // manifest that does not parse from it (larger than the buffer, or a short read) is read again whole.
    const first = Buffer.allocUnsafe(FIRST_READ_BYTES);
    const bytesRead = await readFileStart(manifestPath, READ_FLAGS, first);
    if (bytesRead < first.length) {
      const manifest = parseManifest(first.toString('utf8', 0, bytesRead));
      if (manifest || bytesRead === 0) return manifest;
    }
    const text = await readManifestText(manifestPath);
    return text === undefined ? undefined : parseManifest(text);
  } catch {
    return undefined;
  }
}

/**
 * The manifest file's exact text (for "is it still the manifest I saw?"): `undefined` when nothing is there,
 * '' when what is there cannot be a manifest (unreadable, not a regular file, oversized). Never throws.
 */
export async function readManifestText(manifestPath: string): Promise<string | undefined> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(manifestPath, READ_FLAGS);
    if (!(await handle.stat()).isFile()) return '';
    return await readUpTo(handle, MAX_MANIFEST_BYTES);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : '';
  } finally {
    await handle?.close().catch(() => {});
  }
}

/** The whole file as text if it has at most `maxBytes`; otherwise '' (which parses as a miss). */
async function readUpTo(handle: fsp.FileHandle, maxBytes: number): Promise<string> {
  const buffer = Buffer.allocUnsafe(maxBytes + 1);
  let length = 0;
  while (length < buffer.length) {
    const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
    if (bytesRead === 0) break;
    length += bytesRead;
  }
  return length > maxBytes ? '' : buffer.toString('utf8', 0, length);
}

/** The bytes of a manifest file. */
export function manifestText(manifest: Manifest): string {
  return `${JSON.stringify(manifest)}\n`;
}

export interface Freshness {
  readonly ttlMs: number;
  readonly maxClockSkewMs: number;
  readonly nowMs: number;
}

/**
 * Expired when `created_at + ttl` has passed, or when `created_at` lies further in the future than the
 * allowed clock skew: such a timestamp comes from a broken clock and would otherwise never expire.
 */
export function isExpired(manifest: Manifest, { ttlMs, maxClockSkewMs, nowMs }: Freshness): boolean {
  const createdAtMs = parseTimestamp(manifest.created_at);
  if (createdAtMs > nowMs + maxClockSkewMs) return true;
  // A created_at slightly ahead (within the skew) is age 0, not a negative age: ttl 0 still always refetches.
  return Math.max(0, nowMs - createdAtMs) >= ttlMs;
}

/** A manifest describes `key` unless it names another one (two keys that differ only in case collide on
 * case-insensitive file systems; the check turns that into a miss instead of the wrong bytes). */
export function describesKey(manifest: Manifest, key: string): boolean {
  return manifest.key === undefined || manifest.key === key;
}
