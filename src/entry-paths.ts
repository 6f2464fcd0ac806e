import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import path from 'node:path';
import { InvalidKeyError } from './errors.js';

/** Longest key or sublayer in UTF-8 bytes: `<key>.manifest.json` then stays well inside 255 bytes. */
export const MAX_KEY_BYTES = 200;
/** Most file systems (ext4, XFS, NTFS, APFS) cap one name at 255 bytes. */
const MAX_NAME_BYTES = 255;

export const MANIFEST_SUFFIX = '.manifest.json';
export const LOCK_SUFFIX = '.lock';
export const TMP_MARKER = '.tmp.';
export const CACHEDIR_TAG = 'CACHEDIR.TAG';

const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$/i;
// Besides `/` and `\`, characters Windows and SMB refuse in names; `:` would even open an NTFS stream.
// With the u flag, paired surrogates are one code point; only lone halves match this range.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;
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
  if (value.length === 0) return fail('must not be empty');
  // A lone surrogate encodes as U+FFFD in a file name: two such keys would share one file.
  if (LONE_SURROGATE.test(value)) return fail('must be well-formed Unicode (no lone surrogates)');
  if (Buffer.byteLength(value, 'utf8') > MAX_KEY_BYTES)
    return fail(`must be at most ${MAX_KEY_BYTES} UTF-8 bytes`);
  if (value.includes('\u0000')) return fail('must not contain NUL');
  if (CONTROL_CHARACTERS.test(value)) return fail('must not contain control characters');
  if (FORBIDDEN_CHARACTERS.test(value)) return fail('must not contain / \\ < > : " | ? *');
  if (value === '.' || value === '..') return fail('must not be "." or ".."');
  if (/[. ]$/.test(value)) return fail('must not end with a dot or a space');
  if (value.trim() !== value) return fail('must not start with white space');
  if (WINDOWS_RESERVED.test(value)) return fail('must not be a Windows reserved name (CON, NUL, COM1...)');
  const lower = value.toLowerCase();
  if (lower.endsWith(MANIFEST_SUFFIX)) return fail(`must not end with "${MANIFEST_SUFFIX}"`);
  if (lower.endsWith(LOCK_SUFFIX)) return fail(`must not end with "${LOCK_SUFFIX}"`);
  if (lower.includes(TMP_MARKER)) return fail(`must not contain "${TMP_MARKER}"`);
  if (lower === CACHEDIR_TAG.toLowerCase()) return fail(`must not be "${CACHEDIR_TAG}"`);
  return value;
}

/** The absolute paths that make up one entry. */
export interface EntryPaths {
  readonly key: string;
  readonly dir: string;
  readonly payload: string;
  readonly manifest: string;
  readonly lock: string;
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
  | { kind: 'tmp' }
  | { kind: 'foreign' };

// What tmpPathFor appends: `.tmp.<host>.<pid>.<16 hex digits>`. A name that merely contains `.tmp.` is not ours.
const TMP_TAIL = /\.tmp\.[A-Za-z0-9_-]{1,63}\.\d{1,10}\.[0-9a-f]{16}$/;

export function classifyName(name: string): NameKind {
  if (name.toLowerCase().includes(TMP_MARKER))
    return TMP_TAIL.test(name) ? { kind: 'tmp' } : { kind: 'foreign' };
  if (name.endsWith(MANIFEST_SUFFIX)) return asKey(name.slice(0, -MANIFEST_SUFFIX.length), 'manifest');
  if (name.endsWith(LOCK_SUFFIX)) return asKey(name.slice(0, -LOCK_SUFFIX.length), 'lock');
  return asKey(name, 'payload');
}

function asKey(key: string, kind: 'payload' | 'manifest' | 'lock'): NameKind {
  try {
    validateKey(key);
    return { kind, key };
  } catch {
    return { kind: 'foreign' };
  }
}
