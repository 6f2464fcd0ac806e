import { promises as fsp } from 'node:fs';
import { raceAbort } from './abort.js';
import { type PayloadWriter, releaseBody, type SizeLimit } from './atomic-writer.js';
import { BulkPayloadCorruptError, InvalidOptionsError } from './errors.js';
import type { FetchedBody, FetchResult, GetOrFetchOptions, NOT_MODIFIED } from './types.js';

/**
 * What a fetcher answered, and whether the bytes it produced may be published: the checks of
 * DESIGN.md principle 3, run on the tmp file before anything becomes visible.
 */

/** Normalises a fetcher's answer to `{ body, ... }` and checks the facts it states about the body. */
export function asFetchedBody(result: Exclude<FetchResult, typeof NOT_MODIFIED>): FetchedBody {
  const fetched = isFetchedBody(result) ? result : { body: result };
  try {
    validateFetchedFacts(fetched);
  } catch (error) {
    releaseBody(fetched.body);
    throw error;
  }
  return fetched;
}

/** Lets go of whatever body a fetcher answered with, when it will not be read. */
export function releaseResult(result: FetchResult): void {
  if (typeof result === 'symbol') return;
  releaseBody(isFetchedBody(result) ? result.body : result);
}

/**
 * The limit a streamed body must not pass: with an `expectedSize`, the first byte past it stops the write
 * (a 300 MiB answer to a 10-byte promise does not fill the disk first). Read at every chunk, since a
 * fetcher that restarts a download (httpFetcher on a new version) may state a new size.
 */
export function oversizeGuard(key: string, fetched: FetchedBody): SizeLimit {
  return {
    maxBytes: () => fetched.expectedSize ?? Number.POSITIVE_INFINITY,
    error: (receivedBytes) =>
      new BulkPayloadCorruptError(
        key,
        'size-mismatch',
        `expected ${fetched.expectedSize} bytes, received at least ${receivedBytes}`,
      ),
  };
}

function isFetchedBody(result: Exclude<FetchResult, typeof NOT_MODIFIED>): result is FetchedBody {
  return (
    typeof result === 'object' &&
    result !== null &&
    'body' in result &&
    !(result instanceof Uint8Array) &&
    typeof (result as { pipe?: unknown }).pipe !== 'function' &&
    typeof (result as { getReader?: unknown }).getReader !== 'function'
  );
}

export function checkIntegrity(key: string, writer: PayloadWriter, fetched: FetchedBody): void {
  const { expectedSize, sha256 } = fetched;
  if (expectedSize !== undefined && writer.sizeBytes !== expectedSize) {
    const reason = writer.sizeBytes < expectedSize ? 'truncated' : 'size-mismatch';
    throw new BulkPayloadCorruptError(
      key,
      reason,
      `expected ${expectedSize} bytes, received ${writer.sizeBytes}`,
    );
  }
  if (sha256 !== undefined && writer.sha256 !== sha256.toLowerCase()) {
    throw new BulkPayloadCorruptError(
      key,
      'hash-mismatch',
      `expected sha256 ${sha256}, got ${writer.sha256}`,
    );
  }
}

/**
 * Runs the caller's validator on the sealed tmp file. It is raced with `signal`: an abort answers at once
 * (with the signal's reason) even if the validator never settles, and the validator sees the signal too.
 */
export async function runValidator(
  key: string,
  writer: PayloadWriter,
  validator: GetOrFetchOptions['validator'],
  signal: AbortSignal,
): Promise<void> {
  if (!validator) return;
  try {
    const info = {
      key,
      path: writer.tmpPath,
      sizeBytes: writer.sizeBytes,
      sha256: writer.sha256,
      signal,
      bytes: () => fsp.readFile(writer.tmpPath),
    };
    await raceAbort(
      Promise.resolve().then(() => validator(info)),
      signal,
    );
  } catch (error) {
    if (signal.aborted && error === signal.reason) throw error;
    throw new BulkPayloadCorruptError(key, 'validator-rejected', describeThrown(error), { cause: error });
  }
}

/** Words for anything a callback threw, even a value whose conversion to a string throws itself. */
function describeThrown(thrown: unknown): string {
  try {
    return thrown instanceof Error ? String(thrown.message) : String(thrown);
  } catch {
    try {
      return Object.prototype.toString.call(thrown);
    } catch {
      return 'a value that cannot be shown';
    }
  }
}

/** Checks what a fetcher said about its body before any byte is written. */
function validateFetchedFacts(fetched: FetchedBody): void {
  const { expectedSize, sha256, etag, lastModified } = fetched;
  if (expectedSize !== undefined && !(Number.isSafeInteger(expectedSize) && expectedSize >= 0)) {
    throw new InvalidOptionsError(`expectedSize must be an integer >= 0, got ${String(expectedSize)}`);
  }
  if (sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(sha256)) {
    throw new InvalidOptionsError('sha256 must be 64 hex digits');
  }
  for (const [name, value] of Object.entries({ etag, lastModified })) {
    if (value !== undefined && typeof value !== 'string')
      throw new InvalidOptionsError(`${name} must be a string`);
  }
}
