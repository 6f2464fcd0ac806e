import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import path from 'node:path';
import { InvalidKeyError } from './errors.js';

/** Longest key or sublayer in UTF-8 bytes: `<key>.manifest.json` then stays well inside 255 bytes. */
export const MAX_KEY_BYTES = 200;
/** Most file systems (ext4, XFS, NTFS, APFS) cap one name at 255 bytes. */
export const MAX_NAME_BYTES = 255;

export const MANIFEST_SUFFIX = '.manifest.json';
export const LOCK_SUFFIX = '.lock';
export const TMP_MARKER = '.tmp.';
export const CACHEDIR_TAG = 'CACHEDIR.TAG';
/** What separates an archive's key from the sha256 prefix in the name of its extraction directory. */
export const EXTRACTED_INFIX = '.extracted.';
/**
 * Hex digits of the archive's sha256 in an extraction's name: 64 bits keep `<key>.extracted.<sha>` within
 * 227 bytes, and the full sha256 in the extraction's marker is checked on every hit anyway.
 */
export const EXTRACTION_SHA_HEX_DIGITS = 16;
// The name of an extraction directory; no key may end so, or a key's payload could collide with one.
const EXTRACTION_NAME = /\.extracted\.[0-9a-f]{16}$/i;

const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$/i;
// Besides `/` and `\`, characters Windows and SMB refuse in names; `:` would even open an NTFS stream.
// With the u flag, paired surrogates are one code point; only lone halves match this range.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;
const LAST_CODE_POINT = '\u{10FFFF}';
const FORBIDDEN_CHARACTERS = /[/\\<>:"|?*]/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what it rejects
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Throws {@link InvalidKeyError} naming the first rule `value` breaks; returns it unchanged otherwise.
 * Keys and sublayers are single path segments that are safe on every platform and can never be mistaken
 * for one of the cache's own files. Suffix checks ignore case, because on case-insensitive file systems
 * `X.LOCK` and `x.lock` are the same name.
 */
export function validateKey(value: unknown, what: 'key' | 'sublayer' = 'key'): string {
  const fail = (rule: string): never => {
    throw new InvalidKeyError(what, value, rule);
  };
  if (typeof value !== 'string') return fail('must be a string');
  const unportable = portableNameProblem(value, MAX_KEY_BYTES);
  if (unportable !== undefined) return fail(unportable);
  if (value.trim() !== value) return fail('must not start with white space');
  const lower = value.toLowerCase();
  if (lower.endsWith(MANIFEST_SUFFIX)) return fail(`must not end with "${MANIFEST_SUFFIX}"`);
  if (lower.endsWith(LOCK_SUFFIX)) return fail(`must not end with "${LOCK_SUFFIX}"`);
  if (lower.includes(TMP_MARKER)) return fail(`must not contain "${TMP_MARKER}"`);
  if (lower === CACHEDIR_TAG.toLowerCase()) return fail(`must not be "${CACHEDIR_TAG}"`);
  if (EXTRACTION_NAME.test(value)) {
    return fail(
      `must not end with "${EXTRACTED_INFIX}" and ${EXTRACTION_SHA_HEX_DIGITS} hex digits (an extraction's name)`,
    );
  }
  return value;
}

/**
 * The first rule that keeps `name` from being one file name on every platform (Linux, macOS, Windows, SMB
 * shares), in words; `undefined` when it has none. Keys follow these rules, and so does every path segment
 * of an archive the cache extracts: a name Windows cannot hold would be mangled, merged with another or
 * refused there.
 */
export function portableNameProblem(name: string, maxBytes: number = MAX_NAME_BYTES): string | undefined {
  if (name.length === 0) return 'must not be empty';
  // A lone surrogate encodes as U+FFFD in a file name: two such names would share one file.
  if (LONE_SURROGATE.test(name)) return 'must be well-formed Unicode (no lone surrogates)';
  // Node on Windows aborts the whole process (a libuv assertion, not an error) on any path holding U+10FFFF,
  // and on a directory listing that holds such a name (nodejs/node#65060; seen under Wine).
  if (name.includes(LAST_CODE_POINT))
    return 'must not contain U+10FFFF (Node on Windows aborts on such a path)';
  if (Buffer.byteLength(name, 'utf8') > maxBytes) return `must be at most ${maxBytes} UTF-8 bytes`;
  if (name.includes('\u0000')) return 'must not contain NUL';
  if (CONTROL_CHARACTERS.test(name)) return 'must not contain control characters';
  if (FORBIDDEN_CHARACTERS.test(name)) return 'must not contain / \\ < > : " | ? *';
  if (name === '.' || name === '..') return 'must not be "." or ".."';
  // Windows drops a trailing dot or space, so `a.` and `a` would be one file.
  if (/[. ]$/.test(name)) return 'must not end with a dot or a space';
  if (WINDOWS_RESERVED.test(name)) return 'must not be a Windows reserved name (CON, NUL, COM1...)';
  return undefined;
}

/** The absolute paths that make up one entry. */
export interface EntryPaths {
  readonly key: string;
  readonly dir: string;
  readonly payload: string;
  readonly manifest: string;
  readonly lock: string;
}

/**
 * The paths of one extraction of an archive: the directory named after the key and the archive's sha256
 * (so a path handed out always means the same tree), its marker and file list, and the content directory
 * that `getOrExtract` returns.
 */
export interface ExtractionPaths {
  readonly key: string;
  /** The full sha256 of the archive this extraction was made from. */
  readonly archiveSha256: string;
  readonly dir: string;
  /** Small commit marker, read on every hit; its mtime is the extraction's last use. */
  readonly marker: string;
  /** One JSON line per file: path, size, sha256. */
  readonly fileList: string;
  readonly content: string;
}

export const EXTRACTION_MARKER_NAME = 'extraction.json';
export const EXTRACTION_FILE_LIST_NAME = 'files.jsonl';
export const EXTRACTION_CONTENT_NAME = 'content';

export function extractionPaths(dir: string, key: string, archiveSha256: string): ExtractionPaths {
  const sha = archiveSha256.toLowerCase();
  return extractionPathsAt(
    path.join(dir, `${key}${EXTRACTED_INFIX}${sha.slice(0, EXTRACTION_SHA_HEX_DIGITS)}`),
    key,
    sha,
  );
}

/** The same paths for an extraction directory at another name (its tmp name while it is being made). */
export function extractionPathsAt(
  extractionDir: string,
  key: string,
  archiveSha256: string,
): ExtractionPaths {
  return {
    key,
    archiveSha256,
    dir: extractionDir,
    marker: path.join(extractionDir, EXTRACTION_MARKER_NAME),
    fileList: path.join(extractionDir, EXTRACTION_FILE_LIST_NAME),
    content: path.join(extractionDir, EXTRACTION_CONTENT_NAME),
  };
}

export function sublayerDir(root: string, sublayer: string): string {
  return path.join(path.resolve(root), sublayer);
}

export function entryPaths(dir: string, key: string): EntryPaths {
  const payload = path.join(dir, key);
  return { key, dir, payload, manifest: payload + MANIFEST_SUFFIX, lock: payload + LOCK_SUFFIX };
}

const safeHost =
  hostname()
    .replace(/[^A-Za-z0-9-]/g, '_')
    .slice(0, 63) || 'host';

/**
 * A fresh tmp name beside `target`: `<name>.tmp.<host>.<pid>.<random>`. Host, pid and 64 random bits make
 * it unique across hosts sharing the directory; a name that would pass 255 bytes is shortened and a hash
 * of the full name keeps it distinct.
 */
export function tmpPathFor(target: string): string {
  const dir = path.dirname(target);
  const name = path.basename(target);
  const tail = `${TMP_MARKER}${safeHost}.${process.pid}.${randomBytes(8).toString('hex')}`;
  const room = MAX_NAME_BYTES - Buffer.byteLength(tail);
  if (Buffer.byteLength(name) <= room) return path.join(dir, name + tail);
  const digest = createHash('sha256').update(name).digest('hex').slice(0, 16);
  return path.join(dir, `${truncateUtf8(name, room - digest.length - 1)}-${digest}${tail}`);
}

/**
 * Whether `tmpTarget` (a tmp name without its `.tmp.<host>.<pid>.<random>` tail) is what
 * {@link tmpPathFor} makes of `name` when `name` is too long to keep whole: a prefix of it, `-`, and the
 * first 16 hex digits of its sha256. The prefix's length depends on the writer's host and pid, so any
 * prefix counts; the digest ties the tmp name to `name`.
 */
export function isShortenedTmpTarget(tmpTarget: string, name: string): boolean {
  const digest = createHash('sha256').update(name).digest('hex').slice(0, 16);
  const suffix = `-${digest}`;
  return tmpTarget.endsWith(suffix) && name.startsWith(tmpTarget.slice(0, -suffix.length));
}

function truncateUtf8(text: string, maxBytes: number): string {
  let out = '';
  let used = 0;
  for (const char of text) {
    used += Buffer.byteLength(char);
    if (used > maxBytes) break;
    out += char;
  }
  return out;
}

/** What one directory entry in a sublayer is, judged by its name alone. */
export type NameKind =
  | { kind: 'payload'; key: string }
  | { kind: 'manifest'; key: string }
  | { kind: 'lock'; key: string }
  | { kind: 'extraction'; key: string; shaPrefix: string }
  | { kind: 'tmp' }
  | { kind: 'foreign' };

// What tmpPathFor appends: `.tmp.<host>.<pid>.<16 hex digits>`. A name that merely contains `.tmp.` is not ours.
const TMP_TAIL = /\.tmp\.[A-Za-z0-9_-]{1,63}\.\d{1,10}\.[0-9a-f]{16}$/;

export function classifyName(name: string): NameKind {
  if (name.toLowerCase().includes(TMP_MARKER))
    return TMP_TAIL.test(name) ? { kind: 'tmp' } : { kind: 'foreign' };
  if (name.endsWith(MANIFEST_SUFFIX)) return asKey(name.slice(0, -MANIFEST_SUFFIX.length), 'manifest');
  if (name.endsWith(LOCK_SUFFIX)) return asKey(name.slice(0, -LOCK_SUFFIX.length), 'lock');
  const extraction = extractionOfName(name);
  if (extraction) return extraction;
  return asKey(name, 'payload');
}

// As the cache writes them: lower-case hex only. An upper-case variant is no key either, so it is foreign.
const EXTRACTION_NAME_PARTS = /^(.+)\.extracted\.([0-9a-f]{16})$/;

/** The key and sha256 prefix an extraction directory's name gives, when it is one the cache would write. */
export function extractionOfName(
  name: string,
): { kind: 'extraction'; key: string; shaPrefix: string } | undefined {
  const parts = EXTRACTION_NAME_PARTS.exec(name);
  if (!parts) return undefined;
  const [, key = '', shaPrefix = ''] = parts;
  return asKey(key, 'payload').kind === 'payload' ? { kind: 'extraction', key, shaPrefix } : undefined;
}

/** For a tmp name `<name>.tmp.<host>.<pid>.<random>`: the `<name>` it was made for. */
export function tmpNameTarget(name: string): string {
  return name.slice(0, name.toLowerCase().lastIndexOf(TMP_MARKER));
}

function asKey(key: string, kind: 'payload' | 'manifest' | 'lock'): NameKind {
  try {
    validateKey(key);
    return { kind, key };
  } catch {
    return { kind: 'foreign' };
  }
}
