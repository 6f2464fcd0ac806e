import { promises as fsp } from 'node:fs';
import type { PayloadWriter } from './atomic-writer.js';
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

/** Lets go of a body that will not be read, so an HTTP response does not hold its socket open. */
function releaseBody(body: unknown): void {
  const source = body as {
    destroy?: () => void;
    cancel?: () => Promise<void>;
    return?: () => Promise<unknown>;
  };
  try {
    if (typeof source.destroy === 'function') source.destroy();
    else if (typeof source.cancel === 'function') source.cancel().catch(() => {});
    else if (typeof source.return === 'function') source.return().catch(() => {});
  } catch {}
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

export async function runValidator(
  key: string,
  writer: PayloadWriter,
  validator: GetOrFetchOptions['validator'],
): Promise<void> {
  if (!validator) return;
  try {
    await validator({
      key,
      path: writer.tmpPath,
      sizeBytes: writer.sizeBytes,
      sha256: writer.sha256,
      bytes: () => fsp.readFile(writer.tmpPath),
    });
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new BulkPayloadCorruptError(key, 'validator-rejected', detail, { cause: error });
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
