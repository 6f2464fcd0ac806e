// One extraction by payload-cache's extraction core in a fresh process, so that its peak RSS is its own.
// argv[2]: JSON { archive, dest }. Reports over IPC: { type: 'result', elapsedMs, peakRssGrowthBytes,
// rssMethod, files, totalBytes }. What is measured is extractArchive alone (detect, vet, inflate, write,
// sha256 per file, fsync of every file and directory): the cost getOrExtract adds to a download.
import { promises as fsp } from 'node:fs';
import { collectGarbage, currentRssBytes, distUrl, peakRssBytes, resetPeakRss } from '../lib/common.mjs';

const { extractArchive } = await import(distUrl('archive-extract.js'));
const { archive, dest } = JSON.parse(process.argv[2]);

await fsp.mkdir(dest, { recursive: true });
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
const result = await extractArchive(archive, dest);
const elapsedMs = performance.now() - started;
if (sampler) clearInterval(sampler);
const peak = exactPeak ? peakRssBytes() : Math.max(sampledPeak, process.memoryUsage.rss());
process.send({
  type: 'result',
  elapsedMs,
  peakRssGrowthBytes: peak - baseline,
  rssMethod: exactPeak ? 'VmHWM' : 'sampled',
  files: result.files.length,
  totalBytes: result.totalBytes,
});
process.disconnect();
