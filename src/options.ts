import path from 'node:path';
import {
  ARCHIVE_FORMATS,
  type ArchiveFormat,
  type ExtractionLimits,
  LINK_POLICIES,
  type LinkPolicy,
  resolveLimits,
} from './archive-safety.js';
import { validateKey } from './entry-paths.js';
import { InvalidOptionsError } from './errors.js';
import { type CreateModes, GROUP_SHARED_MODES } from './file-system.js';
import { MIN_LOCK_STALE_MS } from './soft-lock.js';
import type { GetOrExtractOptions, GetOrFetchOptions } from './types.js';

/**
 * Options of `new CacheManager()`, validated in the constructor: a bad value or an unknown option name
 * (a typo such as `keepn`) throws `InvalidOptionsError`, a bad sublayer `InvalidKeyError`.
 */
export interface CacheManagerOptions {
  /** One path segment naming this manager's directory under the root (same rules as a key). */
  sublayer: string;
  /** Milliseconds an entry stays fresh; `Infinity` never expires, `0` always refetches. */
  ttl: number;
  /** Most entries kept in this sublayer (an integer >= 1, or `Infinity`). Default 4. */
  keepN?: number;
  /** Most payload bytes kept in this sublayer. Default `Infinity`. */
  maxBytes?: number;
  /** This manager's cache root; default: the global root, resolved at each operation. */
  root?: string;
  /**
   * A lock whose heartbeat is older than this is taken over; the holder refreshes it every
   * `lockStaleMs / 2`. Default 10,000; at least 2,000.
   */
  lockStaleMs?: number;
  /** Longest wait for another writer's lock before `LockTimeoutError`. Default 30 minutes. */
  lockTimeoutMs?: number;
  /** Tmp files and manifest-less payloads older than this are orphans. Default 24 hours. */
  staleTmpMs?: number;
  /** A hit records its use (payload mtime) at most this often. Default 60,000. */
  touchIntervalMs?: number;
  /** Entries used within `touchIntervalMs + evictionGraceMs` are never evicted. Default 10,000. */
  evictionGraceMs?: number;
  /** A `created_at` further than this in the future counts as expired; `Infinity` never. Default 300,000. */
  maxClockSkewMs?: number;
  /** Clock in ms since the epoch, for tests. Default `Date.now`. */
  now?: () => number;
  /**
   * `'group'`: several users share this cache through a Unix group. Everything the cache creates is made
   * usable by the group whatever each user's umask: directories `2775` (group-writable, setgid so the group
   * is inherited), files `0664`. Default: the umask decides (each user's own cache). Ignored on Windows,
   * where a directory's ACL is inherited by what is created in it.
   */
  shared?: 'group';
  /**
   * Cache roots this manager reads but never writes (a site cache an admin fills), consulted in order after
   * its own root and before fetching: a fresh entry there is served from where it is, never copied, touched,
   * evicted or swept. Default: `PAYLOAD_CACHE_READONLY_ROOTS` (roots joined with `path.delimiter`), else none.
   */
  readOnlyRoots?: readonly string[];
  /**
   * Never call the fetcher: serve any committed entry in any root, fresh or expired, and otherwise fail with
   * `OfflineMissError`. Default: `PAYLOAD_CACHE_OFFLINE` (`1`, `true`, `yes` or `on`), else `false`.
   */
  offline?: boolean;
}

type PlainOptions = Omit<CacheManagerOptions, 'root' | 'shared' | 'readOnlyRoots' | 'offline'>;

export type Settings = Required<PlainOptions> & {
  root: string | undefined;
  /** Explicit modes for what the cache creates (`shared: 'group'`), or `undefined` for the umask's. */
  modes: CreateModes | undefined;
  /** `undefined`: from `PAYLOAD_CACHE_READONLY_ROOTS` at each operation. */
  readOnlyRoots: readonly string[] | undefined;
  /** `undefined`: from `PAYLOAD_CACHE_OFFLINE` at each operation. */
  offline: boolean | undefined;
};

const DEFAULTS = {
  keepN: 4,
  maxBytes: Number.POSITIVE_INFINITY,
  lockStaleMs: 10_000,
  lockTimeoutMs: 30 * 60_000,
  staleTmpMs: 24 * 60 * 60_000,
  touchIntervalMs: 60_000,
  evictionGraceMs: 10_000,
  maxClockSkewMs: 5 * 60_000,
  now: Date.now,
};

type Rule = (value: unknown) => string | undefined;

const nonNegative: Rule = (v) => (typeof v === 'number' && v >= 0 ? undefined : 'a number >= 0');
const finiteNonNegative: Rule = (v) =>
  typeof v === 'number' && Number.isFinite(v) && v >= 0 ? undefined : 'a finite number >= 0';

const RULES: Record<Exclude<keyof CacheManagerOptions, 'sublayer'>, Rule> = {
  ttl: nonNegative,
  keepN: (v) =>
    v === Number.POSITIVE_INFINITY || (Number.isInteger(v) && (v as number) >= 1)
      ? undefined
      : 'an integer >= 1 or Infinity',
  maxBytes: nonNegative,
  root: (v) =>
    typeof v === 'string' && v.length > 0 && !v.includes('\u0000') ? undefined : 'a non-empty path',
  lockStaleMs: (v) =>
    typeof v === 'number' && Number.isFinite(v) && v >= MIN_LOCK_STALE_MS
      ? undefined
      : `a finite number >= ${MIN_LOCK_STALE_MS}`,
  lockTimeoutMs: finiteNonNegative,
  staleTmpMs: finiteNonNegative,
  touchIntervalMs: finiteNonNegative,
  evictionGraceMs: finiteNonNegative,
  maxClockSkewMs: nonNegative,
  now: (v) => (typeof v === 'function' ? undefined : 'a function returning ms since the epoch'),
  shared: (v) => (v === 'group' ? undefined : "'group'"),
  readOnlyRoots: (v) =>
    Array.isArray(v) && v.every((root) => RULES.root(root) === undefined) ? undefined : 'an array of paths',
  offline: (v) => (typeof v === 'boolean' ? undefined : 'a boolean'),
};

/** Validates constructor options and fills in defaults; throws before anything touches the disk. */
export function resolveSettings(options: CacheManagerOptions): Settings {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError('CacheManager needs an options object with sublayer and ttl');
  }
  validateKey(options.sublayer, 'sublayer');
  if (options.ttl === undefined) throw new InvalidOptionsError('option ttl is required (ms, or Infinity)');
  for (const [name, value] of Object.entries(options)) {
    if (name === 'sublayer' || value === undefined) continue;
    // Own keys only: `hasOwnProperty` or `valueOf` must not pass as options through Object.prototype.
    if (!Object.hasOwn(RULES, name)) throw new InvalidOptionsError(`unknown option "${name}"`);
    const rule = RULES[name as keyof typeof RULES];
    const expected = rule(value);
    if (expected) throw new InvalidOptionsError(`option ${name} must be ${expected}, got ${String(value)}`);
  }
  const { shared, readOnlyRoots, offline, ...plain } = options;
  const defined = Object.fromEntries(Object.entries(plain).filter(([, value]) => value !== undefined));
  return {
    ...DEFAULTS,
    root: undefined,
    ...defined,
    modes: shared === 'group' && process.platform !== 'win32' ? GROUP_SHARED_MODES : undefined,
    readOnlyRoots: readOnlyRoots === undefined ? undefined : [...readOnlyRoots],
    offline,
  } as Settings;
}

/** The read-only roots in effect: the option's, else `PAYLOAD_CACHE_READONLY_ROOTS`'s; absolute, own root left out. */
export function readOnlyRootsOf(settings: Settings, ownRoot: string): string[] {
  return resolveReadOnlyRoots(settings.readOnlyRoots ?? readOnlyRootsFromEnv(), ownRoot);
}

/** Read-only roots made absolute, each once, without the own root (which is never read-only to itself). */
export function resolveReadOnlyRoots(given: readonly string[], ownRoot: string): string[] {
  const roots = given.map((root) => path.resolve(root)).filter((root) => root !== ownRoot);
  return [...new Set(roots)];
}

/** `PAYLOAD_CACHE_READONLY_ROOTS`: roots joined with `path.delimiter`, empty items ignored. */
export function readOnlyRootsFromEnv(): string[] {
  return (process.env.PAYLOAD_CACHE_READONLY_ROOTS ?? '').split(path.delimiter).filter((root) => root !== '');
}

const OFFLINE_WORDS: Record<string, boolean> = { '1': true, true: true, yes: true, on: true };
const ONLINE_WORDS: Record<string, boolean> = { '': true, '0': true, false: true, no: true, off: true };

/** Offline mode in effect: the option, else `PAYLOAD_CACHE_OFFLINE`; a value that is neither yes nor no throws. */
export function isOffline(settings: Settings): boolean {
  if (settings.offline !== undefined) return settings.offline;
  const value = (process.env.PAYLOAD_CACHE_OFFLINE ?? '').trim().toLowerCase();
  if (Object.hasOwn(OFFLINE_WORDS, value)) return true;
  if (Object.hasOwn(ONLINE_WORDS, value)) return false;
  throw new InvalidOptionsError(
    `PAYLOAD_CACHE_OFFLINE must be 1, true, yes or on (or 0, false, no, off), got "${process.env.PAYLOAD_CACHE_OFFLINE}"`,
  );
}

/**
 * Validates a `getOrExtract` call's fetcher and options, the extraction's included, and returns what the
 * extraction core takes (the key is checked separately).
 */
export function validateExtractArgs(fetchFn: unknown, options: unknown): ExtractionRequest {
  validateFetchArgs(fetchFn, options);
  const { format, maxEntries, maxExtractedBytes, maxCompressionRatio, allowLinks } = (options ??
    {}) as GetOrExtractOptions;
  if (format !== undefined && !ARCHIVE_FORMATS.includes(format)) {
    throw new InvalidOptionsError(
      `format must be one of ${ARCHIVE_FORMATS.join(', ')}, got ${String(format)}`,
    );
  }
  if (allowLinks !== undefined && !LINK_POLICIES.includes(allowLinks)) {
    throw new InvalidOptionsError(
      `allowLinks must be one of ${LINK_POLICIES.join(', ')}, got ${String(allowLinks)}`,
    );
  }
  const limits = resolveLimits({ maxEntries, maxExtractedBytes, maxCompressionRatio });
  return {
    ...limits,
    ...(format === undefined ? {} : { format }),
    ...(allowLinks === undefined ? {} : { allowLinks }),
  };
}

/**
 * What `getOrExtract` hands the extraction core besides the archive: the limits, and the format and the
 * link policy if given.
 */
export interface ExtractionRequest extends ExtractionLimits {
  readonly format?: ArchiveFormat;
  readonly allowLinks?: LinkPolicy;
}

/** Validates a `getOrFetch` call's fetcher and options (the key is checked separately). */
export function validateFetchArgs(fetchFn: unknown, options: unknown): asserts options is GetOrFetchOptions {
  if (typeof fetchFn !== 'function') throw new InvalidOptionsError('fetchFn must be a function');
  if (options === undefined) return;
  if (typeof options !== 'object' || options === null)
    throw new InvalidOptionsError('options must be an object');
  const { validator, signal, refresh, staleIfError } = options as GetOrFetchOptions;
  if (validator !== undefined && typeof validator !== 'function') {
    throw new InvalidOptionsError('validator must be a function');
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidOptionsError('signal must be an AbortSignal');
  }
  for (const [name, value] of Object.entries({ refresh, staleIfError })) {
    if (value !== undefined && typeof value !== 'boolean')
      throw new InvalidOptionsError(`${name} must be a boolean`);
  }
}
