// Row 1, the hit path: `getOrFetch` on a fresh entry against the two bare syscalls it needs (the floor),
// cacache's index lookup (memoization off and on) and a naive stat + metadata-file cache.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import cacache from 'cacache';
import { Bench } from 'tinybench';
import writeFileAtomic from 'write-file-atomic';
import { distUrl, figure, KiB, makeScratch, percentile, removeScratch } from './lib/common.mjs';
import { formatRatio } from './lib/report.mjs';

const { CacheManager } = await import(distUrl('index.js'));
const { backgroundSweep } = await import(distUrl('cache-manager.js'));

const KEY = 'weo_april_2024.zip';
const PAYLOAD_BYTES = 64 * KiB; // small enough for cacache's memo (50 MB cap); a hit never reads the payload

const refuseFetch = () => {
  throw new Error('the hit benchmark fetched: the entry was not a hit');
};

/** Creates the same entry for every contender and returns one async function per contender. */
export async function prepareHitContenders(root, { key = KEY, sublayer = 'hit' } = {}) {
  const payload = Buffer.alloc(PAYLOAD_BYTES, 7);

  const cache = new CacheManager({ sublayer, ttl: Number.POSITIVE_INFINITY, root: path.join(root, 'ours') });
  const ourPath = await cache.getOrFetch(key, () => payload);
  await cache[backgroundSweep];
  const manifestPath = `${ourPath}.manifest.json`;

  const cacacheDir = path.join(root, 'cacache');
  await cacache.put(cacacheDir, key, payload, { memoize: true });

  // What a simple cache does: payload and a small metadata file, each written with write-file-atomic;
  // a hit stats the payload, then reads and parses the metadata, one after the other.
  const naiveDir = path.join(root, 'naive');
  await fsp.mkdir(naiveDir, { recursive: true });
  const naivePayload = path.join(naiveDir, key);
  const naiveMeta = `${naivePayload}.json`;
  await writeFileAtomic(naivePayload, payload);
  await writeFileAtomic(naiveMeta, JSON.stringify({ key, size: payload.length, createdAt: Date.now() }));

  return {
    cache,
    /** Re-memoizes the cacache entry: its memo expires after 3 minutes. */
    refreshMemo: () => cacache.put(cacacheDir, key, payload, { memoize: true }),
    contenders: {
      ours: async () => {
        if ((await cache.getOrFetch(key, refuseFetch)) !== ourPath) throw new Error('wrong path');
      },
      floor: async () => {
        const [stats, manifest] = await Promise.all([
          fsp.lstat(ourPath),
          fsp.readFile(manifestPath, 'utf8').then(JSON.parse),
        ]);
        if (stats.size !== manifest.size_bytes) throw new Error('size mismatch');
      },
      'cacache memo off': async () => {
        const info = await cacache.get.info(cacacheDir, key, { memoize: false });
        if (info?.size !== PAYLOAD_BYTES) throw new Error('cacache miss');
      },
      'cacache memo on': async () => {
        const info = await cacache.get.info(cacacheDir, key, { memoize: true });
        if (info?.size !== PAYLOAD_BYTES) throw new Error('cacache miss');
      },
      'naive stat+meta': async () => {
        const stats = await fsp.stat(naivePayload);
        const meta = JSON.parse(await fsp.readFile(naiveMeta, 'utf8'));
        if (stats.size !== meta.size) throw new Error('size mismatch');
      },
    },
  };
}

/**
 * Runs `contenders` (name -> async fn) through tinybench for `rounds` short rounds, rotating the order
 * each round so that no contender always runs first or last. Other work shares this 2-core machine and
 * its load drifts over seconds, so a ratio is taken within each round (both contenders measured moments
 * apart) and the median over rounds is reported. Returns per contender: ops/s, p50 and p99 latency (µs)
 * as figures over rounds, and the per-round values for ratios ({@link ratioFigure}).
 */
export async function benchLatency(contenders, { rounds, timeMs, iterations, warmupMs, beforeRound }) {
  const names = Object.keys(contenders);
  const per = Object.fromEntries(names.map((n) => [n, { ops: [], p50: [], p99: [], samples: [] }]));
  for (let round = 0; round < rounds; round++) {
    await beforeRound?.();
    const bench = new Bench({
      time: timeMs,
      iterations,
      warmupTime: warmupMs,
      warmupIterations: round === 0 ? 64 : 8,
      retainSamples: true,
      throws: true,
    });
    const order = names.map((_, i) => names[(i + round) % names.length]);
    for (const name of order) bench.add(name, contenders[name], { async: true });
    await bench.run();
    for (const task of bench.tasks) {
      const { latency, throughput } = task.result;
      per[task.name].ops.push(throughput.mean);
      per[task.name].p50.push(latency.p50 * 1000);
      per[task.name].p99.push(latency.p99 * 1000);
      for (const sample of latency.samples ?? []) per[task.name].samples.push(sample * 1000);
    }
  }
  return Object.fromEntries(
    names.map((n) => [
      n,
      {
        ops: figure(per[n].ops),
        p50: figure(per[n].p50),
        p99: figure(per[n].p99),
        pooled: pooled(per[n].samples),
        rounds: per[n],
      },
    ]),
  );
}

/** p50 and p99 over every sample of every round, and the sample count. */
function pooled(samples) {
  return { p50: percentile(samples, 0.5), p99: percentile(samples, 0.99), count: samples.length };
}

/** The median over rounds of `a[metric] / b[metric]`, each ratio taken within one round. */
export function ratioFigure(a, b, metric) {
  return figure(a.rounds[metric].map((value, i) => value / b.rounds[metric][i]));
}

export async function run({ short }) {
  const root = makeScratch('hit');
  try {
    const { contenders, refreshMemo } = await prepareHitContenders(root);
    const settings = short
      ? { rounds: 1, timeMs: 30, iterations: 50, warmupMs: 10 }
      : { rounds: 60, timeMs: 60, iterations: 100, warmupMs: 5 };
    const results = await benchLatency(contenders, { ...settings, beforeRound: refreshMemo });
    const names = Object.keys(contenders);
    const pick = (metric) => Object.fromEntries(names.map((n) => [n, results[n][metric]]));
    const { ours, floor } = results;
    const p50Ratio = ratioFigure(ours, floor, 'p50');
    const unmemoizedPeers = ['cacache memo off', 'naive stat+meta'];
    const peerRatios = unmemoizedPeers.map((n) => ({ name: n, ratio: ratioFigure(ours, results[n], 'p50') }));
    return {
      id: 'hit',
      title: 'Hit path: getOrFetch on a fresh entry',
      contenders: names,
      rows: [
        {
          metric: 'ops/s',
          unit: 'ops/s',
          values: pick('ops'),
          ratio: { ...ratioFigure(ours, floor, 'ops'), label: 'of floor' },
        },
        {
          metric: 'p50 latency',
          unit: 'µs',
          values: pick('p50'),
          ratio: { ...p50Ratio, label: 'of floor' },
          target: { name: '<= 1.25x floor', pass: p50Ratio.value <= 1.25 },
        },
        {
          metric: 'p99 latency',
          unit: 'µs',
          values: pick('p99'),
          ratio: { ...ratioFigure(ours, floor, 'p99'), label: 'of floor' },
        },
      ],
      targets: [
        {
          name: 'hit p50 within 1.25x of the floor',
          pass: p50Ratio.value <= 1.25,
          measured: formatRatio(p50Ratio),
        },
        {
          name: 'hit faster than every peer without memoization (p50)',
          pass: peerRatios.every(({ ratio }) => ratio.value < 1),
          measured: peerRatios.map(({ name, ratio }) => `${formatRatio(ratio)} of ${name}`).join(', '),
        },
      ],
      notes: [
        `${settings.rounds} round(s) of tinybench (${settings.timeMs} ms and at least ${settings.iterations} iterations per contender per round, after a warmup), order rotated each round. Cells: median over rounds [min–max]; ratios are taken within each round, then the median over rounds.`,
        'floor: `lstat(payload)` and `readFile`+`JSON.parse(manifest)` in parallel, no validation. naive: `stat(payload)` then `readFile`+`JSON.parse` of a metadata file, one after the other. cacache `get.info` reads its index bucket only (it does not check that the content file exists); with memoization on it answers from memory.',
      ],
    };
  } finally {
    removeScratch(root);
  }
}
