import { InvalidOptionsError } from './errors.js';
import { describeUrl } from './http-errors.js';

/** A URL for {@link httpFetcher} with headers of its own (its API key, say), sent to its origin only. */
export interface HttpMirror {
  /** An absolute http(s) URL. */
  url: string | URL;
  /**
   * Request headers for this URL's origin only, on top of the fetcher's `headers` when this URL shares the
   * first URL's origin. Like those, they do not follow a redirect to another origin.
   */
  headers?: Record<string, string>;
}

/** One place {@link httpFetcher} can download the payload from: a URL, or a URL with its own headers. */
export type HttpSource = string | URL | HttpMirror;

/** @internal One URL to try, with the headers that may be sent to it. */
export interface Mirror {
  readonly url: URL;
  /** Header names in lower case. */
  readonly headers: Record<string, string>;
  /** Origin and path: the URL's name in messages and in the memory of failures (never a query string). */
  readonly name: string;
}

/**
 * The URLs in the order given, each with the headers it may receive: the fetcher's `headers` go to the first
 * URL's origin only (any of them may be a credential, such as `X-Api-Key`, and a mirror elsewhere is another
 * party), and a URL's own headers to that URL only.
 */
export function parseMirrors(
  sources: HttpSource | readonly HttpSource[],
  sharedHeaders: Record<string, string> | undefined,
): Mirror[] {
  const list: readonly HttpSource[] = isSourceList(sources) ? sources : [sources];
  const parsed = list.map((source) =>
    isHttpMirror(source)
      ? { url: parseUrl(source.url), headers: source.headers }
      : { url: parseUrl(source), headers: undefined },
  );
  const firstOrigin = parsed[0]?.url.origin;
  if (firstOrigin === undefined) throw new InvalidOptionsError('httpFetcher needs at least one URL');
  return parsed.map(({ url, headers }) => ({
    url,
    headers: {
      ...(url.origin === firstOrigin ? lowerCaseKeys(sharedHeaders) : {}),
      ...lowerCaseKeys(headers),
    },
    name: describeUrl(url),
  }));
}

/**
 * Names (origin and path) of the URLs that failed in this process, the longest-ago failure first.
 * Process-wide rather than per fetcher, since a fetcher is often made anew for each call
 * (`getOrFetch(key, httpFetcher(urls))`) and would otherwise never learn.
 */
const failedUrls = new Set<string>();
/** Far more URLs than any mirror list holds; a process fetching ever new URLs still keeps it bounded. */
const MAX_REMEMBERED_FAILURES = 1_000;

/** Sends `mirror` to the back of the line for the rest of the process (until it succeeds again). */
export function rememberFailure(mirror: Mirror): void {
  failedUrls.delete(mirror.name);
  failedUrls.add(mirror.name);
  if (failedUrls.size > MAX_REMEMBERED_FAILURES) {
    const oldest = failedUrls.values().next().value;
    if (oldest !== undefined) failedUrls.delete(oldest);
  }
}

export function forgetFailure(mirror: Mirror): void {
  failedUrls.delete(mirror.name);
}

/**
 * The order to try `mirrors` in: as given, except that the URLs that failed earlier in this process go
 * last, the one whose failure is oldest (the likeliest to be back) first among them.
 */
export function tryOrder(mirrors: readonly Mirror[]): Mirror[] {
  const failureRank = new Map([...failedUrls].map((name, rank) => [name, rank]));
  const rankOf = (mirror: Mirror) => failureRank.get(mirror.name) ?? -1;
  // Array sort is stable: the URLs that never failed (all -1) keep the order they were given in.
  return [...mirrors].sort((a, b) => rankOf(a) - rankOf(b));
}

export function lowerCaseKeys(headers: Record<string, string> | undefined): Record<string, string> {
  return Object.fromEntries(
    Object.entries(headers ?? {}).map(([name, value]) => [name.toLowerCase(), value]),
  );
}

function isSourceList(sources: HttpSource | readonly HttpSource[]): sources is readonly HttpSource[] {
  return Array.isArray(sources);
}

function isHttpMirror(source: HttpSource): source is HttpMirror {
  return typeof source === 'object' && source !== null && !(source instanceof URL);
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
