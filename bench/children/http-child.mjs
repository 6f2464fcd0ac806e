// One download through httpFetcher into a fresh cache, in a fresh process, so that its peak RSS is its own.
// argv[2]: JSON { root, url, key }. Reports over IPC: { type: 'result', elapsedMs, peakRssGrowthBytes,
// rssMethod, sizeBytes }. The parent times the whole process (spawn to exit), as it times curl.
import { statSync } from 'node:fs';
import { collectGarbage, currentRssBytes, distUrl, peakRssBytes, resetPeakRss } from '../lib/common.mjs';

const { CacheManager, httpFetcher } = await import(distUrl('index.js'));
const { root, url, key } = JSON.parse(process.argv[2]);

const cache = new CacheManager({ root, sublayer: 'http', ttl: Number.POSITIVE_INFINITY });
collectGarbage();
const exactPeak = resetPeakRss() && peakRssBytes() !== undefined;
const baseline = currentRssBytes();
let sampledPeak = baseline;
const sampler = exactPeak
  ? undefined
  : setInterval(() => {
      sampledPeak = Math.max(sampledPeak, process.memoryUsage.rss());
    }, 5);

const started = performance.now();
const payloadPath = await cache.getOrFetch(key, httpFetcher(url));
const elapsedMs = performance.now() - started;
if (sampler) clearInterval(sampler);
const peak = exactPeak ? peakRssBytes() : Math.max(sampledPeak, process.memoryUsage.rss());
process.send({
  type: 'result',
  elapsedMs,
  peakRssGrowthBytes: peak - baseline,
  rssMethod: exactPeak ? 'VmHWM' : 'sampled',
  sizeBytes: statSync(payloadPath).size,
});
process.disconnect();
