// A profiling driver for the miss path: N writes of SIZE bytes by one contender, in one process.
// node --cpu-prof --cpu-prof-dir=/tmp/prof bench/profile/miss.mjs [ours|floor|cacache|write-file-atomic] [sizeMiB] [N]
// For where the wall time goes (fsync waits do not show in a CPU profile), run it under
//   strace -f -T -e trace=fsync,fdatasync,rename,mkdir,openat,unlink node bench/profile/miss.mjs ours 1 20
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { MiB, makeScratch, randomKey, removeScratch } from '../lib/common.mjs';
import { makeWriter } from '../lib/miss-writers.mjs';

const [contender = 'ours', sizeMiB = '1', countText = '50'] = process.argv.slice(2);
const sizeBytes = Number(sizeMiB) * MiB;
const root = makeScratch('profile-miss');
const dir = path.join(root, contender);
await fsp.mkdir(dir, { recursive: true });
const write = await makeWriter(contender, dir);
await write(randomKey('warmup'), 4096);
const times = [];
for (let i = 0; i < Number(countText); i++) {
  const started = performance.now();
  const stored = await write(randomKey('miss'), sizeBytes);
  times.push(performance.now() - started);
  await fsp.rm(stored, { force: true });
}
times.sort((a, b) => a - b);
const medianMs = times[times.length >> 1];
console.log(
  `${contender}: ${times.length} writes of ${sizeMiB} MiB, median ${medianMs.toFixed(2)} ms (${(sizeBytes / 1e3 / medianMs).toFixed(0)} MB/s)`,
);
removeScratch(root);
