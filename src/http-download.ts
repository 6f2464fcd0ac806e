import { createHash, type Hash } from 'node:crypto';
import { pipeline } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { type Dispatcher, request } from 'undici';
import { sleep } from './abort.js';
import { BulkPayloadCorruptError, PayloadCacheError } from './errors.js';
import { describeUrl, HttpStatusError, ProxyError } from './http-errors.js';
import type { Settings } from './http-fetcher.js';
import type { Mirror } from './mirrors.js';
import { proxyRefusal, type Route } from './proxy.js';
import type { FetchContext } from './types.js';

const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);

export type Response = Dispatcher.ResponseData;

/** One URL's download: its retry budget, what allows a resume, and the response being streamed. */
export class Download {
  readonly mirror: Mirror;
  readonly #settings: Settings;
  readonly #ctx: FetchContext;
  readonly #route: Route;
  #retriesLeft: number;
  #failures = 0;
  #current: Response | undefined;
  /** The first response allowed resuming: `Accept-Ranges: bytes`, no encoding, a strong validator. */
  #canResume = false;
  /** Last-Modified is a strong validator: at least a second older than the response's Date. */
  #lastModifiedIsStrong = false;
  /** The URL that answered last (after redirects), for messages. */
  #resolvedUrl: URL;
  totalBytes: number | undefined;
  etag: string | undefined;
  lastModified: string | undefined;

  constructor(mirror: Mirror, settings: Settings, ctx: FetchContext, route: Route) {
    this.mirror = mirror;
    this.#resolvedUrl = mirror.url;
    this.#settings = settings;
    this.#ctx = ctx;
    this.#route = route;
    this.#retriesLeft = settings.retries;
  }

  /**
   * Sends the first request and returns its usable answer: a `304` to a conditional request, or a `200`
   * whose size and validators are taken in (a `Content-Length` above `maxBytes` is refused here).
   */
  async begin(conditional: boolean): Promise<Response> {
    const first = await this.#open(0, conditional);
    if (first.statusCode === 200) this.#adopt(first);
    return first;
  }

  /**
   * Sends the request (a range request from `offset` when it is > 0), following redirects and retrying
   * retryable failures, and returns the first usable response: 2xx, or 304 for a conditional request.
   */
  async #open(offset: number, conditional: boolean): Promise<Response> {
    for (;;) {
      let response: Response;
      try {
        response = await this.#follow(this.#requestHeaders(offset, conditional));
      } catch (error) {
        if (this.#ctx.signal.aborted) throw this.#ctx.signal.reason;
        // A proxy's 502 or 503 is trouble on the way, retried like a server's; its 403 or 407 is a rule.
        const retryable =
          !(error instanceof PayloadCacheError) ||
          (error instanceof ProxyError && RETRYABLE_STATUS.has(error.status));
        if (!retryable) throw error;
        await this.#backoff(error, undefined);
        continue;
      }
      const status = response.statusCode;
      const revalidated = status === 304 && conditional && this.#ctx.previous !== undefined;
      // Only a 200, or a 206 / 416 answering our range request, is about the representation itself: a 202's
      // or a 204's body is not the resource and must never become its payload.
      const usable = status === 200 || (offset > 0 && (status === 206 || status === 416)) || revalidated;
      if (usable) {
        this.#current = response;
        return response;
      }
      await discard(response);
      if (!RETRYABLE_STATUS.has(status)) {
        const detail = status >= 200 && status < 300 ? 'a success status that carries no payload' : '';
        throw new HttpStatusError(status, this.#resolvedUrl, detail);
      }
      await this.#backoff(new HttpStatusError(status, this.#resolvedUrl), retryAfterMs(response));
    }
  }

  /** Lets go of the response being read, and of its connection. */
  async close(): Promise<void> {
    const body = this.#current?.body;
    this.#current = undefined;
    if (body && !body.destroyed) {
      // undici reports destroying an unread body as an 'error' event; unheard, it would crash the process.
      body.on('error', () => {});
      body.destroy();
    }
  }

  /**
   * The payload's bytes from the first response on, resumed or restarted on this URL after a break. The
   * whole is checked before the end is reported: a digest other than `expectedSha256` or more bytes than
   * the stated size is a {@link BulkPayloadCorruptError} here, so that the next URL can be tried instead.
   * What `onProgress` throws comes out wrapped in a {@link CallerError}.
   */
  async *chunks(first: Response): AsyncGenerator<Uint8Array> {
    let response = first;
    let received = 0;
    let digest = this.#newDigest();
    const { maxBytes } = this.#settings;
    for (;;) {
      try {
        for await (const chunk of decodedBody(response, this.#resolvedUrl)) {
          received += (chunk as Buffer).byteLength;
          if (received > maxBytes) throw this.#tooLarge(received);
          if (this.totalBytes !== undefined && received > this.totalBytes) throw this.#tooLong(received);
          digest?.update(chunk as Buffer);
          this.#reportProgress(received);
          yield chunk as Buffer;
        }
        // A body that ends short of the known size (a 206 for less than the rest, a connection closed
        // cleanly too early) is a break like any other: resume it or fail as truncated.
        if (this.totalBytes === undefined || received >= this.totalBytes) return this.#checkDigest(digest);
        throw new Error(`the body ended after ${received} of ${this.totalBytes} bytes`);
      } catch (error) {
        if (error instanceof CallerError) throw error;
        if (error instanceof PayloadCacheError || this.#ctx.signal.aborted) throw this.#abortReasonOr(error);
        response.body.destroy();
        if (this.#retriesLeft === 0) throw this.#truncated(received, error);
        await this.#backoff(error, undefined);
        const next = await this.#resume(received);
        if (next === COMPLETE) return this.#checkDigest(digest);
        response = next;
        if (!this.#continues(response, received)) {
          this.#ctx.resetBody();
          received = 0;
          digest = this.#newDigest();
        }
        this.#adopt(response);
      }
    }
  }

  /** Hashing costs CPU: only when there is a digest to check. */
  #newDigest(): Hash | undefined {
    return this.#settings.expectedSha256 === undefined ? undefined : createHash('sha256');
  }

  #checkDigest(digest: Hash | undefined): void {
    const expected = this.#settings.expectedSha256?.toLowerCase();
    const actual = digest?.digest('hex');
    if (actual === expected) return;
    const detail = `expected sha256 ${expected}, got ${actual} from ${describeUrl(this.#resolvedUrl)}`;
    throw new BulkPayloadCorruptError(this.#ctx.key, 'hash-mismatch', detail);
  }

  /** `onProgress` is the caller's code: what it throws ends the download as it is, never as a network break. */
  #reportProgress(receivedBytes: number): void {
    try {
      this.#settings.onProgress?.({ receivedBytes, totalBytes: this.totalBytes });
    } catch (thrown) {
      throw new CallerError(thrown);
    }
  }

  /**
   * Asks for the rest of a broken body, with `If-Range` and a strong validator only. What may continue the
   * bytes received so far is a `206` of the same representation (`#continues`); a `200` is the whole payload
   * again, and any other answer is dropped and the whole payload requested: partial data is never appended
   * to bytes it does not follow. A `416` saying the representation is exactly as long as what we have means
   * the body was complete (a chunked body that lost only its last chunk).
   */
  async #resume(received: number): Promise<Response | typeof COMPLETE> {
    if (received === 0 || !this.#canResume) return this.#open(0, false);
    const next = await this.#open(received, false);
    if (next.statusCode === 416) {
      await discard(next);
      const total = unsatisfiedRangeTotal(next);
      const known = this.totalBytes === undefined || this.totalBytes === received;
      if (total === received && known) return COMPLETE;
      return this.#open(0, false);
    }
    if (next.statusCode !== 206 || this.#continues(next, received)) return next;
    await discard(next);
    return this.#open(0, false);
  }

  /**
   * Whether a `206` continues exactly the bytes received: it starts at `received`, comes with the validator
   * we asked for (a server that ignored `If-Range` may send another version's bytes) and gives the total we
   * know. A range that stops short of the end is fine: when its body ends, the rest is asked for again.
   */
  #continues(response: Response, received: number): boolean {
    if (response.statusCode !== 206) return false;
    const range = contentRange(response);
    if (!range || range.start !== received || range.end < range.start) return false;
    const etag = header(response.headers, 'etag');
    if (etag !== undefined && etag !== this.etag) return false;
    const lastModified = header(response.headers, 'last-modified');
    if (this.etag === undefined && lastModified !== undefined && lastModified !== this.lastModified)
      return false;
    const total = range.total ?? this.totalBytes;
    if (this.totalBytes !== undefined && total !== this.totalBytes) return false;
    return total === undefined || range.end < total;
  }

  /**
   * The validator for `If-Range`, which must be strong (RFC 9110 13.1.5): a strong entity tag, or, when no
   * entity tag is known at all, a Last-Modified at least a second older than the response's Date.
   */
  #resumeValidator(): string | undefined {
    if (this.etag !== undefined) return this.etag.startsWith('W/') ? undefined : this.etag;
    return this.#lastModifiedIsStrong ? this.lastModified : undefined;
  }

  #adopt(response: Response): void {
    this.#current = response;
    const headers = response.headers;
    const encoded = contentEncoding(response) !== 'identity';
    if (response.statusCode === 200) {
      this.totalBytes = encoded ? undefined : totalBytesOf(response);
      this.etag = header(headers, 'etag');
      this.lastModified = header(headers, 'last-modified');
      const date = Date.parse(header(headers, 'date') ?? '');
      const modified = Date.parse(this.lastModified ?? '');
      this.#lastModifiedIsStrong = date - modified >= 1_000;
      const ranges = header(headers, 'accept-ranges')?.toLowerCase() === 'bytes';
      this.#canResume = ranges && !encoded && this.#resumeValidator() !== undefined;
    } else if (response.statusCode === 206) {
      // A 206 never erases a total we know (`Content-Range: bytes a-b/*`).
      this.totalBytes = contentRange(response)?.total ?? this.totalBytes;
    }
    if (this.totalBytes !== undefined && this.totalBytes > this.#settings.maxBytes)
      throw this.#tooLarge(this.totalBytes);
  }

  async #follow(headers: Record<string, string>): Promise<Response> {
    let url = this.mirror.url;
    const visited = new Set<string>();
    for (let redirects = 0; ; redirects++) {
      const response = await this.#request(url, headers);
      this.#resolvedUrl = url;
      const location = header(response.headers, 'location');
      if (!REDIRECT_STATUS.has(response.statusCode) || location === undefined) return response;
      await discard(response);
      visited.add(url.href);
      const next = new URL(location, url);
      if (visited.has(next.href)) throw new HttpStatusError(response.statusCode, url, 'redirect loop');
      if (redirects >= this.#settings.maxRedirections) {
        throw new HttpStatusError(
          response.statusCode,
          url,
          `more than ${this.#settings.maxRedirections} redirects`,
        );
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new HttpStatusError(
          response.statusCode,
          url,
          `redirect to unsupported protocol ${next.protocol}`,
        );
      }
      if (next.origin !== url.origin) headers = this.#headersForAnotherOrigin(headers);
      url = next;
    }
  }

  async #request(url: URL, headers: Record<string, string>): Promise<Response> {
    try {
      return await request(url, {
        dispatcher: this.#route.dispatcher,
        method: 'GET',
        headers,
        signal: this.#ctx.signal,
        headersTimeout: this.#settings.timeoutMs,
        bodyTimeout: this.#settings.timeoutMs,
      });
    } catch (error) {
      throw proxyRefusal(error, url, this.#route.proxyFor(url)) ?? error;
    }
  }

  /** What may follow a redirect to another origin: the fetcher's own headers, and the caller's if allowed. */
  #headersForAnotherOrigin(headers: Record<string, string>): Record<string, string> {
    const callers = new Set(Object.keys(this.mirror.headers));
    return Object.fromEntries(
      Object.entries(headers).filter(
        ([name]) =>
          !CREDENTIAL_HEADERS.has(name) &&
          (this.#settings.keepHeadersAcrossOrigins === true || !callers.has(name)),
      ),
    );
  }

  #requestHeaders(offset: number, conditional: boolean): Record<string, string> {
    const headers: Record<string, string> = {
      'accept-encoding': 'identity',
      ...this.mirror.headers,
    };
    const previous = this.#ctx.previous?.manifest;
    if (conditional && previous) {
      if (previous.etag) headers['if-none-match'] = previous.etag;
      if (previous.last_modified) headers['if-modified-since'] = previous.last_modified;
    }
    if (offset > 0) {
      headers.range = `bytes=${offset}-`;
      const validator = this.#resumeValidator();
      if (validator) headers['if-range'] = validator;
    }
    return headers;
  }

  /** Spends one retry (or rethrows when none is left) and waits the backoff or the server's `Retry-After`. */
  async #backoff(error: unknown, retryAfter: number | undefined): Promise<void> {
    if (this.#retriesLeft === 0) throw error;
    this.#retriesLeft -= 1;
    this.#failures += 1;
    const { retryDelayMs, maxRetryDelayMs } = this.#settings;
    const exponential = Math.min(maxRetryDelayMs, retryDelayMs * 2 ** (this.#failures - 1));
    const delayMs = retryAfter ?? exponential * (0.5 + Math.random() * 0.5);
    await sleep(Math.min(delayMs, maxRetryDelayMs), this.#ctx.signal);
  }

  #abortReasonOr(error: unknown): unknown {
    return this.#ctx.signal.aborted ? this.#ctx.signal.reason : error;
  }

  #truncated(received: number, cause: unknown): unknown {
    if (this.totalBytes === undefined) return cause;
    const detail = `received ${received} of ${this.totalBytes} bytes from ${describeUrl(this.#resolvedUrl)}`;
    return new BulkPayloadCorruptError(this.#ctx.key, 'truncated', detail, { cause });
  }

  #tooLong(bytes: number): BulkPayloadCorruptError {
    const detail = `${describeUrl(this.#resolvedUrl)} sent at least ${bytes} bytes of the ${this.totalBytes} it stated`;
    return new BulkPayloadCorruptError(this.#ctx.key, 'size-mismatch', detail);
  }

  #tooLarge(bytes: number): BulkPayloadCorruptError {
    const detail = `${bytes} bytes exceed maxBytes ${this.#settings.maxBytes}`;
    return new BulkPayloadCorruptError(this.#ctx.key, 'size-mismatch', detail);
  }
}

function decodedBody(response: Response, url: URL): AsyncIterable<unknown> {
  const encoding = contentEncoding(response);
  if (encoding === 'identity') return response.body;
  const decoder = DECODERS[encoding];
  if (!decoder) {
    throw new PayloadCacheError(
      'ERR_HTTP_CONTENT_ENCODING',
      `unsupported Content-Encoding "${encoding}" from ${describeUrl(url)}`,
    );
  }
  const decoding = decoder();
  // Bytes that do not decode will not decode on a retry either: fail at once, with the encoding named.
  const decoded = pipeline(response.body, decoding, () => {}) as unknown as NodeJS.ReadableStream;
  return (async function* () {
    try {
      yield* decoded as AsyncIterable<unknown>;
    } catch (error) {
      if (!isDecoderError(error)) throw error;
      throw new PayloadCacheError(
        'ERR_HTTP_CONTENT_ENCODING',
        `the ${encoding} body from ${describeUrl(url)} cannot be decoded: ${(error as Error).message}`,
        { cause: error },
      );
    }
  })();
}

/** zlib's errors carry `Z_…` codes (gzip, deflate) or `ERR__ERROR_…`/`ERR_BROTLI…` (brotli). */
function isDecoderError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code ?? '';
  return code.startsWith('Z_') || code.startsWith('ERR__ERROR') || code.startsWith('ERR_BROTLI');
}

const DECODERS: Record<string, () => NodeJS.ReadWriteStream> = {
  gzip: createGunzip,
  'x-gzip': createGunzip,
  deflate: createInflate,
  br: createBrotliDecompress,
};

function contentEncoding(response: Response): string {
  return (header(response.headers, 'content-encoding') ?? 'identity').trim().toLowerCase() || 'identity';
}

/** Size of the whole payload: `Content-Range`'s total for a 206, `Content-Length` for a 200. */
function totalBytesOf(response: Response): number | undefined {
  if (response.statusCode === 206) return contentRange(response)?.total;
  const length = Number(header(response.headers, 'content-length'));
  return Number.isSafeInteger(length) && length >= 0 ? length : undefined;
}

function contentRange(
  response: Response,
): { start: number; end: number; total: number | undefined } | undefined {
  const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header(response.headers, 'content-range') ?? '');
  if (!match) return undefined;
  const total = match[3] === '*' ? undefined : Number(match[3]);
  return { start: Number(match[1]), end: Number(match[2]), total };
}

/** The representation's length a `416` states in `Content-Range: bytes *\/N`. */
function unsatisfiedRangeTotal(response: Response): number | undefined {
  const match = /^bytes \*\/(\d+)$/.exec(header(response.headers, 'content-range') ?? '');
  return match ? Number(match[1]) : undefined;
}

/** The body of a resumed download already holds everything (a `416` for exactly the length received). */
const COMPLETE = Symbol('complete');

/** Something the caller's own callback threw: it ends the download unchanged, never as a network break. */
export class CallerError {
  constructor(readonly thrown: unknown) {}
}

// RFC 9110 5.6.7: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT")
// and asctime ("Sun Nov  6 08:49:37 1994"). Anything else (V8 reads "1.5" as a date in 2001) is not a date.
const HTTP_DATE =
  /^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT|[A-Z][a-z]+day, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})$/;

/** `Retry-After` in ms: delta-seconds or an HTTP date; anything else (`1.5`, `-1`) is ignored: backoff applies. */
function retryAfterMs(response: Response): number | undefined {
  const value = header(response.headers, 'retry-after')?.trim();
  if (value === undefined) return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1_000;
  if (!HTTP_DATE.test(value)) return undefined;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function header(headers: Response['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

async function discard(response: Response): Promise<void> {
  await response.body.dump().catch(() => {});
}

const CREDENTIAL_HEADERS = new Set(['authorization', 'cookie', 'proxy-authorization']);
