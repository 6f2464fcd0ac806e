// One miss-path write in a fresh process, so that each contender's peak RSS is its own.
// argv[2]: JSON { contender, sizeBytes, dir, key }. Reports over IPC:
// { type: 'result', elapsedMs, peakRssGrowthBytes, rssMethod, storedPath }.
// Every contender first writes a tiny warm-up entry (module code compiled, directories created), then
// the measured one; the RSS baseline is taken after the warm-up and a full GC.
import { promises as fsp } from 'node:fs';
import { measurePeakRss, randomKey } from '../lib/common.mjs';
import { makeWriter } from '../lib/miss-writers.mjs';

const { contender, sizeBytes, dir, key } = JSON.parse(process.argv[2]);

await fsp.mkdir(dir, { recursive: true });
const write = await makeWriter(contender, dir);
await write(randomKey('warmup'), 4096);
const { value: storedPath, ...measured } = await measurePeakRss(() => write(key, sizeBytes));
process.send({ type: 'result', ...measured, storedPath });
process.disconnect();
