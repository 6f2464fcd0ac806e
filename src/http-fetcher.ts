import type { Dispatcher } from 'undici';
import { InvalidOptionsError } from './errors.js';
import { Download } from './http-download.js';
import { type FetchFn, NOT_MODIFIED } from './types.js';

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
   * Extra request headers (e.g. authorization, an API key). Never echoed in error messages. All of them are
   * dropped when a redirect leaves the origin (any of them may be a credential), unless
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
  /** Failed requests and broken bodies retried (resumes included). Default 3. */
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
   * The payload's expected sha256 (64 hex digits); a different digest is refused (`ERR_PAYLOAD_CORRUPT`,
   * `hash-mismatch`). Default: none.
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
 */
export function httpFetcher(url: string | URL, options: HttpFetcherOptions = {}): FetchFn {
  const target = parseUrl(url);
  const settings = resolveHttpOptions(options);
  return async (ctx) => {
    const download = new Download(target, settings, ctx);
    try {
      const first = await download.open(0, true);
      if (first.statusCode === 304) {
        await download.close();
        return NOT_MODIFIED;
      }
      return download.start(first);
    } catch (error) {
      await download.close();
      throw error;
    }
  };
}

/** @internal The options with their defaults filled in. */
export type Settings = typeof HTTP_FETCHER_DEFAULTS &
  Pick<
    HttpFetcherOptions,
    'headers' | 'dispatcher' | 'onProgress' | 'expectedSha256' | 'keepHeadersAcrossOrigins'
  >;

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

function parseUrl(url: string | URL): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidOptionsError('httpFetcher needs an absolute http(s) URL');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new InvalidOptionsError(`httpFetcher supports http and https, not ${parsed.protocol}`);
  }
  return parsed;
}

function withoutUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
