// One miss-path write in a fresh process, so that each contender's peak RSS is its own.
// argv[2]: JSON { contender, sizeBytes, dir, key }. Reports over IPC:
// { type: 'result', elapsedMs, peakRssGrowthBytes, rssMethod, storedPath }.
// Every contender first writes a tiny warm-up entry (module code compiled, directories created), then
// the measured one; the RSS baseline is taken after the warm-up and a full GC.
import { promises as fsp } from 'node:fs';
import { collectGarbage, currentRssBytes, peakRssBytes, randomKey, resetPeakRss } from '../lib/common.mjs';
import { makeWriter } from '../lib/miss-writers.mjs';

const { contender, sizeBytes, dir, key } = JSON.parse(process.argv[2]);

await fsp.mkdir(dir, { recursive: true });
const write = await makeWriter(contender, dir);
await write(randomKey('warmup'), 4096);
collectGarbage();
const exactPeak = resetPeakRss() && peakRssBytes() !== undefined;
const baseline = currentRssBytes();
// Sampling is the fallback where the kernel's high-water mark cannot be reset (not Linux).
let sampledPeak = baseline;
const sampler = exactPeak
  ? undefined
  : setInterval(() => {
      sampledPeak = Math.max(sampledPeak, process.memoryUsage.rss());
    }, 5);

const started = performance.now();
const storedPath = await write(key, sizeBytes);
const elapsedMs = performance.now() - started;
if (sampler) clearInterval(sampler);
const peak = exactPeak ? peakRssBytes() : Math.max(sampledPeak, process.memoryUsage.rss());
process.send({
  type: 'result',
  elapsedMs,
  peakRssGrowthBytes: peak - baseline,
  rssMethod: exactPeak ? 'VmHWM' : 'sampled',
  storedPath,
});
process.disconnect();
