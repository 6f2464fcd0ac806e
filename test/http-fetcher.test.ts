import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as delay } from 'node:timers/promises';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  BulkPayloadCorruptError,
  CacheManager,
  type CacheManagerOptions,
  type HttpFetcherOptions,
  type HttpProgress,
  HttpStatusError,
  httpFetcher,
  type Manifest,
} from '../src/index.js';
import {
  exists,
  makeTempDir,
  manualClock,
  patternBytes,
  rejectionOf,
  sha256,
  tmpFilesIn,
} from './helpers.js';
import {
  drained,
  isolateHttpTests,
  type RecordedRequest,
  requestedStart,
  servePayload,
  startProxy,
  startServer,
  type TestServer,
} from './http-servers.js';

const KEY = 'payload.bin';
const LAST_MODIFIED = 'Wed, 21 Oct 2026 07:28:00 GMT';
const MiB = 1024 * 1024;
/** Retries without waiting seconds: every backoff stays at a few milliseconds. */
const quick: HttpFetcherOptions = { retryDelayMs: 5, maxRetryDelayMs: 50 };
let root: string;
let clock: ReturnType<typeof manualClock>;

isolateHttpTests();
beforeEach(async () => {
  root = await makeTempDir();
  clock = manualClock();
});

function cacheWith(options: Partial<CacheManagerOptions> = {}): CacheManager {
  return new CacheManager({ sublayer: 'data', ttl: 60_000, root, now: clock.now, ...options });
}

const dirOf = () => path.join(root, 'data');
const payloadPath = (key = KEY) => path.join(dirOf(), key);

async function manifestOf(key = KEY): Promise<Manifest> {
  return JSON.parse(await fsp.readFile(`${payloadPath(key)}.manifest.json`, 'utf8')) as Manifest;
}

/** The entry holds exactly `payload`, its manifest agrees, and no tmp file is left behind. */
async function expectCached(returned: string, payload: Buffer): Promise<void> {
  expect(returned).toBe(payloadPath());
  expect(sha256(await fsp.readFile(returned))).toBe(sha256(payload));
  expect(await manifestOf()).toMatchObject({ size_bytes: payload.length, sha256: sha256(payload) });
  expect(await tmpFilesIn(dirOf())).toEqual([]);
}

/** No payload, no manifest, no lock and no tmp file: nothing partial was published or left behind. */
async function expectNothingPublished(key = KEY): Promise<void> {
  expect(await exists(payloadPath(key))).toBe(false);
  expect(await exists(`${payloadPath(key)}.manifest.json`)).toBe(false);
  expect(await exists(`${payloadPath(key)}.lock`)).toBe(false);
  expect(await tmpFilesIn(dirOf())).toEqual([]);
}

function nth(requests: RecordedRequest[], index: number): RecordedRequest {
  const request = requests[index];
  if (!request) throw new Error(`no request #${index} (${requests.length} recorded)`);
  return request;
}

const ranges = (server: TestServer) => server.requests.map((request) => request.headers.range);

type ProgressEvent = HttpProgress & { requestsSeen: number };

/** Progress events, copied, each with the number of requests the server had received by then. */
function progressLog(server?: TestServer): {
  events: ProgressEvent[];
  onProgress: (progress: HttpProgress) => void;
} {
  const events: ProgressEvent[] = [];
  return {
    events,
    onProgress: (progress) => events.push({ ...progress, requestsSeen: server?.requests.length ?? 0 }),
  };
}

/**
 * Bytes of the first response that reached the cache before it broke: where a resume must start. A reset
 * (RST) can drop data the server wrote before it, so this is at most, not exactly, the server's break point.
 */
function receivedFromFirstResponse(events: ProgressEvent[]): number {
  return Math.max(0, ...events.filter((e) => e.requestsSeen === 1).map((e) => e.receivedBytes));
}

function isIncreasing(values: number[]): boolean {
  return values.every((value, i) => i === 0 || value > (values[i - 1] as number));
}

/** Resolves when `promise` does, or fails the test after `ms`. */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('a plain download', () => {
  it('stores the exact bytes, the etag and last_modified, and reports progress up to the total', async () => {
    const payload = patternBytes(1_000_000, 1);
    const server = await startServer((req, res) =>
      servePayload(req, res, payload, { etag: '"v1"', lastModified: LAST_MODIFIED }),
    );
    const progress = progressLog();
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file.bin'), { ...quick, onProgress: progress.onProgress }),
    );
    await expectCached(returned, payload);
    expect(await manifestOf()).toMatchObject({ etag: '"v1"', last_modified: LAST_MODIFIED });
    expect(server.requests).toHaveLength(1);
    expect(nth(server.requests, 0)).toMatchObject({ method: 'GET', url: '/file.bin' });
    expect(nth(server.requests, 0).headers['accept-encoding']).toBe('identity');
    expect(nth(server.requests, 0).headers.range).toBeUndefined();
    expect(progress.events.length).toBeGreaterThan(1);
    expect(progress.events.every((event) => event.totalBytes === payload.length)).toBe(true);
    expect(isIncreasing(progress.events.map((event) => event.receivedBytes))).toBe(true);
    expect(progress.events.at(-1)).toMatchObject({
      receivedBytes: payload.length,
      totalBytes: payload.length,
    });
  });
});

describe('resuming a broken body', () => {
  const payload = patternBytes(1_000_000, 2);
  const breakAt = 300_000;

  const validators = [
    { name: 'a strong ETag', serve: { etag: '"abc"' }, ifRange: '"abc"' },
    { name: 'only Last-Modified', serve: { lastModified: LAST_MODIFIED }, ifRange: LAST_MODIFIED },
    // A weak ETag beside Last-Modified allows no resume at all (RFC 9110 13.1.5): see
    // test/http-fetcher-correctness.test.ts, "If-Range never carries a date while an entity tag is known".
  ];
  for (const { name, serve, ifRange } of validators) {
    it(`a connection reset mid-body is resumed with Range and If-Range from ${name}`, async () => {
      const server = await startServer((req, res, index) =>
        servePayload(req, res, payload, { ...serve, breakAt: index === 0 ? breakAt : undefined }),
      );
      const progress = progressLog(server);
      const returned = await cacheWith().getOrFetch(
        KEY,
        httpFetcher(server.url('/file'), { ...quick, onProgress: progress.onProgress }),
      );
      await expectCached(returned, payload);
      const received = receivedFromFirstResponse(progress.events);
      expect(received).toBeGreaterThan(0);
      expect(received).toBeLessThanOrEqual(breakAt);
      expect(ranges(server)).toEqual([undefined, `bytes=${received}-`]);
      expect(nth(server.requests, 1).headers['if-range']).toBe(ifRange);
      // A resume continues the count; a restart would have gone back to zero.
      expect(isIncreasing(progress.events.map((event) => event.receivedBytes))).toBe(true);
      expect(progress.events.at(-1)).toMatchObject({
        receivedBytes: payload.length,
        totalBytes: payload.length,
      });
    });
  }

  it('without a validator the retry starts over from byte 0 (no Range)', async () => {
    const server = await startServer((req, res, index) =>
      servePayload(req, res, payload, { breakAt: index === 0 ? breakAt : undefined }),
    );
    const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick));
    await expectCached(returned, payload);
    expect(ranges(server)).toEqual([undefined, undefined]);
  });

  it('without Accept-Ranges the retry starts over from byte 0 (no Range)', async () => {
    const server = await startServer((req, res, index) =>
      servePayload(req, res, payload, {
        etag: '"abc"',
        acceptRanges: false,
        breakAt: index === 0 ? breakAt : undefined,
      }),
    );
    const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick));
    await expectCached(returned, payload);
    expect(ranges(server)).toEqual([undefined, undefined]);
  });
});

describe('resuming while the resource changes', () => {
  const v1 = patternBytes(600_000, 20);
  const v2 = patternBytes(700_000, 21);

  it('a new version between the break and the retry: If-Range fails, the new version is stored whole', async () => {
    const server = await startServer((req, res, index) =>
      index === 0
        ? servePayload(req, res, v1, { etag: '"v1"', breakAt: 200_000 })
        : servePayload(req, res, v2, { etag: '"v2"' }),
    );
    const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick));
    await expectCached(returned, v2);
    expect((await manifestOf()).etag).toBe('"v2"');
    expect(server.requests).toHaveLength(2);
    expect(nth(server.requests, 1).headers['if-range']).toBe('"v1"');
  });

  it('refetching an expired entry that breaks resumes without If-None-Match / If-Modified-Since', async () => {
    const server = await startServer((req, res, index) => {
      if (index === 0) return servePayload(req, res, v1, { etag: '"v1"', lastModified: LAST_MODIFIED });
      // A server evaluates If-None-Match before Range: a conditional range request could get a 304.
      if (req.headers['if-none-match'] === '"v2"') {
        res.writeHead(304, { etag: '"v2"' });
        res.end();
        return;
      }
      servePayload(req, res, v2, { etag: '"v2"', breakAt: index === 1 ? 300_000 : undefined });
    });
    const cache = cacheWith({ ttl: 60_000 });
    const fetcher = httpFetcher(server.url('/file'), quick);
    await cache.getOrFetch(KEY, fetcher);
    clock.advance(120_000);
    const returned = await cache.getOrFetch(KEY, fetcher);
    await expectCached(returned, v2);
    expect(ranges(server)).toEqual([undefined, undefined, 'bytes=300000-']);
    expect(nth(server.requests, 1).headers['if-none-match']).toBe('"v1"');
    const resume = nth(server.requests, 2).headers;
    expect(resume['if-range']).toBe('"v2"');
    expect(resume['if-none-match']).toBeUndefined();
    expect(resume['if-modified-since']).toBeUndefined();
  });
});

describe('a body shorter than Content-Length', () => {
  const payload = patternBytes(500_000, 3);
  const sentBytes = 123_457;
  const shortOnFirst = async () =>
    startServer((req, res, index) =>
      servePayload(req, res, payload, {
        etag: '"short"',
        breakAt: index === 0 ? sentBytes : undefined,
        breakWith: 'end',
      }),
    );

  it('with retries 0 is refused as truncated and nothing is published', async () => {
    const server = await shortOnFirst();
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), { ...quick, retries: 0 })),
    );
    expect(error).toBeInstanceOf(BulkPayloadCorruptError);
    expect(error).toMatchObject({ code: 'ERR_PAYLOAD_CORRUPT', reason: 'truncated', key: KEY });
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('with retries is resumed from where it stopped and ends exact', async () => {
    const server = await shortOnFirst();
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { ...quick, retries: 2 }),
    );
    await expectCached(returned, payload);
    expect(ranges(server)).toEqual([undefined, `bytes=${sentBytes}-`]);
    expect(nth(server.requests, 1).headers['if-range']).toBe('"short"');
  });
});

describe('retryable statuses and Retry-After', () => {
  const payload = patternBytes(50_000, 4);

  /** Answers `status` (with `headers`, computed when the request arrives) to the first request, then the payload. */
  const failingOnce = (status: number, headers: () => Record<string, string> = () => ({})) =>
    startServer((req, res, index) => {
      if (index === 0) {
        res.writeHead(status, headers());
        res.end('try again later');
        return;
      }
      servePayload(req, res, payload, { etag: '"r"' });
    });

  it('503 with Retry-After in seconds: the retry waits for it', async () => {
    const server = await failingOnce(503, () => ({ 'retry-after': '1' }));
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { retryDelayMs: 5, maxRetryDelayMs: 10_000 }),
    );
    await expectCached(returned, payload);
    expect(server.requests).toHaveLength(2);
    const waitedMs = nth(server.requests, 1).atMs - nth(server.requests, 0).atMs;
    expect(waitedMs).toBeGreaterThanOrEqual(900);
  });

  it('503 with Retry-After as an HTTP date: the retry waits until then', async () => {
    // Two seconds ahead, truncated to the second by the date format: at least one second from now.
    const server = await failingOnce(503, () => ({
      'retry-after': new Date(Date.now() + 2_000).toUTCString(),
    }));
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { retryDelayMs: 5, maxRetryDelayMs: 10_000 }),
    );
    await expectCached(returned, payload);
    expect(server.requests).toHaveLength(2);
    const waitedMs = nth(server.requests, 1).atMs - nth(server.requests, 0).atMs;
    expect(waitedMs).toBeGreaterThanOrEqual(900);
  });

  it('a day-long Retry-After is capped by maxRetryDelayMs', async () => {
    const server = await failingOnce(503, () => ({ 'retry-after': '86400' }));
    const startedAt = performance.now();
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { retryDelayMs: 5, maxRetryDelayMs: 100 }),
    );
    await expectCached(returned, payload);
    expect(server.requests).toHaveLength(2);
    expect(performance.now() - startedAt).toBeLessThan(5_000);
  });

  for (const status of [408, 429, 500, 502, 503, 504]) {
    it(`${status} then 200 succeeds after one retry`, async () => {
      const server = await failingOnce(status);
      const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick));
      await expectCached(returned, payload);
      expect(server.requests).toHaveLength(2);
    });
  }

  it('500 on every request with retries 3: HttpStatusError 500 after exactly 4 requests', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(500);
      res.end('broken');
    });
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), { ...quick, retries: 3 })),
    );
    expect(error).toBeInstanceOf(HttpStatusError);
    expect(error).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 500 });
    expect(server.requests).toHaveLength(4);
    await expectNothingPublished();
  });
});

describe('resuming against servers that do not honour the range', () => {
  const payload = patternBytes(800_000, 5);
  const breakAt = 250_000;

  it('a 200 with the whole body in answer to the range request: restarted from zero, not appended', async () => {
    const server = await startServer((req, res, index) =>
      servePayload(req, res, payload, {
        etag: '"full"',
        ignoreRange: index > 0,
        breakAt: index === 0 ? breakAt : undefined,
      }),
    );
    const progress = progressLog(server);
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { ...quick, onProgress: progress.onProgress }),
    );
    await expectCached(returned, payload);
    const resumedAt = receivedFromFirstResponse(progress.events);
    expect(resumedAt).toBeGreaterThan(0);
    expect(ranges(server)).toEqual([undefined, `bytes=${resumedAt}-`]);
    // The count went back to zero when the 200 arrived: the restart is reported, not hidden.
    const received = progress.events.map((event) => event.receivedBytes);
    const restartIndex = received.findIndex((value, i) => i > 0 && value < (received[i - 1] as number));
    expect(restartIndex).toBeGreaterThan(0);
    expect(received[restartIndex]).toBeLessThan(resumedAt);
    expect(received.at(-1)).toBe(payload.length);
  });

  for (const shift of [-1_000, 1_000]) {
    it(`a 206 whose Content-Range starts ${shift} bytes off the offset: dropped, whole payload asked again`, async () => {
      const server = await startServer((req, res, index) =>
        servePayload(req, res, payload, {
          etag: '"off"',
          rangeShift: index === 1 ? shift : undefined,
          breakAt: index === 0 ? breakAt : undefined,
        }),
      );
      const progress = progressLog(server);
      const returned = await cacheWith().getOrFetch(
        KEY,
        httpFetcher(server.url('/file'), { ...quick, onProgress: progress.onProgress }),
      );
      await expectCached(returned, payload);
      const resumedAt = receivedFromFirstResponse(progress.events);
      expect(resumedAt).toBeGreaterThan(0);
      expect(ranges(server)).toEqual([undefined, `bytes=${resumedAt}-`, undefined]);
    });
  }
});

describe('stalled servers and timeoutMs', () => {
  const payload = patternBytes(400_000, 6);
  const timeoutMs = 300;

  /** Never answers request #`stallOn` (undefined: every request); serves the payload otherwise. */
  const headerStaller = (stallOn?: number) =>
    startServer((req, res, index) => {
      if (stallOn === undefined || index === stallOn) return;
      servePayload(req, res, payload, { etag: '"s"' });
    });
  /** Sends part of the body on request #0 and then goes silent without closing. */
  const bodyStaller = () =>
    startServer((req, res, index) =>
      servePayload(req, res, payload, {
        etag: '"s"',
        breakAt: index === 0 ? 100_000 : undefined,
        breakWith: 'stall',
      }),
    );

  it('no response headers, retries 0: rejects with the headers timeout, nothing published', async () => {
    const server = await headerStaller();
    const startedAt = performance.now();
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), { ...quick, timeoutMs, retries: 0 })),
    );
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(timeoutMs - 50);
    expect(error).toMatchObject({ code: 'UND_ERR_HEADERS_TIMEOUT' });
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('a body that goes silent, retries 0: rejects as truncated, nothing published', async () => {
    const server = await bodyStaller();
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), { ...quick, timeoutMs, retries: 0 })),
    );
    expect(error).toBeInstanceOf(BulkPayloadCorruptError);
    expect(error).toMatchObject({ reason: 'truncated', cause: { code: 'UND_ERR_BODY_TIMEOUT' } });
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('no response headers on the first request only, retries 1: the retry succeeds', async () => {
    const server = await headerStaller(0);
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { ...quick, timeoutMs, retries: 1 }),
    );
    await expectCached(returned, payload);
    expect(ranges(server)).toEqual([undefined, undefined]);
  });

  it('a body that goes silent on the first request only, retries 1: resumed and exact', async () => {
    const server = await bodyStaller();
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { ...quick, timeoutMs, retries: 1 }),
    );
    await expectCached(returned, payload);
    expect(ranges(server)).toEqual([undefined, 'bytes=100000-']);
  });
});

describe('redirects', () => {
  const payload = patternBytes(60_000, 7);

  for (const status of [301, 302, 303, 307, 308]) {
    it(`${status} to a relative Location is followed`, async () => {
      const server = await startServer((req, res) => {
        if (req.url === '/start') {
          res.writeHead(status, { location: '/final' });
          res.end();
          return;
        }
        servePayload(req, res, payload, { etag: '"r"' });
      });
      const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/start'), quick));
      await expectCached(returned, payload);
      expect(server.requests.map((request) => request.url)).toEqual(['/start', '/final']);
    });
  }

  it('a redirect loop is an HttpStatusError naming the loop, not retried', async () => {
    const server = await startServer((req, res) => {
      res.writeHead(302, { location: req.url === '/a' ? '/b' : '/a' });
      res.end();
    });
    const error = await rejectionOf(cacheWith().getOrFetch(KEY, httpFetcher(server.url('/a'), quick)));
    expect(error).toBeInstanceOf(HttpStatusError);
    expect(error).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 302 });
    expect((error as Error).message).toMatch(/loop/);
    expect(server.requests.map((request) => request.url)).toEqual(['/a', '/b']);
    await expectNothingPublished();
  });

  it('more than maxRedirections redirects is an HttpStatusError', async () => {
    const server = await startServer((req, res) => {
      const step = Number((req.url ?? '').split('/').at(-1));
      res.writeHead(302, { location: `/hop/${step + 1}` });
      res.end();
    });
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/hop/0'), { ...quick, maxRedirections: 2 })),
    );
    expect(error).toBeInstanceOf(HttpStatusError);
    expect((error as Error).message).toMatch(/more than 2 redirects/);
    // Two redirects followed, the third refused.
    expect(server.requests.map((request) => request.url)).toEqual(['/hop/0', '/hop/1', '/hop/2']);
    await expectNothingPublished();
  });

  it('authorization, cookie and proxy-authorization are not forwarded to another origin', async () => {
    const target = await startServer((req, res) => servePayload(req, res, payload, { etag: '"x"' }));
    const origin = await startServer((_req, res) => {
      res.writeHead(302, { location: target.url('/elsewhere') });
      res.end();
    });
    const headers = {
      Authorization: 'Bearer SECRET',
      cookie: 'session=SECRET',
      'Proxy-Authorization': 'Basic SECRET',
      'x-trace': 'kept',
    };
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(origin.url('/start'), { ...quick, headers }),
    );
    await expectCached(returned, payload);
    expect(nth(origin.requests, 0).headers).toMatchObject({
      authorization: 'Bearer SECRET',
      cookie: 'session=SECRET',
      'proxy-authorization': 'Basic SECRET',
    });
    const forwarded = nth(target.requests, 0).headers;
    expect(forwarded.authorization).toBeUndefined();
    expect(forwarded.cookie).toBeUndefined();
    expect(forwarded['proxy-authorization']).toBeUndefined();
    // Any header of the caller's may be a credential (X-Api-Key...): none follows to another origin.
    expect(forwarded['x-trace']).toBeUndefined();
    expect(target.requests).toHaveLength(1);
  });

  it('keepHeadersAcrossOrigins sends the caller headers to the other origin, never the credential ones', async () => {
    const target = await startServer((req, res) => servePayload(req, res, payload, { etag: '"x"' }));
    const origin = await startServer((_req, res) => {
      res.writeHead(302, { location: target.url('/elsewhere') });
      res.end();
    });
    const headers = { authorization: 'Bearer SECRET', 'x-trace': 'kept' };
    await cacheWith().getOrFetch(
      KEY,
      httpFetcher(origin.url('/start'), { ...quick, headers, keepHeadersAcrossOrigins: true }),
    );
    const forwarded = nth(target.requests, 0).headers;
    expect(forwarded['x-trace']).toBe('kept');
    expect(forwarded.authorization).toBeUndefined();
  });

  it('authorization is kept on a same-origin redirect', async () => {
    const server = await startServer((req, res) => {
      if (req.url === '/start') {
        res.writeHead(302, { location: '/final' });
        res.end();
        return;
      }
      servePayload(req, res, payload, { etag: '"x"' });
    });
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/start'), { ...quick, headers: { authorization: 'Bearer T' } }),
    );
    await expectCached(returned, payload);
    expect(server.requests.map((request) => request.headers.authorization)).toEqual(['Bearer T', 'Bearer T']);
  });
});

describe('revalidation of an expired entry', () => {
  const payload = patternBytes(200_000, 8);

  it('If-None-Match and If-Modified-Since are sent; a 304 renews the entry without a download', async () => {
    let bodiesSent = 0;
    const server = await startServer((req, res) => {
      if (req.headers['if-none-match'] === '"v1"') {
        res.writeHead(304, { etag: '"v1"' });
        res.end();
        return;
      }
      bodiesSent += 1;
      servePayload(req, res, payload, { etag: '"v1"', lastModified: LAST_MODIFIED });
    });
    const cache = cacheWith({ ttl: 60_000 });
    const fetcher = httpFetcher(server.url('/file'), quick);
    const first = await cache.getOrFetch(KEY, fetcher);
    const before = await manifestOf();
    expect(before).toMatchObject({ etag: '"v1"', last_modified: LAST_MODIFIED });
    const inode = (await fsp.stat(first)).ino;

    clock.advance(120_000);
    expect(await cache.has(KEY)).toBe(false);
    const second = await cache.getOrFetch(KEY, fetcher);

    expect(second).toBe(first);
    expect((await fsp.stat(second)).ino).toBe(inode);
    expect(sha256(await fsp.readFile(second))).toBe(sha256(payload));
    const after = await manifestOf();
    expect(after.created_at).toBe(new Date(clock.now()).toISOString());
    expect(Date.parse(after.created_at)).toBeGreaterThan(Date.parse(before.created_at));
    expect(after).toMatchObject({ etag: '"v1"', sha256: sha256(payload), size_bytes: payload.length });
    expect(await cache.has(KEY)).toBe(true);

    expect(server.requests).toHaveLength(2);
    expect(bodiesSent).toBe(1);
    expect(nth(server.requests, 0).headers['if-none-match']).toBeUndefined();
    expect(nth(server.requests, 1).headers).toMatchObject({
      'if-none-match': '"v1"',
      'if-modified-since': LAST_MODIFIED,
    });
    expect(await tmpFilesIn(dirOf())).toEqual([]);
  });

  it('a 200 to the conditional request replaces the entry with the new version', async () => {
    const next = patternBytes(150_000, 9);
    const server = await startServer((req, res, index) =>
      servePayload(req, res, index === 0 ? payload : next, { etag: index === 0 ? '"v1"' : '"v2"' }),
    );
    const cache = cacheWith({ ttl: 60_000 });
    const fetcher = httpFetcher(server.url('/file'), quick);
    await cache.getOrFetch(KEY, fetcher);
    clock.advance(120_000);
    const returned = await cache.getOrFetch(KEY, fetcher);
    await expectCached(returned, next);
    expect((await manifestOf()).etag).toBe('"v2"');
    expect(nth(server.requests, 1).headers['if-none-match']).toBe('"v1"');
    expect(nth(server.requests, 1).headers['if-modified-since']).toBeUndefined();
  });
});

describe('statuses that are not retried', () => {
  it('404: HttpStatusError after one request, with no credential, token or header value in it', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(404);
      res.end('no such file');
    });
    const url = `http://user:pw@127.0.0.1:${server.port}/file?token=SECRET`;
    const error = await rejectionOf(
      cacheWith().getOrFetch(
        KEY,
        httpFetcher(url, { ...quick, headers: { authorization: 'Bearer SECRET2' } }),
      ),
    );
    expect(error).toBeInstanceOf(HttpStatusError);
    const statusError = error as HttpStatusError;
    expect(statusError).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 404 });
    expect(server.requests).toHaveLength(1);
    expect(nth(server.requests, 0).headers.authorization).toBe('Bearer SECRET2');
    const parsed = new URL(statusError.url);
    expect([parsed.username, parsed.password]).toEqual(['', '']);
    expect(statusError.url).not.toContain('pw@');
    expect(parsed.pathname).toBe('/file');
    for (const text of [statusError.message, String(statusError), statusError.stack ?? '']) {
      expect(text).not.toContain('SECRET');
      expect(text).not.toContain('Bearer');
      expect(text).not.toContain('pw@');
    }
    expect(statusError.message).toContain('404');
    await expectNothingPublished();
  });

  for (const status of [400, 401, 403, 410]) {
    it(`${status} is not retried`, async () => {
      const server = await startServer((_req, res) => {
        res.writeHead(status);
        res.end();
      });
      const error = await rejectionOf(cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick)));
      expect(error).toMatchObject({ code: 'ERR_HTTP_STATUS', status });
      expect(server.requests).toHaveLength(1);
      await expectNothingPublished();
    });
  }
});

describe('Content-Encoding', () => {
  const payload = Buffer.concat([Buffer.from('header,line\n'.repeat(20_000)), patternBytes(100_000, 10)]);
  const encoders: [string, (bytes: Buffer) => Buffer][] = [
    ['gzip', gzipSync],
    ['x-gzip', gzipSync],
    ['deflate', deflateSync],
    ['br', brotliCompressSync],
  ];

  for (const [encoding, encode] of encoders) {
    it(`a ${encoding} response sent despite Accept-Encoding: identity is stored decoded`, async () => {
      const encoded = encode(payload);
      const server = await startServer((_req, res) => {
        res.writeHead(200, {
          'content-encoding': encoding,
          'content-length': encoded.length,
          etag: '"z"',
          'accept-ranges': 'bytes',
        });
        res.end(encoded);
      });
      const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick));
      await expectCached(returned, payload);
      expect(encoded.length).not.toBe(payload.length);
      expect(nth(server.requests, 0).headers['accept-encoding']).toBe('identity');
      expect(server.requests).toHaveLength(1);
    });
  }

  it('an unknown encoding is refused with ERR_HTTP_CONTENT_ENCODING, nothing published', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(200, { 'content-encoding': 'zstd-x', 'content-length': payload.length });
      res.end(payload);
    });
    const error = await rejectionOf(cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick)));
    expect(error).toMatchObject({ code: 'ERR_HTTP_CONTENT_ENCODING' });
    expect((error as Error).message).toContain('zstd-x');
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('an unknown encoding on a small body that has fully arrived is refused just as cleanly', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(200, { 'content-encoding': 'zstd-x', 'content-length': 11 });
      res.end('hello world');
    });
    const error = await rejectionOf(cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick)));
    expect(error).toMatchObject({ code: 'ERR_HTTP_CONTENT_ENCODING' });
    await delay(20);
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });
});

describe('proxies from the environment', () => {
  const payload = patternBytes(300_000, 11);

  for (const variable of ['HTTP_PROXY', 'http_proxy']) {
    it(`${variable} sends the download through the proxy`, async () => {
      const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"p"' }));
      const proxy = await startProxy();
      process.env[variable] = proxy.origin;
      const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/via-proxy'), quick));
      await expectCached(returned, payload);
      expect(proxy.requests).toHaveLength(1);
      expect(nth(proxy.requests, 0).url).toContain(`127.0.0.1:${server.port}`);
      expect(server.requests).toHaveLength(1);
    });
  }

  for (const variable of ['NO_PROXY', 'no_proxy']) {
    it(`${variable}=127.0.0.1 bypasses the proxy`, async () => {
      const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"p"' }));
      const proxy = await startProxy();
      process.env.HTTP_PROXY = proxy.origin;
      process.env[variable] = '127.0.0.1';
      const returned = await cacheWith().getOrFetch(KEY, httpFetcher(server.url('/direct'), quick));
      await expectCached(returned, payload);
      expect(proxy.requests).toHaveLength(0);
      expect(server.requests).toHaveLength(1);
    });
  }
});

describe('abort', () => {
  it("the caller's signal stops the download at once and closes the connection", async () => {
    let connectionClosed!: () => void;
    const closed = new Promise<void>((resolve) => {
      connectionClosed = resolve;
    });
    const chunk = patternBytes(16 * 1024, 12);
    const server = await startServer(async (_req, res) => {
      res.on('close', () => connectionClosed());
      res.writeHead(200, { 'content-length': 1024 * MiB, etag: '"slow"', 'accept-ranges': 'bytes' });
      while (!res.destroyed) {
        res.write(chunk);
        await delay(10);
      }
    });
    const controller = new AbortController();
    let abortedAtMs = 0;
    const pending = cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/slow'), {
        ...quick,
        onProgress: ({ receivedBytes }) => {
          if (receivedBytes < 64 * 1024 || controller.signal.aborted) return;
          abortedAtMs = performance.now();
          controller.abort();
        },
      }),
      { signal: controller.signal },
    );
    const error = await rejectionOf(pending);
    expect(error).toMatchObject({ name: 'AbortError' });
    expect(abortedAtMs).toBeGreaterThan(0);
    expect(performance.now() - abortedAtMs).toBeLessThan(5_000);
    await within(5_000, closed, 'the server seeing the connection close');
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });
});

describe('abort while waiting', () => {
  /**
   * Aborts once `ready()` holds (the server has seen what the test is about), not after a guessed time: on a
   * loaded machine the request may not even have reached the server within a fixed delay.
   */
  async function abortWhen(ready: () => boolean, run: (signal: AbortSignal) => Promise<unknown>) {
    const controller = new AbortController();
    const timer = setInterval(() => {
      if (ready()) controller.abort();
    }, 10);
    const startedAt = performance.now();
    try {
      const error = await rejectionOf(run(controller.signal));
      return { error, elapsedMs: performance.now() - startedAt };
    } finally {
      clearInterval(timer);
    }
  }

  it('during a 30 s Retry-After: rejects at once with AbortError, no second request', async () => {
    let answered = false;
    const server = await startServer((_req, res) => {
      res.writeHead(503, { 'retry-after': '30' });
      res.end(() => {
        answered = true;
      });
    });
    const { error, elapsedMs } = await abortWhen(
      () => answered,
      (signal) =>
        cacheWith().getOrFetch(
          KEY,
          httpFetcher(server.url('/file'), { retryDelayMs: 5, maxRetryDelayMs: 60_000 }),
          { signal },
        ),
    );
    expect(error).toMatchObject({ name: 'AbortError' });
    expect(elapsedMs).toBeLessThan(10_000);
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('while the server withholds the headers: rejects at once and closes the connection', async () => {
    const server = await startServer(() => {});
    const { error, elapsedMs } = await abortWhen(
      () => server.requests.length > 0,
      (signal) => cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), quick), { signal }),
    );
    expect(error).toMatchObject({ name: 'AbortError' });
    expect(elapsedMs).toBeLessThan(10_000);
    await within(
      5_000,
      (async () => {
        while (server.socketsClosed() < server.sockets.size) await delay(10);
      })(),
      'the server seeing the connection close',
    );
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });
});

describe('staleIfError end to end', () => {
  it('with the server gone, an expired entry is served only with staleIfError', async () => {
    const payload = patternBytes(100_000, 13);
    const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"old"' }));
    const url = server.url('/file');
    const cache = cacheWith({ ttl: 1_000 });
    const first = await cache.getOrFetch(KEY, httpFetcher(url, quick));
    await server.close();
    clock.advance(5_000);
    expect(await cache.has(KEY)).toBe(false);

    const offline = () => httpFetcher(url, { ...quick, retries: 1 });
    const error = await rejectionOf(cache.getOrFetch(KEY, offline()));
    expect(error).toMatchObject({ code: 'ECONNREFUSED' });
    const stale = await cache.getOrFetch(KEY, offline(), { staleIfError: true });
    expect(stale).toBe(first);
    expect(sha256(await fsp.readFile(stale))).toBe(sha256(payload));
    expect(await tmpFilesIn(dirOf())).toEqual([]);
  });
});

describe('integrity options', () => {
  const payload = patternBytes(120_000, 14);

  it('expectedSha256 that does not match: hash-mismatch, nothing published', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"h"' }));
    const error = await rejectionOf(
      cacheWith().getOrFetch(
        KEY,
        httpFetcher(server.url('/file'), { ...quick, expectedSha256: sha256('something else') }),
      ),
    );
    expect(error).toBeInstanceOf(BulkPayloadCorruptError);
    expect(error).toMatchObject({ code: 'ERR_PAYLOAD_CORRUPT', reason: 'hash-mismatch' });
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('expectedSha256 that matches (in upper case) is accepted', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"h"' }));
    const returned = await cacheWith().getOrFetch(
      KEY,
      httpFetcher(server.url('/file'), { ...quick, expectedSha256: sha256(payload).toUpperCase() }),
    );
    await expectCached(returned, payload);
  });

  it('a Content-Length above maxBytes is refused before any body byte is read', async () => {
    let connectionClosed!: () => void;
    const closed = new Promise<void>((resolve) => {
      connectionClosed = resolve;
    });
    // Headers only: a client waiting for the body would sit here until timeoutMs and fail as truncated.
    const server = await startServer((_req, res) => {
      res.on('close', () => connectionClosed());
      res.writeHead(200, { 'content-length': 10 * MiB, etag: '"big"', 'accept-ranges': 'bytes' });
      res.flushHeaders();
    });
    const startedAt = performance.now();
    const error = await rejectionOf(
      cacheWith().getOrFetch(
        KEY,
        httpFetcher(server.url('/file'), { ...quick, maxBytes: MiB, timeoutMs: 20_000 }),
      ),
    );
    expect(error).toBeInstanceOf(BulkPayloadCorruptError);
    expect(error).toMatchObject({ code: 'ERR_PAYLOAD_CORRUPT', reason: 'size-mismatch' });
    expect(performance.now() - startedAt).toBeLessThan(10_000);
    expect(server.requests).toHaveLength(1);
    await within(5_000, closed, 'the server seeing the connection close');
    await expectNothingPublished();
  });

  it('a small body above maxBytes that has fully arrived is refused just as cleanly', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload.subarray(0, 5_000)));
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), { ...quick, maxBytes: 1_000 })),
    );
    expect(error).toMatchObject({ code: 'ERR_PAYLOAD_CORRUPT', reason: 'size-mismatch' });
    await delay(20);
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });

  it('a chunked body (no Content-Length) growing past maxBytes is refused, nothing published', async () => {
    const chunk = patternBytes(64 * 1024, 15);
    const server = await startServer(async (_req, res) => {
      res.writeHead(200, { etag: '"chunked"' });
      for (let sent = 0; sent < 4 * MiB && !res.destroyed; sent += chunk.length) {
        if (!res.write(chunk)) await drained(res);
      }
      res.end();
    });
    const error = await rejectionOf(
      cacheWith().getOrFetch(KEY, httpFetcher(server.url('/file'), { ...quick, maxBytes: MiB })),
    );
    expect(error).toMatchObject({ code: 'ERR_PAYLOAD_CORRUPT', reason: 'size-mismatch' });
    expect(server.requests).toHaveLength(1);
    await expectNothingPublished();
  });
});

describe('a 200 MiB download interrupted three times', () => {
  const SIZE = 200 * MiB;
  const CUTS = [50 * MiB, 100 * MiB, 150 * MiB];
  const CHUNK = 64 * 1024;
  const STREAM_KEY = Buffer.alloc(16, 0x5a);
  const zeros = Buffer.alloc(CHUNK + 16);

  /** Bytes [start, end) of a fixed AES-128-CTR keystream: deterministic, seekable, never held whole. */
  function* deterministicBytes(start: number, end: number): Generator<Buffer> {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64BE(BigInt(Math.floor(start / 16)), 8);
    const cipher = createCipheriv('aes-128-ctr', STREAM_KEY, iv);
    cipher.update(zeros.subarray(0, start % 16));
    for (let offset = start; offset < end; offset += CHUNK) {
      yield cipher.update(zeros.subarray(0, Math.min(CHUNK, end - offset)));
    }
  }

  it('ends with exactly the right sha256 after 4 requests, with RSS growth far below the payload size', async () => {
    // The generator is seekable: a tail generated from an offset matches the same bytes of the whole.
    const probe = Buffer.concat([...deterministicBytes(1_000_003, 1_000_003 + 100)]);
    const whole = Buffer.concat([...deterministicBytes(1_000_000, 1_000_000 + 103)]);
    expect(probe.equals(whole.subarray(3))).toBe(true);

    const etag = '"big-v1"';
    const server = await startServer(async (req, res, index) => {
      let start = requestedStart(req);
      if (start !== undefined && req.headers['if-range'] !== etag) start = undefined;
      const from = start ?? 0;
      res.writeHead(start === undefined ? 200 : 206, {
        'content-length': SIZE - from,
        etag,
        'accept-ranges': 'bytes',
        ...(start === undefined ? {} : { 'content-range': `bytes ${from}-${SIZE - 1}/${SIZE}` }),
      });
      const cut = CUTS[index];
      for (const chunk of deterministicBytes(from, cut ?? SIZE)) {
        if (res.destroyed) return;
        if (!res.write(chunk)) await drained(res);
      }
      if (cut === undefined) res.end();
      else res.socket?.destroy();
    });

    let last: HttpProgress | undefined;
    const baselineRss = process.memoryUsage().rss;
    let peakRss = baselineRss;
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
    }, 20);
    const startedAt = performance.now();
    let returned: string;
    try {
      returned = await cacheWith().getOrFetch(
        KEY,
        httpFetcher(server.url('/big.bin'), {
          ...quick,
          onProgress: (progress) => {
            last = progress;
          },
        }),
      );
    } finally {
      clearInterval(sampler);
    }
    const elapsedMs = performance.now() - startedAt;
    peakRss = Math.max(peakRss, process.memoryUsage().rss);

    // Computed after the download, so that its own churn does not inflate the RSS baseline.
    const expected = createHash('sha256');
    for (const chunk of deterministicBytes(0, SIZE)) expected.update(chunk);
    const expectedSha256 = expected.digest('hex');
    const actual = createHash('sha256');
    for await (const chunk of createReadStream(returned)) actual.update(chunk as Buffer);
    expect(actual.digest('hex')).toBe(expectedSha256);
    expect(await manifestOf()).toMatchObject({ size_bytes: SIZE, sha256: expectedSha256, etag });
    expect(await tmpFilesIn(dirOf())).toEqual([]);
    expect(last).toMatchObject({ receivedBytes: SIZE, totalBytes: SIZE });

    expect(server.requests).toHaveLength(4);
    const starts = server.requests.map((request) => requestedStart(request));
    expect(starts[0]).toBeUndefined();
    for (let i = 1; i < 4; i++) {
      const resumedAt = starts[i] as number;
      // Resumed at or just below the previous cut (what had reached the client), after the cut before it.
      expect(resumedAt).toBeLessThanOrEqual(CUTS[i - 1] as number);
      expect(resumedAt).toBeGreaterThan(i === 1 ? 0 : (CUTS[i - 2] as number));
      expect(nth(server.requests, i).headers['if-range']).toBe(etag);
    }

    const growthMiB = (peakRss - baselineRss) / MiB;
    console.log(
      `200 MiB download, 3 interruptions: ${(elapsedMs / 1_000).toFixed(2)} s, ` +
        `peak RSS growth ${growthMiB.toFixed(1)} MiB (baseline ${(baselineRss / MiB).toFixed(0)} MiB), ` +
        `resumed at ${starts.slice(1).join(', ')}`,
    );
    expect(growthMiB).toBeLessThan(100);
  }, 120_000);
});
