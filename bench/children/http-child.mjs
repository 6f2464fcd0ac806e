// One download through httpFetcher into a fresh cache, in a fresh process, so that its peak RSS is its own.
// argv[2]: JSON { root, url, key }. Reports over IPC: { type: 'result', elapsedMs, peakRssGrowthBytes,
// rssMethod, sizeBytes }. The parent times the whole process (spawn to exit), as it times curl.
import { statSync } from 'node:fs';
import { distUrl, measurePeakRss } from '../lib/common.mjs';

const { CacheManager, httpFetcher } = await import(distUrl('index.js'));
const { root, url, key } = JSON.parse(process.argv[2]);

const cache = new CacheManager({ root, sublayer: 'http', ttl: Number.POSITIVE_INFINITY });
const { value: payloadPath, ...measured } = await measurePeakRss(() =>
  cache.getOrFetch(key, httpFetcher(url)),
);
process.send({ type: 'result', ...measured, sizeBytes: statSync(payloadPath).size });
process.disconnect();
