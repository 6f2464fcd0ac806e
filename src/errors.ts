/**
 * Every error this library raises on purpose extends {@link PayloadCacheError} and carries a stable
 * `code`, so callers can branch on `err.code` without parsing messages. A fetcher's own errors and
 * file-system errors (`ENOSPC`, `EACCES`...) propagate unchanged.
 */
export class PayloadCacheError extends Error {
  /** Stable identifier of the failure (`ERR_PAYLOAD_CORRUPT`, `ERR_UNSAFE_PATH`...); branch on it. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Why a downloaded payload was refused. */
export type CorruptReason = 'validator-rejected' | 'size-mismatch' | 'hash-mismatch' | 'truncated';

/**
 * The bytes produced by a fetcher were refused before publication: the validator threw, the size or
 * sha256 differs from what the fetcher promised, or the body ended early. Nothing was published and the
 * previous entry is intact.
 */
export class BulkPayloadCorruptError extends PayloadCacheError {
  /** The key whose payload was refused. */
  readonly key: string;
  /** Which check refused it; for `validator-rejected` the validator's error is the `cause`. */
  readonly reason: CorruptReason;

  constructor(key: string, reason: CorruptReason, detail: string, options?: { cause?: unknown }) {
    super('ERR_PAYLOAD_CORRUPT', `payload for key "${key}" refused (${reason}): ${detail}`, options);
    this.key = key;
    this.reason = reason;
  }
}

/** A key or sublayer breaks one of the naming rules; `rule` names which. Raised before any I/O. */
export class InvalidKeyError extends PayloadCacheError {
  /** The refused key or sublayer, as given (possibly not a string). */
  readonly key: unknown;
  /** The naming rule it breaks, in words. */
  readonly rule: string;

  constructor(what: 'key' | 'sublayer', key: unknown, rule: string) {
    super('ERR_INVALID_KEY', `invalid ${what} ${describe(key)}: ${rule}`);
    this.key = key;
    this.rule = rule;
  }
}

/** Another writer held the key's lock for longer than `lockTimeoutMs`. */
export class LockTimeoutError extends PayloadCacheError {
  /** The key whose lock was not acquired. */
  readonly key: string;
  /** How long this caller waited, in milliseconds. */
  readonly waitedMs: number;
  /** `host/pid` of the lock's holder, or `undefined` when its owner file could not be read. */
  readonly holder: string | undefined;

  constructor(key: string, waitedMs: number, holder: string | undefined) {
    const heldBy = holder ? `, held by ${holder}` : '';
    super('ERR_LOCK_TIMEOUT', `gave up waiting for the lock of key "${key}" after ${waitedMs} ms${heldBy}`);
    this.key = key;
    this.waitedMs = waitedMs;
    this.holder = holder;
  }
}

/** An option, argument or fetcher answer is not usable (including `NOT_MODIFIED` with no previous entry). */
export class InvalidOptionsError extends PayloadCacheError {
  constructor(message: string) {
    super('ERR_INVALID_OPTIONS', message);
  }
}

function describe(value: unknown): string {
  if (typeof value !== 'string') return `(${value === null ? 'null' : typeof value})`;
  const shown = value.length > 60 ? `${value.slice(0, 60)}...` : value;
  return JSON.stringify(shown);
}
