import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { EntryInfo } from '../index.js';
import { type Command, type CommandInput, EXIT_OK, existingRootOf, flag, type Io, ttlOf } from './command.js';
import { entryJson, TTL_HELP } from './ls.js';
import { openSublayer, targetSublayers } from './sublayers.js';
import { describeTtl, formatAgo, formatBytes } from './units.js';

/** The manifest sits beside its payload (README, "On-disk layout"). */
const MANIFEST_SUFFIX = '.manifest.json';

export const infoCommand: Command = {
  name: 'info',
  summary: "Show one entry's manifest and file facts",
  help: `Usage: payload-cache info <sublayer> <key> [--ttl DURATION] [--json] [--root DIR]

Shows one committed entry: the payload's path, size, creation time, last use (the payload's mtime) and
whether it has expired, then its manifest, pretty-printed. Exits 1 when the key has no committed entry
(no files, or a manifest that is missing, invalid or does not match the payload: see verify).

Options:
${TTL_HELP}
  --json           Print JSON: { sublayer, key, path, manifestPath, sizeBytes, createdAt, lastUsedAt,
                   ageMs, expired, ttlMs, sha256, manifest }`,
  options: { ttl: { type: 'string' }, json: { type: 'boolean' } },
  positionals: ['sublayer', 'key'],
  run: runInfo,
};

async function runInfo(input: CommandInput, io: Io): Promise<number> {
  const [sublayer, key] = input.positionals as [string, string];
  const ttlMs = ttlOf(input);
  const root = await existingRootOf(input);
  const cache = openSublayer(sublayer, { root, ttlMs });
  // has() checks the key against the library's rules (InvalidKeyError) before anything else.
  await cache.has(key);
  await targetSublayers(root, sublayer);
  const entry = (await cache.list()).find((candidate) => candidate.key === key);
  if (!entry) throw new Error(await missingEntryMessage(root, sublayer, key));
  const manifestPath = entry.path + MANIFEST_SUFFIX;
  const manifest: unknown = JSON.parse(await fsp.readFile(manifestPath, 'utf8'));
  const nowMs = Date.now();
  if (flag(input, 'json')) {
    const facts = entryJson(entry, nowMs);
    const ttl = Number.isFinite(ttlMs) ? ttlMs : null;
    io.out(JSON.stringify({ sublayer, ...facts, manifestPath, ttlMs: ttl, manifest }, null, 2));
    return EXIT_OK;
  }
  for (const line of describeEntry(sublayer, entry, ttlMs, nowMs)) io.out(line);
  io.out(`manifest:   ${manifestPath}`);
  io.out(JSON.stringify(manifest, null, 2));
  return EXIT_OK;
}

function describeEntry(sublayer: string, entry: EntryInfo, ttlMs: number, nowMs: number): string[] {
  const ttlNote = Number.isFinite(ttlMs) ? `ttl ${describeTtl(ttlMs)}` : 'ttl none: pass --ttl to judge';
  return [
    `sublayer:   ${sublayer}`,
    `key:        ${entry.key}`,
    `path:       ${entry.path}`,
    `size:       ${formatBytes(entry.sizeBytes)} (${entry.sizeBytes} bytes)`,
    `created:    ${entry.createdAt.toISOString()} (${formatAgo(nowMs - entry.createdAt.getTime())})`,
    `last used:  ${entry.lastUsedAt.toISOString()} (${formatAgo(nowMs - entry.lastUsedAt.getTime())}, payload mtime)`,
    `expired:    ${entry.expired ? 'yes' : 'no'} (${ttlNote})`,
    `sha256:     ${entry.sha256 ?? '(none recorded)'}`,
  ];
}

/** Tells "nothing there" apart from "files there, but not a committed entry". */
async function missingEntryMessage(root: string, sublayer: string, key: string): Promise<string> {
  const payload = path.join(root, sublayer, key);
  const [hasPayload, hasManifest] = await Promise.all(
    [payload, payload + MANIFEST_SUFFIX].map((file) =>
      fsp.lstat(file).then(
        () => true,
        () => false,
      ),
    ),
  );
  if (!hasPayload && !hasManifest) return `no entry "${key}" in sublayer "${sublayer}" under ${root}`;
  return (
    `"${key}" in sublayer "${sublayer}" is not a committed entry: its manifest is missing, invalid or ` +
    'does not match the payload (payload-cache verify reports it)'
  );
}
