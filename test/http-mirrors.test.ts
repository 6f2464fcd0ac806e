import diagnosticsChannel from 'node:diagnostics_channel';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  BulkPayloadCorruptError,
  CacheManager,
  type HttpFetcherOptions,
  type HttpProgress,
  HttpStatusError,
  httpFetcher,
  MirrorsFailedError,
} from '../src/index.js';
import { makeTempDir, patternBytes, rejectionOf, sha256, tmpFilesIn } from './helpers.js';
import {
  closedPortUrl,
  isolateHttpTests,
  requestedStart,
  servePayload,
  startServer,
  type TestServer,
} from './http-servers.js';

// Issue 14 (mirrors): httpFetcher given several URLs of one payload, against real loopback servers that
// refuse connections, answer 503 or 404, send the wrong bytes or break mid-body.

const KEY = 'payload.bin';
const quick: HttpFetcherOptions = { retryDelayMs: 5, maxRetryDelayMs: 50 };
const payload = patternBytes(400_000, 41);
const wrongBytes = patternBytes(payload.length, 42);

let root: string;
/** Every request the fetcher started, in order, as `origin + path`: refused connections included. */
let attempts: string[];
const recordAttempt = (message: unknown) => {
  const { request } = message as { request: { origin: string | URL; path: string } };
  attempts.push(`${new URL(String(request.origin)).origin}${request.path}`);
};

isolateHttpTests(async () => {
  diagnosticsChannel.unsubscribe('undici:request:create', recordAttempt);
});
beforeEach(async () => {
  root = await makeTempDir('payload-cache-mirrors-');
  attempts = [];
  diagnosticsChannel.subscribe('undici:request:create', recordAttempt);
});

const cache = () => new CacheManager({ sublayer: 'mirrored', root, ttl: Number.POSITIVE_INFINITY });
const dir = () => path.join(root, 'mirrored');

async function expectCached(returned: string): Promise<void> {
  expect(returned).toBe(path.join(dir(), KEY));
  expect(sha256(await fsp.readFile(returned))).toBe(sha256(payload));
  expect(await tmpFilesIn(dir())).toEqual([]);
}

async function expectNothingPublished(): Promise<void> {
  expect(await fsp.readdir(dir()).catch(() => [])).not.toContain(KEY);
  expect(await tmpFilesIn(dir())).toEqual([]);
}

const answering = (status: number) =>
  startServer((_req, res) => {
    res.writeHead(status);
    res.end(`status ${status}`);
  });
const serving = (bytes: Buffer) => startServer((req, res) => servePayload(req, res, bytes, { etag: '"m"' }));
/** Sends the first `sentBytes` of a Content-Length it never completes, and closes: no range support. */
const cutShort = (sentBytes: number) =>
  startServer((req, res) =>
    servePayload(req, res, payload, { acceptRanges: false, breakAt: sentBytes, breakWith: 'end' }),
  );
const pathsOf = (server: TestServer) => server.requests.map((request) => request.url);

describe('trying the URLs in turn', () => {
  it('past a refused connection, a 503, a wrong sha256 and a short body: the good URL is stored, in that order', async () => {
    const refused = await closedPortUrl('/a/refused.bin');
    const unavailable = await answering(503);
    const wrong = await serving(wrongBytes);
    const short = await cutShort(100_000);
    const good = await serving(payload);
    const urls = [
      refused,
      unavailable.url('/a/busy.bin'),
      wrong.url('/a/wrong.bin'),
      short.url('/a/short.bin'),
      good.url('/a/good.bin'),
    ];
    const returned = await cache().getOrFetch(
      KEY,
      httpFetcher(urls, { ...quick, retries: 1, expectedSha256: sha256(payload) }),
    );
    await expectCached(returned);
    // Each URL spends its own retry budget before the next is tried; a wrong digest is not retried.
    expect(attempts).toEqual([refused, refused, urls[1], urls[1], urls[2], urls[3], urls[3], urls[4]]);
    expect(pathsOf(unavailable)).toEqual(['/a/busy.bin', '/a/busy.bin']);
    expect(pathsOf(wrong)).toEqual(['/a/wrong.bin']);
    expect(short.requests.map((request) => request.headers.range)).toEqual([undefined, undefined]);
    expect(pathsOf(good)).toEqual(['/a/good.bin']);
    expect(good.requests[0]?.headers.range).toBeUndefined();
  });

  for (const status of [404, 410, 401, 403]) {
    it(`${status} moves on to the next URL at once`, async () => {
      const first = await answering(status);
      const good = await serving(payload);
      const urls = [first.url(`/b${status}/file.bin`), good.url(`/b${status}/file.bin`)];
      await expectCached(await cache().getOrFetch(KEY, httpFetcher(urls, { ...quick, retries: 3 })));
      expect(first.requests).toHaveLength(1);
      expect(good.requests).toHaveLength(1);
    });
  }

  it('a body with the wrong sha256 is discarded whole: the next URL starts over and the entry is exact', async () => {
    const wrong = await serving(wrongBytes);
    const good = await serving(payload);
    const progress: HttpProgress[] = [];
    const returned = await cache().getOrFetch(
      KEY,
      httpFetcher([wrong.url('/c/file.bin'), good.url('/c/file.bin')], {
        ...quick,
        expectedSha256: sha256(payload),
        onProgress: (event) => progress.push({ ...event }),
      }),
    );
    await expectCached(returned);
    expect(wrong.requests).toHaveLength(1);
    expect(good.requests[0]?.headers.range).toBeUndefined();
    // The count went back to zero for the second URL: its bytes were not appended to the first one's.
    const received = progress.map((event) => event.receivedBytes);
    expect(received).toContain(payload.length);
    expect(received.filter((bytes) => bytes === payload.length)).toHaveLength(2);
    expect(received.at(-1)).toBe(payload.length);
  });
});

describe('resuming stays on the URL that sent the bytes', () => {
  // The servers close the connection cleanly (FIN) mid-body: every byte sent arrives, so the offset of the
  // resume is exact (a reset could drop bytes the client had not read yet).
  it('a connection closed mid-body by a server with ranges is resumed there (Range + If-Range), not on the next URL', async () => {
    const breaking = await startServer((req, res, index) =>
      servePayload(req, res, payload, {
        etag: '"r1"',
        breakAt: index === 0 ? 150_000 : undefined,
        breakWith: 'end',
      }),
    );
    const other = await serving(payload);
    const returned = await cache().getOrFetch(
      KEY,
      httpFetcher([breaking.url('/d/file.bin'), other.url('/d/file.bin')], quick),
    );
    await expectCached(returned);
    expect(breaking.requests.map((request) => request.headers.range)).toEqual([undefined, 'bytes=150000-']);
    expect(breaking.requests[1]?.headers['if-range']).toBe('"r1"');
    expect(other.requests).toHaveLength(0);
  });

  it('once the resumes are spent, the next URL starts from byte 0 and the bytes are not spliced', async () => {
    const alwaysBreaking = await startServer((req, res) =>
      servePayload(req, res, payload, {
        etag: '"r2"',
        breakAt: (requestedStart(req) ?? 0) + 100_000,
        breakWith: 'end',
      }),
    );
    const good = await serving(payload);
    const returned = await cache().getOrFetch(
      KEY,
      httpFetcher([alwaysBreaking.url('/e/file.bin'), good.url('/e/file.bin')], { ...quick, retries: 1 }),
    );
    await expectCached(returned);
    const ranges = alwaysBreaking.requests.map((request) => request.headers.range);
    expect(ranges).toEqual([undefined, 'bytes=100000-']);
    expect(good.requests.map((request) => request.headers.range)).toEqual([undefined]);
    expect(good.requests[0]?.headers['if-range']).toBeUndefined();
  });
});

describe('credentials stay with their origin', () => {
  it('headers go to the first URL and its origin only; a mirror elsewhere gets only its own', async () => {
    const primary = await startServer((req, res) => {
      if (req.url === '/f/missing.bin') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(503).end();
    });
    const mirror = await startServer((req, res) => {
      if (req.url === '/f/gone.bin') {
        res.writeHead(410).end();
        return;
      }
      servePayload(req, res, payload);
    });
    const headers = { Authorization: 'Bearer PRIMARY', 'X-Api-Key': 'PRIMARY-KEY', 'x-trace': 't1' };
    const urls = [
      primary.url('/f/missing.bin'),
      mirror.url('/f/gone.bin'),
      primary.url('/f/busy.bin'),
      { url: mirror.url('/f/file.bin'), headers: { 'X-Api-Key': 'MIRROR-KEY' } },
    ];
    await expectCached(await cache().getOrFetch(KEY, httpFetcher(urls, { ...quick, retries: 0, headers })));
    for (const request of primary.requests) {
      expect(request.headers).toMatchObject({
        authorization: 'Bearer PRIMARY',
        'x-api-key': 'PRIMARY-KEY',
        'x-trace': 't1',
      });
    }
    expect(pathsOf(primary)).toEqual(['/f/missing.bin', '/f/busy.bin']);
    expect(pathsOf(mirror)).toEqual(['/f/gone.bin', '/f/file.bin']);
    const [plain, own] = mirror.requests;
    for (const name of ['authorization', 'x-api-key', 'x-trace'])
      expect(plain?.headers[name]).toBeUndefined();
    expect(own?.headers['x-api-key']).toBe('MIRROR-KEY');
    expect(own?.headers.authorization).toBeUndefined();
    expect(own?.headers['x-trace']).toBeUndefined();
  });
});

describe('a URL that failed is tried last for the rest of the process', () => {
  it('the next fetch (another fetcher, same URLs) asks the good URL first; once the failed one works again it is back in its place', async () => {
    let firstIsDown = true;
    const flaky = await startServer((req, res) => {
      if (firstIsDown) {
        res.writeHead(503).end();
        return;
      }
      servePayload(req, res, payload);
    });
    const good = await serving(payload);
    const urls = [flaky.url('/g/file.bin'), good.url('/g/file.bin')];
    const options = { ...quick, retries: 0 };

    await cache().getOrFetch(KEY, httpFetcher(urls, options));
    expect(attempts).toEqual(urls);

    attempts = [];
    await cache().getOrFetch(KEY, httpFetcher(urls, options), { refresh: true });
    expect(attempts).toEqual([urls[1]]);
    expect(flaky.requests).toHaveLength(1);

    // The good one goes down: asked first (it never failed), it fails; the flaky one, up again, answers and
    // is forgotten as a failure, so the next fetch asks it first.
    await good.close();
    firstIsDown = false;
    attempts = [];
    await cache().getOrFetch(KEY, httpFetcher(urls, options), { refresh: true });
    expect(attempts).toEqual([urls[1], urls[0]]);
    attempts = [];
    await cache().getOrFetch(KEY, httpFetcher(urls, options), { refresh: true });
    expect(attempts).toEqual(urls.slice(0, 1));
  });
});

describe('when every URL fails', () => {
  it('MirrorsFailedError lists what each URL answered, without credentials or query strings', async () => {
    const refused = await closedPortUrl('/h/refused.bin');
    const unavailable = await answering(503);
    const missing = await answering(404);
    const wrong = await serving(wrongBytes);
    const secret = (server: TestServer, pathname: string) =>
      `http://user:pw@127.0.0.1:${server.port}${pathname}?token=SECRET`;
    const urls = [
      `${refused}?token=SECRET`,
      secret(unavailable, '/h/busy.bin'),
      secret(missing, '/h/missing.bin'),
      secret(wrong, '/h/wrong.bin'),
    ];
    const error = await rejectionOf(
      cache().getOrFetch(KEY, httpFetcher(urls, { ...quick, retries: 0, expectedSha256: sha256(payload) })),
    );
    expect(error).toBeInstanceOf(MirrorsFailedError);
    const failed = error as MirrorsFailedError;
    expect(failed.code).toBe('ERR_ALL_MIRRORS_FAILED');
    expect(failed.failures.map(({ url, status, code, answer }) => ({ url, status, code, answer }))).toEqual([
      { url: refused, status: undefined, code: 'ECONNREFUSED', answer: 'ECONNREFUSED' },
      { url: unavailable.url('/h/busy.bin'), status: 503, code: 'ERR_HTTP_STATUS', answer: 'HTTP 503' },
      { url: missing.url('/h/missing.bin'), status: 404, code: 'ERR_HTTP_STATUS', answer: 'HTTP 404' },
      {
        url: wrong.url('/h/wrong.bin'),
        status: undefined,
        code: 'ERR_PAYLOAD_CORRUPT',
        answer: 'hash-mismatch',
      },
    ]);
    expect(failed.failures[3]?.error).toBeInstanceOf(BulkPayloadCorruptError);
    expect(failed.cause).toBe(failed.failures[3]?.error);
    for (const failure of failed.failures)
      expect(failed.message).toContain(`${failure.url} (${failure.answer})`);
    for (const text of [failed.message, failed.stack ?? '']) {
      expect(text).not.toContain('SECRET');
      expect(text).not.toContain('pw@');
    }
    await expectNothingPublished();
  });

  it('a single URL, alone or in a list of one, fails with its own error as before', async () => {
    const missing = await answering(404);
    for (const url of [missing.url('/i/file.bin'), [missing.url('/i/file.bin')]]) {
      const error = await rejectionOf(cache().getOrFetch(KEY, httpFetcher(url, quick)));
      expect(error).toBeInstanceOf(HttpStatusError);
      expect(error).toMatchObject({ status: 404 });
    }
  });
});

describe('what does not move on to the next URL', () => {
  it('an abort ends the fetch: the next URL is never asked', async () => {
    const silent = await startServer(() => {});
    const good = await serving(payload);
    const controller = new AbortController();
    const pending = cache().getOrFetch(
      KEY,
      httpFetcher([silent.url('/j/file.bin'), good.url('/j/file.bin')], quick),
      { signal: controller.signal },
    );
    while (silent.requests.length === 0) await new Promise((resolve) => setImmediate(resolve));
    controller.abort();
    expect(await rejectionOf(pending)).toMatchObject({ name: 'AbortError' });
    expect(good.requests).toHaveLength(0);
    expect(attempts).toEqual([silent.url('/j/file.bin')]);
    await expectNothingPublished();
  });

  it('what onProgress throws ends the fetch as it is: the next URL is never asked', async () => {
    const first = await serving(payload);
    const good = await serving(payload);
    const thrown = new Error('the caller gave up');
    const error = await rejectionOf(
      cache().getOrFetch(
        KEY,
        httpFetcher([first.url('/k/file.bin'), good.url('/k/file.bin')], {
          ...quick,
          onProgress: () => {
            throw thrown;
          },
        }),
      ),
    );
    expect(error).toBe(thrown);
    expect(good.requests).toHaveLength(0);
    await expectNothingPublished();
  });

  it('an invalid URL anywhere in the list is refused before any request', () => {
    expect(() => httpFetcher(['http://127.0.0.1:9/l/file.bin', 'ftp://127.0.0.1/l/file.bin'])).toThrow(
      /supports http and https, not ftp:/,
    );
    expect(() => httpFetcher([])).toThrow(/at least one URL/);
  });
});
