import { PayloadCacheError } from './errors.js';

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

/** For messages: origin and path only, since query strings often carry signatures and tokens. */
export function describeUrl(url: URL): string {
  return `${url.origin}${url.pathname}`;
}
