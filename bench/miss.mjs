// Row 2, the miss path, streamed: a Node Readable of 64 KiB chunks stored by `getOrFetch`, by hand (the
// floor), by cacache and by write-file-atomic. Each write runs in a fresh child process so that its peak
// RSS growth is its own, and the contenders take turns so that they share the disk's state fairly.
import { rmSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  figure,
  forkChild,
  MiB,
  makeScratch,
  median,
  randomKey,
  removeScratch,
  syncDisks,
} from './lib/common.mjs';
import { formatRatio } from './lib/report.mjs';

const CONTENDERS = ['ours', 'floor', 'cacache', 'write-file-atomic'];
const RSS_LIMIT_BYTES = 64 * MiB;

async function writeOnce(contender, sizeBytes, dir) {
  const config = { contender, sizeBytes, dir, key: randomKey('miss') };
  const { next, exited } = forkChild('miss-writer.mjs', [JSON.stringify(config)]);
  const result = await next('result');
  await exited;
  const storedBytes = statSync(result.storedPath).size;
  if (storedBytes !== sizeBytes)
    throw new Error(`${contender} stored ${storedBytes} bytes, not ${sizeBytes}`);
  return result;
}

export async function run({ short }) {
  const plan = short
    ? [
        { sizeBytes: 1 * MiB, iterations: 1 },
        { sizeBytes: 2 * MiB, iterations: 1 },
        { sizeBytes: 4 * MiB, iterations: 1 },
      ]
    : [
        { sizeBytes: 1 * MiB, iterations: 12 },
        { sizeBytes: 64 * MiB, iterations: 6 },
        { sizeBytes: 512 * MiB, iterations: 3 },
      ];
  const root = makeScratch('miss');
  const rows = [];
  const targets = [];
  const notes = [];
  try {
    for (const { sizeBytes, iterations } of plan) {
      const label = `${sizeBytes / MiB} MiB`;
      const mbps = Object.fromEntries(CONTENDERS.map((c) => [c, []]));
      const rss = Object.fromEntries(CONTENDERS.map((c) => [c, []]));
      let rssMethod;
      for (let i = 0; i < iterations; i++) {
        // Rotate who goes first: the disk's state (journal, writeback) then favours no one.
        const order = CONTENDERS.map((_, j) => CONTENDERS[(i + j) % CONTENDERS.length]);
        const record = (contender, result) => {
          mbps[contender].push(sizeBytes / 1e6 / (result.elapsedMs / 1000));
          rss[contender].push(result.peakRssGrowthBytes / MiB);
          rssMethod = result.rssMethod;
        };
        if (short) {
          // Short mode only keeps the rows working: all contenders at once, figures meaningless.
          const results = await Promise.all(order.map((c) => writeOnce(c, sizeBytes, path.join(root, c))));
          for (const [j, c] of order.entries()) record(c, results[j]);
          continue;
        }
        for (const contender of order) {
          const dir = path.join(root, contender);
          rmSync(dir, { recursive: true, force: true });
          syncDisks();
          record(contender, await writeOnce(contender, sizeBytes, dir));
        }
      }
      rmSync(root, { recursive: true, force: true });
      const throughputRatio = figure(mbps.ours.map((v, i) => v / mbps.floor[i]));
      const worstRss = Math.max(...rss.ours);
      rows.push({
        metric: `${label}: throughput`,
        unit: 'MB/s',
        values: Object.fromEntries(CONTENDERS.map((c) => [c, figure(mbps[c])])),
        ratio: { ...throughputRatio, label: 'of floor' },
        target: { name: '>= 0.9x floor', pass: throughputRatio.value >= 0.9 },
      });
      const isLargest = sizeBytes === plan.at(-1).sizeBytes;
      rows.push({
        metric: `${label}: peak RSS growth`,
        unit: 'MiB',
        values: Object.fromEntries(CONTENDERS.map((c) => [c, figure(rss[c])])),
        ratio: { ...figure([median(rss.ours) / median(rss.floor)]), label: 'of floor' },
        ...(isLargest ? { target: { name: 'worst < 64 MiB', pass: worstRss * MiB < RSS_LIMIT_BYTES } } : {}),
      });
      targets.push({
        name: `streamed miss ${label}: MB/s >= 0.9x the floor`,
        pass: throughputRatio.value >= 0.9,
        measured: formatRatio(throughputRatio),
      });
      if (isLargest) {
        targets.push({
          name: `streamed miss ${label}: peak RSS growth < 64 MiB`,
          pass: worstRss * MiB < RSS_LIMIT_BYTES,
          measured: `${worstRss.toFixed(1)} MiB (worst of ${iterations})`,
        });
      }
      notes.push(`${label}: ${iterations} write(s) per contender; peak RSS measured by ${rssMethod}.`);
    }
  } finally {
    removeScratch(root);
  }
  notes.push(
    'Each write: a fresh child process, a tiny warm-up write, a full GC, then the measured write of a new key from a Readable of fresh 64 KiB chunks (the same bytes for everyone). MB/s = 10^6 bytes/s from the first chunk to the stored file. Cells: median [min–max] over writes; the throughput ratio is taken per iteration (contenders back to back), then the median.',
    'ours: getOrFetch (lock, stream + sha256, fsync, rename, manifest written atomically, directory fsync, eviction scan). floor: createWriteStream with flush (fsync) + rename + directory fsync, no hash, no manifest. cacache: put.stream (hashes sha512, never fsyncs). write-file-atomic: buffers the whole payload, then writes it (fsync, rename) and a small metadata file; no directory fsync.',
    'Peak RSS growth includes the chunks already written but not yet collected: the floor shows what the source alone costs.',
  );
  return {
    id: 'miss',
    title: 'Miss path, streamed',
    contenders: CONTENDERS,
    rows,
    targets,
    notes,
  };
}
