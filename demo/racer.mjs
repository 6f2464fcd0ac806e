// One racing process of the demo (started by demo.mjs with fork). It loads the library, reports "ready",
// and on "go" asks the shared cache for the key, then reports how long that took, whether this process
// was the one that downloaded, and the sha256 of the file it got back.
// argv: <root> <sublayer> <key> <url>
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { CacheManager, httpFetcher } from 'payload-cache';
import { Agent } from 'undici';

const [root, sublayer, key, url] = process.argv.slice(2);
// A plain Agent rather than the default EnvHttpProxyAgent: the demo must never go through a proxy.
const dispatcher = new Agent();
const cache = new CacheManager({ root, sublayer, ttl: 60 * 60_000 });
const download = httpFetcher(url, { dispatcher });

process.once('message', async (message) => {
  if (message !== 'go') return;
  try {
    let downloaded = false;
    const startedAt = performance.now();
    const path = await cache.getOrFetch(key, (ctx) => {
      downloaded = true;
      return download(ctx);
    });
    const ms = performance.now() - startedAt;
    const hash = createHash('sha256');
    await pipeline(createReadStream(path), hash);
    process.send({ pid: process.pid, ms, downloaded, path, sha256: hash.digest('hex') });
  } catch (error) {
    process.send({ pid: process.pid, error: String(error?.stack ?? error) });
  } finally {
    await dispatcher.close();
    process.disconnect();
  }
});
process.send('ready');
