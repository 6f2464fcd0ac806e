// The demo's HTTP server: serves one in-memory payload on 127.0.0.1 with Content-Length, ETag,
// Last-Modified and byte ranges (what httpFetcher uses to validate, revalidate and resume), throttled so that
// the progress display has something to show, and counts the requests per path.
import { once } from 'node:events';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const CHUNK_BYTES = 256 * 1024;

/**
 * Starts the server on an ephemeral loopback port. Every path under `/data/` serves `payload`.
 * Returns `{ origin, requests(path), close() }`.
 */
export async function startServer({ payload, etag, lastModified, bytesPerSecond }) {
  const counts = new Map();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    counts.set(url.pathname, (counts.get(url.pathname) ?? 0) + 1);
    if (!url.pathname.startsWith('/data/') || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404).end();
      return;
    }
    const headers = {
      'content-type': 'application/zip',
      'accept-ranges': 'bytes',
      etag,
      'last-modified': lastModified,
    };
    if (req.headers['if-none-match'] === etag) {
      res.writeHead(304, headers).end();
      return;
    }
    const range = requestedRange(req, payload.length, etag);
    if (range === 'unsatisfiable') {
      res.writeHead(416, { 'content-range': `bytes */${payload.length}` }).end();
      return;
    }
    const [start, end] = range ?? [0, payload.length - 1];
    headers['content-length'] = String(end - start + 1);
    if (range) headers['content-range'] = `bytes ${start}-${end}/${payload.length}`;
    res.writeHead(range ? 206 : 200, headers);
    if (req.method === 'HEAD') res.end();
    else void sendThrottled(res, payload.subarray(start, end + 1), bytesPerSecond);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    requests: (path) => counts.get(path) ?? 0,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** The `[start, end]` of a `Range: bytes=...` request that still matches `If-Range`, else `undefined`. */
function requestedRange(req, size, etag) {
  const match = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
  if (!match || (req.headers['if-range'] && req.headers['if-range'] !== etag)) return undefined;
  const [, from, to] = match;
  const start = from === '' ? Math.max(0, size - Number(to)) : Number(from);
  const end = from === '' || to === '' ? size - 1 : Math.min(Number(to), size - 1);
  return start > end || start >= size ? 'unsatisfiable' : [start, end];
}

/** Writes `bytes` at no more than `bytesPerSecond`, respecting backpressure; stops if the client goes. */
async function sendThrottled(res, bytes, bytesPerSecond) {
  const startedAt = performance.now();
  for (let offset = 0; offset < bytes.length && !res.destroyed; offset += CHUNK_BYTES) {
    const chunk = bytes.subarray(offset, offset + CHUNK_BYTES);
    if (!res.write(chunk)) await drainedOrClosed(res);
    const dueMs = ((offset + chunk.length) / bytesPerSecond) * 1000;
    const aheadMs = dueMs - (performance.now() - startedAt);
    if (aheadMs > 1) await sleep(aheadMs);
  }
  res.end();
}

function drainedOrClosed(res) {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
