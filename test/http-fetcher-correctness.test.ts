import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { deflateRawSync, gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CacheManager,
  type HttpFetcherOptions,
  HttpStatusError,
  httpFetcher,
  PayloadCacheError,
} from '../src/index.js';
import { makeTempDir, patternBytes, removeTempDirs, tmpFilesIn } from './helpers.js';
import { closeAllServers, requestedStart, startServer } from './http-servers.js';

// Issue 9 (httpFetcher correctness): each test reproduces, against a real loopback server, one way the
// fetcher cached bytes that are not the resource (or failed in the wrong way), and is named for it.

const KEY = 'payload.bin';
const SIZE = 200_000;
const BREAK_AT = 100_000;
const quick: HttpFetcherOptions = { retryDelayMs: 5, maxRetryDelayMs: 50 };
const v1 = patternBytes(SIZE, 1);
const v2 = patternBytes(SIZE, 2);
let root: string;

beforeEach(async () => {
  root = await makeTempDir('payload-cache-http-correctness-');
});
afterEach(async () => {
  await closeAllServers();
  await removeTempDirs();
});

const cache = () => new CacheManager({ sublayer: 'http', root, ttl: Number.POSITIVE_INFINITY });
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const dir = () => path.join(root, 'http');

async function cachedSha(returned: string): Promise<string> {
  return sha256(await fsp.readFile(returned));
}

/** Sends `bytes` from `start` with `headers`, then breaks the connection once `breakAt` is reached. */
function sendBroken(
  res: import('node:http').ServerResponse,
  status: number,
  headers: Record<string, string | number>,
  bytes: Buffer,
  breakAt?: number,
): void {
  res.writeHead(status, headers);
  if (breakAt === undefined) {
    res.end(bytes);
    return;
  }
  res.write(bytes.subarray(0, breakAt), () => setTimeout(() => res.socket?.destroy(), 50));
}

/** A 206 with everything from `start` to the end of `bytes`, stating `bytes.length` as the total. */
function sendRest(
  res: import('node:http').ServerResponse,
  headers: Record<string, string | number>,
  bytes: Buffer,
  start: number,
): void {
  const range = { 'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}` };
  sendBroken(
    res,
    206,
    { ...headers, ...range, 'content-length': bytes.length - start },
    bytes.subarray(start),
  );
}

describe('wrong bytes cached', () => {
  it('a weak ETag is no validator for a resume: v2 is stored whole, never spliced onto v1', async () => {
    const server = await startServer((req, res, index) => {
      const headers = {
        'content-length': SIZE,
        etag: index === 0 ? 'W/"v1"' : 'W/"v2"',
        'accept-ranges': 'bytes',
      };
      if (index === 0) return sendBroken(res, 200, headers, v1, BREAK_AT);
      // A server that honours a bare Range would splice v2's tail onto v1's head.
      const start = requestedStart(req) ?? 0;
      const status = start > 0 ? 206 : 200;
      const extra: Record<string, string | number> =
        start > 0
          ? { 'content-range': `bytes ${start}-${SIZE - 1}/${SIZE}`, 'content-length': SIZE - start }
          : {};
      sendBroken(res, status, { ...headers, ...extra }, v2.subarray(start));
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), quick));
    expect(await cachedSha(returned)).toBe(sha256(v2));
    expect(server.requests[1]?.headers.range).toBeUndefined();
  });

  it('a 206 carrying another ETag than the If-Range asked for is dropped and the whole payload fetched', async () => {
    const server = await startServer((req, res, index) => {
      const base = { etag: '"v1"', 'accept-ranges': 'bytes' };
      if (index === 0) return sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1, BREAK_AT);
      const start = requestedStart(req);
      if (start !== undefined) {
        // Ignores If-Range and sends the new version's range.
        return sendRest(res, { etag: '"v2"' }, v2, start);
      }
      sendBroken(res, 200, { etag: '"v2"', 'content-length': SIZE, 'accept-ranges': 'bytes' }, v2);
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), quick));
    expect(await cachedSha(returned)).toBe(sha256(v2));
    expect(server.requests.map((request) => request.headers.range ?? 'whole')).toEqual([
      'whole',
      `bytes=${BREAK_AT}-`,
      'whole',
    ]);
  });

  it('a 206 whose total differs from the Content-Length known is dropped, not appended', async () => {
    const longer = patternBytes(300_000, 3);
    const server = await startServer((req, res, index) => {
      const base = { etag: '"v1"', 'accept-ranges': 'bytes' };
      if (index === 0) return sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1, BREAK_AT);
      const start = requestedStart(req);
      if (start !== undefined) {
        return sendRest(res, base, longer, start);
      }
      sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1);
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), quick));
    expect((await fsp.stat(returned)).size).toBe(SIZE);
    expect(await cachedSha(returned)).toBe(sha256(v1));
  });

  it('a 206 with an unknown total (bytes a-b/*) keeps the known size: the rest is asked for again', async () => {
    const server = await startServer((req, res, index) => {
      const base = { etag: '"v1"', 'accept-ranges': 'bytes' };
      if (index === 0) return sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1, BREAK_AT);
      const start = requestedStart(req) ?? 0;
      const end = Math.min(start + 9_999, SIZE - 1);
      sendBroken(
        res,
        206,
        { ...base, 'content-range': `bytes ${start}-${end}/*`, 'content-length': end - start + 1 },
        v1.subarray(start, end + 1),
      );
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), { ...quick, retries: 20 }));
    expect(await cachedSha(returned)).toBe(sha256(v1));
    expect(server.requests.length).toBeGreaterThan(2);
  });

  it.each([
    [202, '{"status":"processing"}'],
    [204, ''],
  ])('a %s is not the resource: HttpStatusError, nothing cached', async (status, body) => {
    const server = await startServer((_req, res) => {
      res.writeHead(status, status === 204 ? {} : { 'content-type': 'application/json' });
      res.end(body);
    });
    const error = await cache()
      .getOrFetch(KEY, httpFetcher(server.url('/f'), quick))
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(HttpStatusError);
    expect((error as HttpStatusError).status).toBe(status);
    expect(await cache().has(KEY)).toBe(false);
  });

  it('onProgress throwing surfaces as is after the tmp file is gone: no resume, no chunk lost', async () => {
    const server = await startServer((_req, res) => {
      sendBroken(
        res,
        200,
        { etag: '"v1"', 'accept-ranges': 'bytes', 'content-length': 3_000_000 },
        patternBytes(3_000_000, 4),
      );
    });
    const thrown = new Error('progress callback failed');
    let calls = 0;
    const onProgress = () => {
      calls += 1;
      if (calls === 2) throw thrown;
    };
    const error = await cache()
      .getOrFetch(KEY, httpFetcher(server.url('/f'), { ...quick, onProgress }))
      .catch((caught: unknown) => caught);
    expect(error).toBe(thrown);
    expect(server.requests).toHaveLength(1);
    expect(await tmpFilesIn(dir())).toEqual([]);
  });
});

describe('wrong errors and spec violations', () => {
  it('a 416 on resume whose length equals the bytes received completes the download', async () => {
    const payload = patternBytes(150_000, 5);
    const server = await startServer((req, res, index) => {
      if (index === 0) {
        // Chunked (no Content-Length): every byte arrives, then the connection drops before the last chunk.
        res.writeHead(200, { etag: '"c1"', 'accept-ranges': 'bytes' });
        res.write(payload, () => setTimeout(() => res.socket?.destroy(), 50));
        return;
      }
      expect(requestedStart(req)).toBe(payload.length);
      res.writeHead(416, { 'content-range': `bytes */${payload.length}` });
      res.end();
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), quick));
    expect(await cachedSha(returned)).toBe(sha256(payload));
    expect(server.requests).toHaveLength(2);
  });

  it.each(['1.5', '-1'])('an invalid Retry-After (%s) does not skip the backoff', async (value) => {
    const server = await startServer((_req, res, index) => {
      if (index < 2) {
        res.writeHead(429, { 'retry-after': value });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-length': 4 });
      res.end('done');
    });
    const options = { retryDelayMs: 200, maxRetryDelayMs: 1_000 };
    await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), options));
    const [first, second, third] = server.requests.map((request) => request.atMs);
    // Backoff waits 50-100 % of 200 ms, then of 400 ms: the gaps cannot be shorter (a slow machine only
    // makes them longer).
    expect((second as number) - (first as number)).toBeGreaterThanOrEqual(95);
    expect((third as number) - (second as number)).toBeGreaterThanOrEqual(195);
  });

  it('timeoutMs bounds the TCP connect too, not only the wait for headers', async () => {
    // A server whose process never accepts: once its small backlog is full, new connections hang in SYN.
    const child = spawn(
      process.execPath,
      [
        '-e',
        "const s=require('net').createServer();s.listen({port:0,host:'127.0.0.1',backlog:1},()=>{console.log(s.address().port);const end=Date.now()+60000;while(Date.now()<end){}})",
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    try {
      const port = await new Promise<number>((resolve) =>
        child.stdout.once('data', (line: Buffer) => resolve(Number(line.toString()))),
      );
      const fillers = Array.from({ length: 8 }, () => net.connect(port, '127.0.0.1').on('error', () => {}));
      const startedAt = Date.now();
      const error = await cache()
        .getOrFetch(KEY, httpFetcher(`http://127.0.0.1:${port}/f`, { timeoutMs: 500, retries: 0 }))
        .catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(Error);
      // undici's own connect timeout is 10 s: ending well before it shows timeoutMs applied.
      expect(Date.now() - startedAt).toBeLessThan(8_000);
      for (const socket of fillers) socket.destroy();
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('If-Range never carries a date while an entity tag is known: with only a weak tag, no resume at all', async () => {
    const server = await startServer((req, res, index) => {
      const base = {
        etag: 'W/"e1"',
        'last-modified': 'Wed, 21 Oct 2015 07:28:00 GMT',
        'accept-ranges': 'bytes',
      };
      if (index === 0) return sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1, BREAK_AT);
      const start = requestedStart(req);
      if (start !== undefined) {
        return sendRest(res, base, v1, start);
      }
      sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1);
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), quick));
    expect(await cachedSha(returned)).toBe(sha256(v1));
    expect(server.requests[1]?.headers['if-range']).toBeUndefined();
    expect(server.requests[1]?.headers.range).toBeUndefined();
  });

  it('If-Range carries a strong entity tag when one is known, even beside a Last-Modified', async () => {
    const server = await startServer((req, res, index) => {
      const base = {
        etag: '"e1"',
        'last-modified': 'Wed, 21 Oct 2015 07:28:00 GMT',
        'accept-ranges': 'bytes',
      };
      if (index === 0) return sendBroken(res, 200, { ...base, 'content-length': SIZE }, v1, BREAK_AT);
      const start = requestedStart(req) ?? 0;
      sendRest(res, base, v1, start);
    });
    const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/f'), quick));
    expect(await cachedSha(returned)).toBe(sha256(v1));
    expect(server.requests[1]?.headers['if-range']).toBe('"e1"');
  });

  it.each([
    ['raw DEFLATE labelled deflate', 'deflate', deflateRawSync(v1)],
    ['corrupt gzip', 'gzip', Buffer.concat([gzipSync(v1).subarray(0, 40), Buffer.alloc(200, 0xff)])],
  ])(
    'a body that cannot be decoded (%s) fails at once with ERR_HTTP_CONTENT_ENCODING',
    async (_label, encoding, body) => {
      const server = await startServer((_req, res) => {
        res.writeHead(200, { 'content-encoding': encoding, 'content-length': body.length });
        res.end(body);
      });
      const error = await cache()
        .getOrFetch(KEY, httpFetcher(server.url('/f'), quick))
        .catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(PayloadCacheError);
      expect((error as PayloadCacheError).code).toBe('ERR_HTTP_CONTENT_ENCODING');
      expect(server.requests).toHaveLength(1);
    },
  );
});
