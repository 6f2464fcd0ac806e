import type { Dispatcher } from 'undici';
import { InvalidOptionsError } from './errors.js';
import { CallerError, Download, type Response } from './http-download.js';
import { type MirrorFailure, MirrorsFailedError, mirrorFailure } from './http-errors.js';
import {
  forgetFailure,
  type HttpSource,
  type Mirror,
  parseMirrors,
  rememberFailure,
  tryOrder,
} from './mirrors.js';
import { callerRoute, environmentRoute, type Route } from './proxy.js';
import {
  type FetchContext,
  type FetchedBody,
  type FetchFn,
  type FetchResult,
  NOT_MODIFIED,
} from './types.js';

/** What `onProgress` receives after each chunk. */
export interface HttpProgress {
  /** Bytes of the payload received so far (back to 0 when a download restarts from scratch). */
  receivedBytes: number;
  /** The payload's size when the server said it, else `undefined`. */
  totalBytes: number | undefined;
}

/** Options of {@link httpFetcher}. */
export interface HttpFetcherOptions {
  /**
   * Extra request headers (e.g. authorization, an API key), sent to the first URL's origin only: not to a
   * mirror elsewhere (give it its own with `{ url, headers }`). Never echoed in error messages. All of them
   * are dropped when a redirect leaves the origin (any of them may be a credential), unless
   * `keepHeadersAcrossOrigins` is set; `authorization`, `cookie` and `proxy-authorization` are dropped even then.
   */
  headers?: Record<string, string>;
  /** Send `headers` (but never the three credential headers) to the origin a redirect leads to. Default false. */
  keepHeadersAcrossOrigins?: boolean;
  /**
   * An undici Dispatcher (Agent, ProxyAgent, MockAgent...). Default: a fresh `EnvHttpProxyAgent` per download
   * that forwards `http://` URLs through an `http://` proxy and tunnels only `https://` (as curl does).
   */
  dispatcher?: Dispatcher;
  /** Failed requests and broken bodies retried (resumes included), for each URL. Default 3. */
  retries?: number;
  /** First backoff delay; doubles on each retry, with jitter. Default 1,000 ms. */
  retryDelayMs?: number;
  /** Cap on any backoff delay and on `Retry-After`. Default 30,000 ms. */
  maxRetryDelayMs?: number;
  /** Longest wait for response headers, and longest silence while the body streams. Default 30,000 ms. */
  timeoutMs?: number;
  /** Redirects followed before giving up. Default 5. */
  maxRedirections?: number;
  /** Called for each chunk received. Default: none. */
  onProgress?: (progress: HttpProgress) => void;
  /**
   * The payload's expected sha256 (64 hex digits), checked as the body streams: a different digest is
   * refused (`ERR_PAYLOAD_CORRUPT`, `hash-mismatch`), and the next URL, if any, is tried. Default: none.
   */
  expectedSha256?: string;
  /**
   * Largest payload accepted, in bytes; a larger `Content-Length` is refused before the body is read.
   * Default `Infinity`.
   */
  maxBytes?: number;
}

/** @internal The documented defaults of {@link HttpFetcherOptions} (a test holds the README to them). */
export const HTTP_FETCHER_DEFAULTS = {
  retries: 3,
  retryDelayMs: 1_000,
  maxRetryDelayMs: 30_000,
  timeoutMs: 30_000,
  maxRedirections: 5,
  maxBytes: Number.POSITIVE_INFINITY,
};

/**
 * A fetcher for `getOrFetch` that downloads `url` with undici: streamed (constant memory), retried with
 * backoff on network errors, timeouts and 408/429/5xx (honouring `Retry-After`), resumed with `Range` +
 * `If-Range` when the server supports it, and revalidated with `If-None-Match`/`If-Modified-Since` when the
 * cached entry has expired (a `304` renews it without a download). Proxies come from `http_proxy`,
 * `https_proxy` and `no_proxy` (either case) unless a `dispatcher` is given; a proxy's refusal is a
 * {@link ProxyError}.
 *
 * Given several URLs (mirrors of one payload), it tries them in turn: the next one after a URL fails for
 * good (its retries spent, a status such as 404, a body whose size or sha256 is wrong, a proxy's refusal),
 * starting the body over. URLs that failed in this process are tried last. When all fail, the error is a
 * {@link MirrorsFailedError} listing what each answered. `headers` go to the first URL's origin only; a
 * mirror gets its own as `{ url, headers }`.
 */
export function httpFetcher(
  url: HttpSource | readonly HttpSource[],
  options: HttpFetcherOptions = {},
): FetchFn {
  const settings = resolveHttpOptions(options);
  const mirrors = parseMirrors(url, options.headers);
  return (ctx) => new MirroredFetch(mirrors, settings, ctx).fetch();
}

/** @internal The options with their defaults filled in. */
export type Settings = typeof HTTP_FETCHER_DEFAULTS &
  Pick<HttpFetcherOptions, 'dispatcher' | 'onProgress' | 'expectedSha256' | 'keepHeadersAcrossOrigins'>;

function resolveHttpOptions(options: HttpFetcherOptions): Settings {
  const settings = { ...HTTP_FETCHER_DEFAULTS, ...withoutUndefined(options) } as Settings;
  const wholeNonNegative = ['retries', 'maxRedirections'] as const;
  for (const name of wholeNonNegative) {
    if (!Number.isInteger(settings[name]) || settings[name] < 0) {
      throw new InvalidOptionsError(`httpFetcher option ${name} must be an integer >= 0`);
    }
  }
  for (const name of ['retryDelayMs', 'maxRetryDelayMs', 'timeoutMs'] as const) {
    if (!Number.isFinite(settings[name]) || settings[name] < 0) {
      throw new InvalidOptionsError(`httpFetcher option ${name} must be a finite number >= 0`);
    }
  }
  if (!(settings.maxBytes >= 0)) throw new InvalidOptionsError('httpFetcher option maxBytes must be >= 0');
  if (settings.expectedSha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(settings.expectedSha256)) {
    throw new InvalidOptionsError('httpFetcher option expectedSha256 must be 64 hex digits');
  }
  return settings;
}

function withoutUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * One fetch across the URLs, in {@link tryOrder}: the download being read, the URLs left, and what each
 * that failed answered. A URL is left for the next only for what a server, a proxy or the network did:
 * never for an abort or for what the caller's own `onProgress` threw.
 */
class MirroredFetch {
  readonly #listed: readonly Mirror[];
  readonly #waiting: Mirror[];
  readonly #settings: Settings;
  readonly #ctx: FetchContext;
  readonly #route: Route;
  readonly #failures: MirrorFailure[] = [];
  #download: Download | undefined;

  constructor(mirrors: readonly Mirror[], settings: Settings, ctx: FetchContext) {
    this.#listed = mirrors;
    this.#waiting = tryOrder(mirrors);
    this.#settings = settings;
    this.#ctx = ctx;
    // One dispatcher for all the URLs of this fetch: it keeps a pool per origin.
    this.#route = settings.dispatcher
      ? callerRoute(settings.dispatcher)
      : environmentRoute(settings.timeoutMs);
  }

  async fetch(): Promise<FetchResult> {
    try {
      const first = await this.#openNext(true);
      if (first.statusCode === 304) {
        await this.#close();
        return NOT_MODIFIED;
      }
      return this.#fetchedBody(first);
    } catch (error) {
      await this.#close();
      throw error;
    }
  }

  /** The body handed to the cache, with facts that follow the URL being read. */
  #fetchedBody(first: Response): FetchedBody {
    const fetch = this;
    return {
      body: new DownloadBody(this.#chunks(first), () => this.#close()),
      get expectedSize() {
        return fetch.#download?.totalBytes;
      },
      get etag() {
        return fetch.#download?.etag;
      },
      get lastModified() {
        return fetch.#download?.lastModified;
      },
      sha256: this.#settings.expectedSha256,
    };
  }

  async *#chunks(first: Response): AsyncGenerator<Uint8Array> {
    let response = first;
    for (;;) {
      const download = this.#download as Download;
      try {
        yield* download.chunks(response);
        forgetFailure(download.mirror);
        return;
      } catch (error) {
        await download.close();
        this.#leave(download.mirror, error);
        // Another server's copy starts over: its bytes are never spliced onto these.
        this.#ctx.resetBody();
        response = await this.#openNext(false);
      }
    }
  }

  /**
   * Asks the URLs in turn until one answers with the payload (or, `conditional`, a 304), leaving each that
   * fails; throws when none is left.
   */
  async #openNext(conditional: boolean): Promise<Response> {
    for (;;) {
      const mirror = this.#waiting.shift();
      // #leave throws before the list runs out.
      if (mirror === undefined) throw new MirrorsFailedError(this.#failures);
      const download = new Download(mirror, this.#settings, this.#ctx, this.#route);
      this.#download = download;
      try {
        const response = await download.begin(conditional);
        if (response.statusCode === 304) forgetFailure(mirror);
        return response;
      } catch (error) {
        await download.close();
        this.#leave(mirror, error);
      }
    }
  }

  /**
   * Records that `mirror` failed with `error`, or rethrows: an abort and the caller's own errors end the
   * fetch as they are, and so does the failure of the last URL (the error itself when only one was given,
   * else a {@link MirrorsFailedError}).
   */
  #leave(mirror: Mirror, error: unknown): void {
    if (error instanceof CallerError) throw error.thrown;
    if (this.#ctx.signal.aborted) throw this.#ctx.signal.reason;
    if (error instanceof InvalidOptionsError) throw error;
    rememberFailure(mirror);
    this.#failures.push(mirrorFailure(mirror.name, error));
    if (this.#waiting.length > 0) return;
    throw this.#listed.length === 1 ? error : new MirrorsFailedError(this.#failures);
  }

  async #close(): Promise<void> {
    await this.#download?.close();
    if (this.#settings.dispatcher === undefined) await this.#route.dispatcher.close().catch(() => {});
  }
}

/** The body handed to the cache; `destroy()` frees the connection even if it is never read. */
class DownloadBody implements AsyncIterable<Uint8Array> {
  readonly #chunks: AsyncGenerator<Uint8Array>;
  readonly #close: () => Promise<void>;

  constructor(chunks: AsyncGenerator<Uint8Array>, close: () => Promise<void>) {
    this.#chunks = chunks;
    this.#close = close;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    try {
      yield* this.#chunks;
    } finally {
      await this.#close();
    }
  }

  destroy(): void {
    void this.#close();
  }
}
