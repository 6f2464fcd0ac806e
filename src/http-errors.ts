import { BulkPayloadCorruptError, PayloadCacheError } from './errors.js';

/** The errors httpFetcher raises for what a server, a proxy or the network answered. */

/**
 * The server answered with a status that is not success and is not worth retrying, retries ran out, or the
 * redirects looped, went past `maxRedirections` or left http(s).
 */
export class HttpStatusError extends PayloadCacheError {
  /** The HTTP status of the last response (a 3xx when following redirects failed). */
  readonly status: number;
  /** The URL's origin and path: credentials and query string (often a token) are left out. */
  readonly url: string;

  constructor(status: number, url: URL, detail = '') {
    super('ERR_HTTP_STATUS', `HTTP ${status} from ${describeUrl(url)}${detail ? `: ${detail}` : ''}`);
    this.status = status;
    this.url = describeUrl(url);
  }
}

/**
 * A proxy refused to carry the request: it answered the tunnel an `https://` download asks for (`CONNECT`)
 * with another status than 200, or a forwarded `http://` request with 407 Proxy Authentication Required.
 * The origin server was never reached.
 */
export class ProxyError extends PayloadCacheError {
  /** The proxy's status: 403 for a tunnel its rules forbid, 407 when it wants credentials... */
  readonly status: number;
  /** The proxy's origin, without credentials; `undefined` when a caller's own `dispatcher` chose the proxy. */
  readonly proxy: string | undefined;
  /** The URL the proxy refused to carry: origin and path only. */
  readonly url: string;

  constructor(
    status: number,
    proxy: string | undefined,
    url: string,
    method: 'CONNECT' | 'GET',
    options?: { cause?: unknown },
  ) {
    const request = method === 'CONNECT' ? `the tunnel (CONNECT) for ${url}` : `the request for ${url}`;
    super(
      'ERR_PROXY',
      `${proxy ? `proxy ${proxy}` : "the dispatcher's proxy"} answered ${status} to ${request}${hint(status, method)}`,
      options,
    );
    this.status = status;
    this.proxy = proxy;
    this.url = url;
  }
}

function hint(status: number, method: 'CONNECT' | 'GET'): string {
  if (status === 407) return ': it wants credentials (http://user:password@host:port in the proxy variable)';
  if (status === 403 && method === 'CONNECT') return ': many proxies tunnel to port 443 only';
  return '';
}

/** What one URL answered before httpFetcher moved on to the next. */
export interface MirrorFailure {
  /** The URL as listed: origin and path only (no credentials, no query string). */
  readonly url: string;
  /** The HTTP status, when the answer was one (a proxy's for a {@link ProxyError}). */
  readonly status: number | undefined;
  /** The error's code: `ERR_HTTP_STATUS`, `ERR_PROXY`, `ERR_PAYLOAD_CORRUPT`, `ECONNREFUSED`, `UND_ERR_HEADERS_TIMEOUT`... */
  readonly code: string | undefined;
  /** The answer in a few words: `HTTP 503`, `ECONNREFUSED`, `hash-mismatch`, `proxy answered 403`. */
  readonly answer: string;
  /** The error itself. */
  readonly error: unknown;
}

/**
 * Every URL given to httpFetcher failed (with two or more URLs; a single URL's error is thrown as it is).
 * `failures` lists what each answered, in the order they were tried; the last one's error is the `cause`.
 */
export class MirrorsFailedError extends PayloadCacheError {
  /** What each URL answered, in the order they were tried. */
  readonly failures: readonly MirrorFailure[];

  constructor(failures: readonly MirrorFailure[]) {
    const answers = failures.map((failure) => `${failure.url} (${failure.answer})`);
    super('ERR_ALL_MIRRORS_FAILED', `all ${failures.length} URLs failed: ${answers.join(', ')}`, {
      cause: failures.at(-1)?.error,
    });
    this.failures = failures;
  }
}

/** The {@link MirrorFailure} for the URL named `url` that failed with `error`. */
export function mirrorFailure(url: string, error: unknown): MirrorFailure {
  const code = (error as { code?: unknown } | undefined)?.code;
  const base = { url, error, code: typeof code === 'string' ? code : undefined, status: undefined };
  if (error instanceof HttpStatusError)
    return { ...base, status: error.status, answer: `HTTP ${error.status}` };
  if (error instanceof ProxyError) {
    return { ...base, status: error.status, answer: `proxy answered ${error.status}` };
  }
  if (error instanceof BulkPayloadCorruptError) return { ...base, answer: error.reason };
  return { ...base, answer: base.code ?? (error instanceof Error ? error.name : 'failed') };
}

/** For messages: origin and path only, since query strings often carry signatures and tokens. */
export function describeUrl(url: URL): string {
  return `${url.origin}${url.pathname}`;
}
