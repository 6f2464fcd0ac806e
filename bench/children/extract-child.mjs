// One extraction by payload-cache's extraction core in a fresh process, so that its peak RSS is its own.
// argv[2]: JSON { archive, dest }. Reports over IPC: { type: 'result', elapsedMs, peakRssGrowthBytes,
// rssMethod, files, totalBytes }. What is measured is extractArchive alone (detect, vet, inflate, write,
// sha256 per file, fsync of every file and directory): the cost getOrExtract adds to a download.
import { promises as fsp } from 'node:fs';
import { distUrl, measurePeakRss } from '../lib/common.mjs';

const { extractArchive } = await import(distUrl('archive-extract.js'));
const { archive, dest } = JSON.parse(process.argv[2]);

await fsp.mkdir(dest, { recursive: true });
const { value: result, ...measured } = await measurePeakRss(() => extractArchive(archive, dest));
process.send({ type: 'result', ...measured, files: result.files.length, totalBytes: result.totalBytes });
process.disconnect();
