import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ARCHIVE_FORMATS } from '../archive-safety.js';
import { type ArchiveFormat, type CacheStats, type FetchFn, httpFetcher, NOT_MODIFIED } from '../index.js';
import {
  type Command,
  type CommandInput,
  EXIT_OK,
  flag,
  type Io,
  limitsOf,
  rootOf,
  sharedOf,
  stringOption,
  ttlOf,
} from './command.js';
import { InterruptedError, UsageError } from './errors.js';
import { createProgress } from './progress.js';
import { openSublayer } from './sublayers.js';
import { describeTtl, formatBytes, formatDuration } from './units.js';

export const fetchCommand: Command = {
  name: 'fetch',
  summary: 'Download a URL (or a mirror of it) into the cache and print its path',
  help: `Usage: payload-cache fetch <url> [<url>...] --sublayer S [--key K] [--ttl DURATION] [--refresh]
                           [--extract [--format F] [--allow-links]] [--retries N] [--keep-n N]
                           [--max-bytes SIZE]
                           [--offline] [--shared group] [--root DIR]

Downloads <url> into the cache with the library's httpFetcher (streamed to disk, retried, resumed,
checked against Content-Length) and prints the payload's absolute path on stdout, so that
PAYLOAD=$(payload-cache fetch ...) works in scripts. An entry that is already there and fresh under
--ttl is a hit: nothing is downloaded. Other processes fetching the same key wait for this download
instead of repeating it. Ctrl-C aborts the download (exit 130); nothing is published then.

More URLs are mirrors of the same payload, tried in order: the next one when a URL fails for good
(connection refused, a timeout or a 5xx once its retries are spent, 404 or another error status, a body
shorter than its Content-Length, a proxy's refusal). A broken body is resumed on the URL that sent it;
the next URL starts over. The key comes from the first URL.

Proxies come from http_proxy/https_proxy/no_proxy (or the upper-case names): http:// URLs are
forwarded by the proxy, https:// ones tunnelled with CONNECT.

Read-only roots from PAYLOAD_CACHE_READONLY_ROOTS (a site cache) are looked in after the root: a fresh
entry there is printed where it is, never copied. Offline (--offline, or PAYLOAD_CACHE_OFFLINE=1) nothing
is downloaded: any entry in any root is printed, even an expired one, and a key found nowhere is an
error (exit 1) naming every root searched.

Progress goes to stderr: on a terminal a bar with bytes, rate and ETA; otherwise a plain line at every
10 % (every 10 MiB when the server sends no Content-Length).

With --extract the payload is an archive (zip, tar, tar.gz or a single gzip file, detected from its
bytes) and the directory holding its extracted files is printed instead: one extraction per archive
version, published whole, never a partial directory; a hostile archive (a name leading outside, a link,
a device, a zip bomb) is refused and nothing of it is kept.

Options:
  --sublayer S       The sublayer to store it in (required)
  --key K            The entry's key. Default: the first URL's last path segment, percent-decoded;
                     required when that URL has a query string (two URLs that differ only there would
                     share a key)
  --ttl DURATION     An entry older than this is fetched again (a 304 answer renews it without a
                     download): 7d, 12h, 30m, 45s, 500ms or Infinity. Default Infinity: any entry is a hit
  --refresh          Download even if a fresh entry exists
  --extract          Print the directory of the extracted archive, extracting it first if needed
  --format F         With --extract: zip, tar, tar.gz or gzip, when detection from the bytes is not wanted
  --allow-links      With --extract: keep symbolic links that resolve inside the extraction and hard links
                     to files extracted before them (by default any link refuses the archive)
  --retries N        Retries of each URL after a network error, a timeout or a 408/429/5xx answer.
                     Default 3
  --keep-n N         Afterwards, evict least recently used entries of the sublayer down to exactly N
                     entries (N >= 1). Default: no limit, nothing else is evicted
  --max-bytes SIZE   Likewise, down to SIZE payload bytes (500MiB, 2GiB, 10GB). Default: no limit
  --offline          Never download: print the entry found in any root, fresh or expired, or fail`,
  options: {
    sublayer: { type: 'string' },
    key: { type: 'string' },
    ttl: { type: 'string' },
    refresh: { type: 'boolean' },
    extract: { type: 'boolean' },
    format: { type: 'string' },
    'allow-links': { type: 'boolean' },
    retries: { type: 'string' },
    'keep-n': { type: 'string' },
    'max-bytes': { type: 'string' },
    offline: { type: 'boolean' },
  },
  positionals: ['url...'],
  run: runFetch,
};

async function runFetch(input: CommandInput, io: Io): Promise<number> {
  const urls = input.positionals.map(httpUrl);
  const sublayer = stringOption(input, 'sublayer');
  if (sublayer === undefined) throw new UsageError('--sublayer is required');
  const key = stringOption(input, 'key') ?? keyFromUrl(urls[0] as URL);
  const ttlMs = ttlOf(input);
  const root = rootOf(input);
  const cache = openSublayer(sublayer, {
    root,
    ttlMs,
    ...limitsOf(input),
    shared: sharedOf(input),
    // Without the flag the library reads PAYLOAD_CACHE_OFFLINE itself.
    offline: flag(input, 'offline') || undefined,
  });
  const progress = createProgress(key, io.stderr);
  const download = httpFetcher(urls, {
    retries: retriesOf(input),
    onProgress: (p) => progress.update(p),
  });
  let outcome: 'hit' | 'downloaded' | 'renewed' = 'hit';
  const fetchFn: FetchFn = async (ctx) => {
    const result = await download(ctx);
    outcome = result === NOT_MODIFIED ? 'renewed' : 'downloaded';
    return result;
  };
  const interrupt = new AbortController();
  const onSigint = () => interrupt.abort(new InterruptedError());
  process.once('SIGINT', onSigint);
  const startMs = Date.now();
  const extract = flag(input, 'extract');
  const format = formatOf(input, extract);
  const allowLinks = flag(input, 'allow-links');
  if (allowLinks && !extract) throw new UsageError('--allow-links goes with --extract');
  const options = { signal: interrupt.signal, refresh: flag(input, 'refresh') };
  const extractOptions = {
    ...options,
    ...(format === undefined ? {} : { format }),
    ...(allowLinks ? { allowLinks: 'inside' as const } : {}),
  };
  let printedPath: string;
  try {
    printedPath = extract
      ? await cache.getOrExtract(key, fetchFn, extractOptions)
      : await cache.getOrFetch(key, fetchFn, options);
  } finally {
    progress.stop();
    process.off('SIGINT', onSigint);
  }
  const elapsed = formatDuration(Date.now() - startMs);
  const stats = cache.stats();
  if (outcome === 'hit' && extract && stats.misses > 0) {
    io.err(`${key}: the cached archive extracted in ${elapsed}`);
  } else if (outcome === 'hit') io.err(`${key}: ${describeHit(stats, printedPath, root, ttlMs)}`);
  else if (outcome === 'renewed') io.err(`${key}: not modified on the server, entry renewed in ${elapsed}`);
  else if (extract) io.err(`${key}: downloaded and extracted in ${elapsed}`);
  else {
    const { size } = await fsp.stat(printedPath);
    io.err(`${key}: downloaded ${formatBytes(size)} in ${elapsed}`);
  }
  io.out(printedPath);
  return EXIT_OK;
}

function formatOf(input: CommandInput, extract: boolean): ArchiveFormat | undefined {
  const text = stringOption(input, 'format');
  if (text === undefined) return undefined;
  if (!extract) throw new UsageError('--format goes with --extract');
  if (!ARCHIVE_FORMATS.includes(text as ArchiveFormat)) {
    throw new UsageError(`--format must be one of ${ARCHIVE_FORMATS.join(', ')}, got "${text}"`);
  }
  return text as ArchiveFormat;
}

function describeHit(stats: CacheStats, payloadPath: string, root: string, ttlMs: number): string {
  const where = payloadPath.startsWith(root + path.sep)
    ? ''
    : ` in the read-only root ${rootOfPayload(payloadPath)}`;
  if (stats.staleServedOffline > 0) return `offline: served the cached entry${where} although it has expired`;
  return `already cached${where} (fresh under ttl ${describeTtl(ttlMs)})`;
}

/** `<root>/<sublayer>/<key>` -> `<root>`. */
function rootOfPayload(payloadPath: string): string {
  return path.dirname(path.dirname(payloadPath));
}

function httpUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`not an absolute URL: "${text}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`only http and https URLs can be fetched, not ${url.protocol}`);
  }
  return url;
}

/**
 * The URL's last path segment, percent-decoded: `https://host/files/weo%202024.zip` -> `weo 2024.zip`. A URL
 * with a query string needs `--key`: `?version=1` and `?version=2` would otherwise share one entry and the
 * second would be a silent, wrong hit.
 */
export function keyFromUrl(url: URL): string {
  if (url.search !== '') {
    throw new UsageError(
      `${url.origin}${url.pathname} has a query string, which the default key would drop: pass --key`,
    );
  }
  const segment = url.pathname.split('/').pop() ?? '';
  if (segment === '') {
    throw new UsageError(`cannot take a key from ${url.origin}${url.pathname}: pass --key`);
  }
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function retriesOf(input: CommandInput): number | undefined {
  const text = stringOption(input, 'retries');
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`--retries needs an integer >= 0, got "${text}"`);
  return Number(text);
}
