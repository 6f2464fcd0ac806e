import path from 'node:path';
import type { EntryInfo } from '../index.js';
import {
  type Command,
  type CommandInput,
  EXIT_ERROR,
  EXIT_OK,
  existingRootOf,
  flag,
  type Io,
  stringOption,
  ttlOf,
} from './command.js';
import {
  eachSublayer,
  openSublayer,
  readOnlyRootsBeside,
  targetSublayersInLayers,
  totalBytes,
} from './sublayers.js';
import { plural, renderTable } from './table.js';
import { describeTtl, formatAgo, formatBytes, formatDuration } from './units.js';

interface SublayerListing {
  readonly name: string;
  readonly entries: readonly EntryInfo[];
}

export const TTL_HELP = `  --ttl DURATION   The ttl that decides "expired": 7d, 12h, 30m, 45s, 500ms, 1h30m or Infinity.
                   Default Infinity, so nothing counts as expired: the cache stores no ttl, each
                   application passes its own to CacheManager`;

export const lsCommand: Command = {
  name: 'ls',
  summary: 'List sublayers and entries: size, age, last use, expiry, totals',
  help: `Usage: payload-cache ls [--sublayer S] [--ttl DURATION] [--json] [--root DIR]

Lists each sublayer (a directory under the cache root) and its committed entries, most recently used
first: key, size, age (since the manifest's created_at), last use (the payload's mtime) and whether the
entry has expired, with totals per sublayer and overall. An archive extracted by getOrExtract (or
fetch --extract) has a line per extraction under it: the current one and those of older archives still
kept, with their files, bytes (counted in the totals), age and last use. Lists only: it changes nothing on disk (no
sweep, no last-use update). Exits 1 when the root or --sublayer does not exist, or a sublayer could not
be read (the others are still listed).

Options:
  --sublayer S     Only this sublayer
${TTL_HELP}
  --json           Print JSON: { root, readOnlyRoots, ttlMs (null = Infinity), entryCount, totalBytes,
                   sublayers: [{ name, path, entryCount, totalBytes, entries: [{ key, path,
                   sizeBytes, createdAt, lastUsedAt, ageMs, expired, sha256, root, readOnly,
                   extractions?: [{ path, archiveSha256, current, fileCount, sizeBytes, createdAt,
                   lastUsedAt }] }] }] }

With PAYLOAD_CACHE_READONLY_ROOTS set (read-only roots joined with '${path.delimiter}'), their entries are listed
too, in a LAYER column: "own" for the root's own entries, else the read-only root they are in.`,
  options: { sublayer: { type: 'string' }, ttl: { type: 'string' }, json: { type: 'boolean' } },
  positionals: [],
  run: runLs,
};

async function runLs(input: CommandInput, io: Io): Promise<number> {
  const ttlMs = ttlOf(input);
  const root = await existingRootOf(input);
  const readOnlyRoots = readOnlyRootsBeside(root);
  const names = await targetSublayersInLayers(root, readOnlyRoots, stringOption(input, 'sublayer'));
  const { done, failed } = await eachSublayer(names, io, 'ls', (name) =>
    openSublayer(name, { root, ttlMs }).list(),
  );
  const sublayers = done.map(({ name, value }) => ({ name, entries: value }));
  // Read after listing, so that no entry looks used in the future.
  const nowMs = Date.now();
  if (flag(input, 'json')) {
    io.out(JSON.stringify(listingJson(root, ttlMs, nowMs, sublayers, readOnlyRoots), null, 2));
  } else {
    for (const line of renderListing(root, ttlMs, nowMs, sublayers, readOnlyRoots)) io.out(line);
  }
  return failed > 0 ? EXIT_ERROR : EXIT_OK;
}

/** The human listing: one table per sublayer with its total, then the overall total. */
export function renderListing(
  root: string,
  ttlMs: number,
  nowMs: number,
  sublayers: readonly SublayerListing[],
  readOnlyRoots: readonly string[] = [],
): string[] {
  const ttlNote = Number.isFinite(ttlMs)
    ? `ttl ${describeTtl(ttlMs)}`
    : 'ttl none: nothing counts as expired, pass --ttl to judge';
  const lines = [`Cache root ${root} (${ttlNote})`];
  if (readOnlyRoots.length > 0)
    lines.push(`Read-only roots (PAYLOAD_CACHE_READONLY_ROOTS): ${readOnlyRoots.join(', ')}`);
  const layered = readOnlyRoots.length > 0;
  if (sublayers.length === 0) return [...lines, 'No sublayers.'];
  for (const { name, entries } of sublayers) {
    lines.push('', `${name}/`);
    if (entries.length === 0) {
      lines.push('  (no entries)');
      continue;
    }
    const rows = entries.flatMap((entry) => [
      [
        entry.key,
        formatBytes(entry.sizeBytes),
        formatDuration(nowMs - entry.createdAt.getTime()),
        formatAgo(nowMs - entry.lastUsedAt.getTime()),
        entry.expired ? 'yes' : 'no',
        ...(layered ? [entry.readOnly ? entry.root : 'own'] : []),
      ],
      // Each extraction of the archive on a line of its own under it, its bytes counted in the totals.
      ...(entry.extractions ?? []).map((extraction) => [
        `  extracted (${extraction.current ? 'current' : 'older archive'}, ${plural(extraction.fileCount, 'file')})`,
        formatBytes(extraction.sizeBytes),
        formatDuration(nowMs - extraction.createdAt.getTime()),
        formatAgo(nowMs - extraction.lastUsedAt.getTime()),
        '',
        ...(layered ? [''] : []),
      ]),
    ]);
    const headers = ['KEY', 'SIZE', 'AGE', 'LAST USED', 'EXPIRED', ...(layered ? ['LAYER'] : [])];
    lines.push(
      ...renderTable(headers, rows, ['left', 'right'], '  '),
      `  total: ${plural(entries.length, 'entry', 'entries')}, ${formatBytes(totalBytes(entries))}`,
    );
  }
  const all = sublayers.flatMap((sublayer) => sublayer.entries);
  lines.push(
    '',
    `Total: ${plural(sublayers.length, 'sublayer')}, ${plural(all.length, 'entry', 'entries')}, ${formatBytes(totalBytes(all))}`,
  );
  return lines;
}

/** What `ls --json` prints. Dates are ISO 8601; a ttl of Infinity is `null` (JSON has no Infinity). */
export function listingJson(
  root: string,
  ttlMs: number,
  nowMs: number,
  sublayers: readonly SublayerListing[],
  readOnlyRoots: readonly string[] = [],
) {
  const all = sublayers.flatMap((sublayer) => sublayer.entries);
  return {
    root,
    readOnlyRoots,
    ttlMs: Number.isFinite(ttlMs) ? ttlMs : null,
    entryCount: all.length,
    totalBytes: totalBytes(all),
    sublayers: sublayers.map(({ name, entries }) => ({
      name,
      path: path.join(root, name),
      entryCount: entries.length,
      totalBytes: totalBytes(entries),
      entries: entries.map((entry) => entryJson(entry, nowMs)),
    })),
  };
}

export function entryJson(entry: EntryInfo, nowMs: number) {
  return {
    key: entry.key,
    path: entry.path,
    sizeBytes: entry.sizeBytes,
    createdAt: entry.createdAt.toISOString(),
    lastUsedAt: entry.lastUsedAt.toISOString(),
    ageMs: nowMs - entry.createdAt.getTime(),
    expired: entry.expired,
    sha256: entry.sha256 ?? null,
    root: entry.root,
    readOnly: entry.readOnly,
    ...(entry.extractions
      ? {
          extractions: entry.extractions.map((extraction) => ({
            path: extraction.path,
            archiveSha256: extraction.archiveSha256,
            current: extraction.current,
            fileCount: extraction.fileCount,
            sizeBytes: extraction.sizeBytes,
            createdAt: extraction.createdAt.toISOString(),
            lastUsedAt: extraction.lastUsedAt.toISOString(),
          })),
        }
      : {}),
  };
}
