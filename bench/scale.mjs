// Row 5, scale: a sublayer holding 10,000 entries against one holding 10. Hit latency, a write that
// evicts one entry (keepN = the entry count), list() and prune(), with bare file-system work (and
// cacache.ls for list) beside them.
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import cacache from 'cacache';
import { benchLatency, ratioFigure } from './hit.mjs';
import {
  collectGarbage,
  currentRssBytes,
  distUrl,
  figure,
  KiB,
  MiB,
  makeScratch,
  nowNs,
  nsToMs,
  peakRssBytes,
  removeScratch,
  resetPeakRss,
} from './lib/common.mjs';
import { formatRatio } from './lib/report.mjs';

const { CacheManager } = await import(distUrl('index.js'));
const { backgroundSweep } = await import(distUrl('cache-manager.js'));

const ENTRY_BYTES = 1 * KiB;
const TTL_MS = 7 * 24 * 3600_000;
const HIT_KEYS = 100;

export const keyOf = (i) => `entry-${String(i).padStart(6, '0')}.bin`;

async function forEachLimited(items, limit, task) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await task(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * Writes `count` committed entries straight into `dir`, in the format commitEntry produces (payload +
 * `<key>.manifest.json`), much faster than `count` getOrFetch calls. Entry 0 is the least recently used:
 * last-used times (payload mtimes) run from two hours ago upwards, one second apart, all outside the
 * in-use window so that any of them may be evicted.
 */
export async function populate(dir, count) {
  await fsp.mkdir(dir, { recursive: true });
  const payload = Buffer.alloc(ENTRY_BYTES, 3);
  const sha256 = createHash('sha256').update(payload).digest('hex');
  const nowMs = Date.now();
  const createdAt = new Date(nowMs - 3600_000).toISOString();
  const indexes = Array.from({ length: count }, (_, i) => i);
  await forEachLimited(indexes, 32, async (i) => {
    const key = keyOf(i);
    const payloadPath = path.join(dir, key);
    const manifest = { schema_version: 1, key, created_at: createdAt, size_bytes: ENTRY_BYTES, sha256 };
    await fsp.writeFile(payloadPath, payload);
    await fsp.writeFile(`${payloadPath}.manifest.json`, `${JSON.stringify(manifest)}\n`);
    const lastUsed = new Date(nowMs - 2 * 3600_000 + i * 1000);
    await fsp.utimes(payloadPath, lastUsed, lastUsed);
  });
}

/** What list() has to do at the least: readdir, then lstat each payload and read + parse its manifest. */
async function bareList(dir) {
  const names = await fsp.readdir(dir);
  const entries = [];
  await forEachLimited(
    names.filter((n) => !n.endsWith('.manifest.json')),
    64,
    async (name) => {
      const payloadPath = path.join(dir, name);
      const [stats, manifest] = await Promise.all([
        fsp.lstat(payloadPath),
        fsp.readFile(`${payloadPath}.manifest.json`, 'utf8').then(JSON.parse),
      ]);
      if (stats.size === manifest.size_bytes) entries.push({ key: name, lastUsedAtMs: stats.mtimeMs });
    },
  );
  return entries.sort((a, b) => b.lastUsedAtMs - a.lastUsedAtMs);
}

/** Times `fn` `count` times; also the peak RSS growth over all of them (VmHWM, Linux only). */
async function timeEach(count, fn) {
  const times = [];
  collectGarbage();
  const exact = resetPeakRss();
  const baseline = currentRssBytes();
  for (let i = 0; i < count; i++) {
    const started = nowNs();
    await fn(i);
    times.push(nsToMs(nowNs() - started));
  }
  const peak = exact ? peakRssBytes() : undefined;
  // VmHWM lags VmRSS by a few pages: a tiny negative growth is zero.
  return { times, rssGrowthMiB: peak === undefined ? Number.NaN : Math.max(0, peak - baseline) / MiB };
}

/** Alternates `a` and `b` (a, b, b, a, a, b, ...) `count` times each; per-pair ratios a/b. */
async function alternate(count, a, b) {
  const ta = [];
  const tb = [];
  for (let i = 0; i < count; i++) {
    const first = i % 2 === 0 ? [a, ta] : [b, tb];
    const second = i % 2 === 0 ? [b, tb] : [a, ta];
    for (const [fn, times] of [first, second]) {
      const started = nowNs();
      await fn(i);
      times.push(nsToMs(nowNs() - started));
    }
  }
  return { a: ta, b: tb, ratio: figure(ta.map((t, i) => t / tb[i])) };
}

export async function run({ short }) {
  const bigCount = short ? 200 : 10_000;
  const smallCount = 10;
  const bigLabel = `ours, ${bigCount.toLocaleString('en-US')} entries`;
  const smallLabel = `ours, ${smallCount} entries`;
  const bareLabel = `bare fs, ${bigCount.toLocaleString('en-US')}`;
  const cacacheLabel = `cacache, ${bigCount.toLocaleString('en-US')}`;
  const root = makeScratch('scale');
  const notes = [];
  try {
    const populateStart = performance.now();
    await populate(path.join(root, 'big'), bigCount);
    await populate(path.join(root, 'small-hit'), smallCount);
    await populate(path.join(root, 'small-evict'), smallCount);
    const populateSeconds = (performance.now() - populateStart) / 1000;
    const cacacheDir = path.join(root, 'cacache');
    const cacacheStart = performance.now();
    await forEachLimited(
      Array.from({ length: bigCount }, (_, i) => i),
      16,
      (i) => cacache.put(cacacheDir, keyOf(i), Buffer.alloc(ENTRY_BYTES, 3)),
    );
    const cacacheSeconds = (performance.now() - cacacheStart) / 1000;
    notes.push(
      `Setup: ${bigCount.toLocaleString('en-US')} entries of ${ENTRY_BYTES / KiB} KiB written directly in the manifest format in ${populateSeconds.toFixed(1)} s; the same through cacache.put in ${cacacheSeconds.toFixed(1)} s.`,
    );

    const options = (sublayer, keepN) => ({ sublayer, keepN, ttl: TTL_MS, root });
    const big = new CacheManager(options('big', bigCount));
    const smallHit = new CacheManager(options('small-hit', smallCount));
    // Writers with no in-use window: in the 10-entry sublayer the writes themselves soon become the least
    // recently used entries, and the default window (70 s) would shield them all from eviction.
    const writerOptions = (sublayer, keepN) => ({
      ...options(sublayer, keepN),
      touchIntervalMs: 0,
      evictionGraceMs: 0,
    });
    const bigWriter = new CacheManager(writerOptions('big', bigCount));
    const smallEvict = new CacheManager(writerOptions('small-evict', smallCount));
    for (const manager of [big, smallHit, bigWriter, smallEvict]) {
      await manager.has(keyOf(0));
      await manager.get(keyOf(0)).catch(() => {});
      await manager[backgroundSweep];
    }

    // Hits: cycle through the most recently used keys of each sublayer (their first hit records the use).
    const refuse = () => {
      throw new Error('scale benchmark: a hit fetched');
    };
    const bigKeys = Array.from({ length: Math.min(HIT_KEYS, bigCount) }, (_, i) => keyOf(bigCount - 1 - i));
    const smallKeys = Array.from({ length: smallCount }, (_, i) => keyOf(i));
    // Record each key's use once now, so that no measured hit pays the (once a minute) mtime update.
    for (const key of bigKeys) await big.getOrFetch(key, refuse);
    for (const key of smallKeys) await smallHit.getOrFetch(key, refuse);
    let bigNext = 0;
    let smallNext = 0;
    const hits = await benchLatency(
      {
        [bigLabel]: () => big.getOrFetch(bigKeys[bigNext++ % bigKeys.length], refuse),
        [smallLabel]: () => smallHit.getOrFetch(smallKeys[smallNext++ % smallKeys.length], refuse),
      },
      short
        ? { rounds: 1, timeMs: 20, iterations: 30, warmupMs: 5 }
        : { rounds: 30, timeMs: 100, iterations: 100, warmupMs: 10 },
    );
    const hitRatio = ratioFigure(hits[bigLabel], hits[smallLabel], 'p50');

    // Writes into a full sublayer: each new key puts it over keepN, so least recently used entries go (one
    // per write, or, with a low-water mark, a batch on one write and none on the next ones).
    const payload = Buffer.alloc(ENTRY_BYTES, 9);
    const evictionsOf = (manager) => manager.stats?.().evictions;
    const evictedPerWrite = { big: [], small: [] };
    const writeCounting = (manager, perWrite) => async (i) => {
      const before = evictionsOf(manager);
      await manager.getOrFetch(`new-${i}.bin`, () => payload);
      perWrite.push(before === undefined ? Number.NaN : evictionsOf(manager) - before);
    };
    const writes = await alternate(
      short ? 2 : 40,
      writeCounting(bigWriter, evictedPerWrite.big),
      writeCounting(smallEvict, evictedPerWrite.small),
    );
    const countPayloads = async (sublayer) =>
      (await fsp.readdir(path.join(root, sublayer))).filter((n) => n.endsWith('.bin')).length;
    const bigAfter = await countPayloads('big');
    if (bigAfter > bigCount || bigAfter < bigCount * 0.9)
      throw new Error(`scale: ${bigAfter} entries after the writes, keepN ${bigCount}`);
    if ((await countPayloads('small-evict')) > smallCount)
      throw new Error('scale: small sublayer did not evict');
    const slowestIndex = writes.a.indexOf(Math.max(...writes.a));
    const evictedTotal = evictedPerWrite.big.reduce((a, b) => a + b, 0);
    const evictingWrites = evictedPerWrite.big.filter((n) => n > 0).length;

    // list() and prune() (which finds nothing to remove: a steady-state janitor pass).
    const listRuns = short ? 1 : 5;
    const listBig = await timeEach(listRuns, async () => {
      const entries = await big.list();
      if (entries.length !== bigAfter)
        throw new Error(`list() returned ${entries.length} entries, not ${bigAfter}`);
    });
    const listSmall = await timeEach(listRuns, () => smallHit.list());
    const listBare = await timeEach(listRuns, () => bareList(path.join(root, 'big')));
    const listCacache = await timeEach(listRuns, async () => {
      const entries = await cacache.ls(cacacheDir);
      if (Object.keys(entries).length !== bigCount) throw new Error('cacache.ls lost entries');
    });
    const pruneBig = await timeEach(listRuns, async () => {
      const report = await big.prune();
      if (report.removed.length !== 0) throw new Error(`prune() removed ${report.removed.length} entries`);
    });
    const pruneSmall = await timeEach(listRuns, () => smallHit.prune());

    const f = (values) => figure(values);
    const listRatio = f(listBig.times.map((t, i) => t / listBare.times[i]));
    const pruneRatio = f(pruneBig.times.map((t, i) => t / listBare.times[i]));
    const slowestMs = writes.a[slowestIndex];
    const contenders = [bigLabel, smallLabel, bareLabel, cacacheLabel];
    notes.push(
      `hit: ${short ? 1 : 30} round(s) of tinybench, cycling over the ${bigKeys.length} (resp. ${smallKeys.length}) most recently used keys; ratio ${bigCount.toLocaleString('en-US')} vs ${smallCount} entries per round, median.`,
      `writes into a full sublayer: a new ${ENTRY_BYTES / KiB} KiB key with keepN = the entry count, so the sublayer is over keepN and least recently used entries go (writers with touchIntervalMs = evictionGraceMs = 0, so that the 10-entry sublayer can evict its own recent writes); ${writes.a.length} writes each, alternating the two sublayers. ${Number.isNaN(evictedTotal) ? 'Evictions per write unknown (no stats() in this build).' : `In the ${bigCount.toLocaleString('en-US')}-entry sublayer ${evictingWrites} of ${writes.a.length} writes evicted (${evictedTotal} entries in all); the slowest write evicted ${evictedPerWrite.big[slowestIndex]}.`}`,
      `list / prune: ${listRuns} call(s) each; prune finds nothing to remove (every entry fresh, under keepN). bare fs: readdir, then lstat + readFile + JSON.parse per entry, 64 at a time (what list() needs at the least). Peak RSS growth: the kernel's high-water mark over all calls, after a full GC.`,
    );
    return {
      id: 'scale',
      title: `Scale: a sublayer of ${bigCount.toLocaleString('en-US')} entries`,
      contenders,
      rows: [
        {
          metric: 'hit p50',
          unit: 'µs',
          values: { [bigLabel]: hits[bigLabel].p50, [smallLabel]: hits[smallLabel].p50 },
          ratio: { ...hitRatio, label: `of ${smallCount} entries` },
          target: { name: '<= 1.25x', pass: hitRatio.value <= 1.25 },
        },
        {
          metric: 'hit p99',
          unit: 'µs',
          values: { [bigLabel]: hits[bigLabel].p99, [smallLabel]: hits[smallLabel].p99 },
          ratio: {
            ...ratioFigure(hits[bigLabel], hits[smallLabel], 'p99'),
            label: `of ${smallCount} entries`,
          },
        },
        {
          metric: 'write into a full sublayer, median',
          unit: 'ms',
          values: { [bigLabel]: f(writes.a), [smallLabel]: f(writes.b) },
          ratio: { ...writes.ratio, label: `of ${smallCount} entries` },
        },
        {
          metric: 'slowest write (it evicts)',
          unit: 'ms',
          values: { [bigLabel]: f([slowestMs]), [smallLabel]: f([Math.max(...writes.b)]) },
          ratio: { ...f([slowestMs / Math.max(...writes.b)]), label: `of ${smallCount} entries` },
          target: { name: '< 100 ms', pass: slowestMs < 100 },
        },
        {
          metric: 'list()',
          unit: 'ms',
          values: {
            [bigLabel]: f(listBig.times),
            [smallLabel]: f(listSmall.times),
            [bareLabel]: f(listBare.times),
            [cacacheLabel]: f(listCacache.times),
          },
          ratio: { ...listRatio, label: 'of bare fs' },
        },
        {
          metric: 'list() peak RSS growth',
          unit: 'MiB',
          values: {
            [bigLabel]: f([listBig.rssGrowthMiB]),
            [smallLabel]: f([listSmall.rssGrowthMiB]),
            [bareLabel]: f([listBare.rssGrowthMiB]),
            [cacacheLabel]: f([listCacache.rssGrowthMiB]),
          },
          ratio: {
            ...f([listBig.rssGrowthMiB / Math.max(listBare.rssGrowthMiB, 1)]),
            label: 'of bare fs (min 1 MiB)',
          },
        },
        {
          metric: 'prune()',
          unit: 'ms',
          values: {
            [bigLabel]: f(pruneBig.times),
            [smallLabel]: f(pruneSmall.times),
            [bareLabel]: f(listBare.times),
          },
          ratio: { ...pruneRatio, label: 'of bare fs' },
        },
      ],
      targets: [
        {
          name: `${bigCount.toLocaleString('en-US')} entries: hit p50 within 1.25x of the ${smallCount}-entry hit`,
          pass: hitRatio.value <= 1.25,
          measured: formatRatio(hitRatio),
        },
        {
          name: `${bigCount.toLocaleString('en-US')} entries: an evicting write < 100 ms (the slowest of ${writes.a.length})`,
          pass: slowestMs < 100,
          measured: `${slowestMs.toFixed(1)} ms (median write ${figure(writes.a).value.toFixed(1)} ms)`,
        },
      ],
      notes,
    };
  } finally {
    removeScratch(root);
  }
}
