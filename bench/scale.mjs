// Row 5, scale: a sublayer holding 10,000 entries against one holding 10. Hit latency, writes into a full
// sublayer (keepN = the entry count, so every write asks for an eviction pass) also at 100,000 entries,
// the background pass itself, list() and prune(), with bare file-system work (and cacache.ls for list)
// beside them.
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
const { backgroundEviction, backgroundSweep } = await import(distUrl('cache-manager.js'));

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

/** Runs every function once per round, `count` rounds, in an order that rotates; the times of each. */
async function rotate(count, fns) {
  const times = fns.map(() => []);
  for (let i = 0; i < count; i++) {
    for (let j = 0; j < fns.length; j++) {
      const index = (i + j) % fns.length;
      const started = nowNs();
      await fns[index](i);
      times[index].push(nsToMs(nowNs() - started));
    }
  }
  return times;
}

export async function run({ short }) {
  const bigCount = short ? 200 : 10_000;
  const hugeCount = short ? 2_000 : 100_000;
  const smallCount = 10;
  const bigLabel = `ours, ${bigCount.toLocaleString('en-US')} entries`;
  const hugeLabel = `ours, ${hugeCount.toLocaleString('en-US')} entries`;
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
    const hugeStart = performance.now();
    await populate(path.join(root, 'huge'), hugeCount);
    const hugeSeconds = (performance.now() - hugeStart) / 1000;
    const cacacheDir = path.join(root, 'cacache');
    const cacacheStart = performance.now();
    await forEachLimited(
      Array.from({ length: bigCount }, (_, i) => i),
      16,
      (i) => cacache.put(cacacheDir, keyOf(i), Buffer.alloc(ENTRY_BYTES, 3)),
    );
    const cacacheSeconds = (performance.now() - cacacheStart) / 1000;
    notes.push(
      `Setup: ${bigCount.toLocaleString('en-US')} entries of ${ENTRY_BYTES / KiB} KiB written directly in the manifest format in ${populateSeconds.toFixed(1)} s (${hugeCount.toLocaleString('en-US')} in ${hugeSeconds.toFixed(1)} s); the same ${bigCount.toLocaleString('en-US')} through cacache.put in ${cacacheSeconds.toFixed(1)} s.`,
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
    const hugeWriter = new CacheManager(writerOptions('huge', hugeCount));
    const smallEvict = new CacheManager(writerOptions('small-evict', smallCount));
    for (const manager of [big, smallHit, bigWriter, hugeWriter, smallEvict]) {
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

    // Writes into a full sublayer: each new key puts it over keepN and asks for an eviction pass, which
    // runs in the background (one per sublayer at a time, the writes meanwhile taken by the next one): the
    // writes are timed back to back, each competing with whatever pass is running. Each large sublayer
    // alternates with the 10-entry one on its own, so that one's passes do not weigh on the other's writes;
    // after each, how long until its passes are done and it holds keepN entries again.
    const payload = Buffer.alloc(ENTRY_BYTES, 9);
    const writeRounds = short ? 2 : 40;
    const writer = (manager, prefix) => (i) => manager.getOrFetch(`${prefix}-${i}.bin`, () => payload);
    const settle = async (manager) => {
      const started = nowNs();
      await manager[backgroundEviction];
      return nsToMs(nowNs() - started);
    };
    const [bigWrites, smallWrites] = await rotate(writeRounds, [
      writer(bigWriter, 'new'),
      writer(smallEvict, 'new'),
    ]);
    const settleMs = { big: await settle(bigWriter) };
    await settle(smallEvict);
    const [hugeWrites, smallBesideHuge] = await rotate(writeRounds, [
      writer(hugeWriter, 'new'),
      writer(smallEvict, 'again'),
    ]);
    settleMs.huge = await settle(hugeWriter);
    // And one pass on its own: one more write, nothing else running, the pass timed from the write's return.
    const lonePass = async (manager) => {
      await manager.getOrFetch('lone.bin', () => payload);
      return settle(manager);
    };
    const passMs = { big: await lonePass(bigWriter), huge: await lonePass(hugeWriter) };
    await settle(smallEvict);
    const countPayloads = async (sublayer) =>
      (await fsp.readdir(path.join(root, sublayer))).filter((n) => n.endsWith('.bin')).length;
    const bigAfter = await countPayloads('big');
    for (const [sublayer, keepN] of [
      ['big', bigCount],
      ['huge', hugeCount],
      ['small-evict', smallCount],
    ]) {
      const after = await countPayloads(sublayer);
      if (after !== keepN)
        throw new Error(`scale: ${after} entries in ${sublayer} once evicted, keepN ${keepN}`);
    }
    const evictionsOf = (manager) => manager.stats().evictions;
    const evictedBig = evictionsOf(bigWriter);
    const evictedHuge = evictionsOf(hugeWriter);
    const slowest = (times) => Math.max(...times);

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
    const contenders = [bigLabel, hugeLabel, smallLabel, bareLabel, cacacheLabel];
    const writeTargets = [
      { count: bigCount, times: bigWrites, limitMs: 50 },
      { count: hugeCount, times: hugeWrites, limitMs: 100 },
    ];
    notes.push(
      `hit: ${short ? 1 : 30} round(s) of tinybench, cycling over the ${bigKeys.length} (resp. ${smallKeys.length}) most recently used keys; ratio ${bigCount.toLocaleString('en-US')} vs ${smallCount} entries per round, median.`,
      `writes into a full sublayer: a new ${ENTRY_BYTES / KiB} KiB key with keepN = the entry count, so every write puts the sublayer over keepN and asks for an eviction pass (writers with touchIntervalMs = evictionGraceMs = 0, so that the 10-entry sublayer can evict its own recent writes); ${writeRounds} writes into each large sublayer, alternating with writes into the 10-entry one (first the ${bigCount.toLocaleString('en-US')}-entry sublayer, then the ${hugeCount.toLocaleString('en-US')}-entry one, so that one's passes do not weigh on the other's writes), back to back while the passes run; the 10-entry column is its writes beside the ${bigCount.toLocaleString('en-US')}-entry sublayer (beside the ${hugeCount.toLocaleString('en-US')}-entry one: median ${figure(smallBesideHuge).value.toFixed(1)} ms, slowest ${Math.max(...smallBesideHuge).toFixed(1)} ms). Evicted in all, for ${writeRounds + 1} writes into each (the last one alone): ${evictedBig} entries (${bigCount.toLocaleString('en-US')}) and ${evictedHuge} (${hugeCount.toLocaleString('en-US')}); every sublayer held exactly keepN entries once its passes were done.`,
      `eviction pass: "until keepN again" is the wait, from the last of the writes, for the passes still due; "one pass" is the pass after one more write with nothing else running, from the write's return to the pass's end (the scan of every payload and one removal).`,
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
          values: { [bigLabel]: f(bigWrites), [hugeLabel]: f(hugeWrites), [smallLabel]: f(smallWrites) },
          ratio: {
            ...f(bigWrites.map((t, i) => t / smallWrites[i])),
            label: `${bigCount.toLocaleString('en-US')} / ${smallCount} entries`,
          },
        },
        {
          metric: 'slowest write',
          unit: 'ms',
          values: {
            [bigLabel]: f([slowest(bigWrites)]),
            [hugeLabel]: f([slowest(hugeWrites)]),
            [smallLabel]: f([slowest(smallWrites)]),
          },
          target: {
            name: writeTargets
              .map(({ count, limitMs }) => `< ${limitMs} ms at ${count.toLocaleString('en-US')}`)
              .join(', '),
            pass: writeTargets.every(({ times, limitMs }) => slowest(times) < limitMs),
          },
        },
        {
          metric: 'eviction pass, one (background)',
          unit: 'ms',
          values: { [bigLabel]: f([passMs.big]), [hugeLabel]: f([passMs.huge]) },
        },
        {
          metric: 'eviction passes, until keepN again after the writes (background)',
          unit: 'ms',
          values: { [bigLabel]: f([settleMs.big]), [hugeLabel]: f([settleMs.huge]) },
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
        ...writeTargets.map(({ count, times, limitMs }) => ({
          name: `${count.toLocaleString('en-US')} entries: a write into a full sublayer < ${limitMs} ms (the slowest of ${times.length})`,
          pass: slowest(times) < limitMs,
          measured: `${slowest(times).toFixed(1)} ms (median ${figure(times).value.toFixed(1)} ms)`,
        })),
      ],
      notes,
    };
  } finally {
    removeScratch(root);
  }
}
