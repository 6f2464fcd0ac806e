// A profiling driver for the scale rows: a sublayer of N entries, then evicting writes (each timed with
// the background eviction pass it asks for), list() or prune().
// node --cpu-prof --cpu-prof-dir=/tmp/prof bench/profile/scale.mjs evict|list|prune [N] [repeats]
// node bench/profile/top.mjs /tmp/prof/*.cpuprofile
import path from 'node:path';
import { distUrl, KiB, makeScratch, removeScratch } from '../lib/common.mjs';
import { populate } from '../scale.mjs';

const { CacheManager } = await import(distUrl('index.js'));
const { backgroundEviction, backgroundSweep } = await import(distUrl('cache-manager.js'));
const [what = 'evict', countText = '10000', repeatsText = '20'] = process.argv.slice(2);
const count = Number(countText);
const repeats = Number(repeatsText);
const root = makeScratch('profile-scale');
await populate(path.join(root, 'big'), count);
const cache = new CacheManager({ sublayer: 'big', ttl: 7 * 24 * 3600_000, keepN: count, root });
await cache.has('warm-up');
await cache.get('warm-up');
await cache[backgroundSweep];
const payload = Buffer.alloc(KiB, 9);
const operations = {
  evict: async (i) => {
    await cache.getOrFetch(`new-${i}.bin`, () => payload);
    await cache[backgroundEviction];
  },
  list: () => cache.list(),
  prune: () => cache.prune(),
};
const times = [];
for (let i = 0; i < repeats; i++) {
  const started = performance.now();
  await operations[what](i);
  times.push(performance.now() - started);
}
times.sort((a, b) => a - b);
console.log(`${what} x${repeats} on ${count} entries: median ${times[times.length >> 1].toFixed(1)} ms`);
removeScratch(root);
