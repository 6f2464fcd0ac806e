// A profiling driver for the hit path: `getOrFetch` on a fresh entry, N times in a row.
// node --cpu-prof --cpu-prof-dir=/tmp/prof bench/profile/hit.mjs [N]
// node bench/profile/top.mjs /tmp/prof/*.cpuprofile

import { prepareHitContenders } from '../hit.mjs';
import { makeScratch, removeScratch } from '../lib/common.mjs';

const iterations = Number(process.argv[2] ?? 50_000);
const which = process.argv[3] ?? 'ours';
const root = makeScratch('profile-hit');
const { contenders } = await prepareHitContenders(root);
const started = performance.now();
for (let i = 0; i < iterations; i++) await contenders[which]();
const elapsedMs = performance.now() - started;
console.log(`${which}: ${iterations} hits, ${((elapsedMs * 1000) / iterations).toFixed(1)} µs each`);
removeScratch(root);
