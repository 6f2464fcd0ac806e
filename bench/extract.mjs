// Row 6, extraction (issue 15): a zip and a tar of 10,000 files (1 GiB of CSV-like text in 100
// directories) extracted by payload-cache's extraction core and by the system's `unzip -q` and `tar -xf`
// (the floor). Each extraction runs in a fresh process; ours reports its peak RSS growth (VmHWM), the
// floor's peak RSS comes from GNU time when it is installed. Contenders take turns, each into an empty
// directory after a sync, so that they share the disk's state fairly.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  distUrl,
  figure,
  forkChild,
  MiB,
  makeScratch,
  median,
  removeScratch,
  seededRandom,
  syncDisks,
} from './lib/common.mjs';
import { formatRatio } from './lib/report.mjs';

const CONTENDERS = ['ours', 'floor'];
const THROUGHPUT_TARGET = 0.7;
const RSS_LIMIT_BYTES = 64 * MiB;
const GNU_TIME = '/usr/bin/time';
const HIT_RATIO_TARGET = 1.25;

/**
 * The hit of an extraction against the hit of a plain file in the same cache: the issue asks that the
 * first cost what the second costs. Calls alternate so that both see the same machine; each is timed alone.
 */
async function measureHits(root, zipPath, calls) {
  const { CacheManager } = await import(distUrl('index.js'));
  const cache = new CacheManager({ sublayer: 'hits', ttl: Number.POSITIVE_INFINITY, root });
  const refuse = () => {
    throw new Error('the hit benchmark fetched: the entry was not a hit');
  };
  await cache.getOrFetch('plain.bin', () => Buffer.alloc(64 * 1024, 7));
  await cache.getOrExtract('data.zip', () => readFileSync(zipPath));
  const times = { file: [], extraction: [] };
  const time = async (label, call) => {
    const started = performance.now();
    await call();
    times[label].push((performance.now() - started) * 1000);
  };
  for (let i = 0; i < calls; i++) {
    await time('file', () => cache.getOrFetch('plain.bin', refuse));
    await time('extraction', () => cache.getOrExtract('data.zip', refuse));
  }
  return times;
}

/** Writes `fileCount` files of about `fileBytes` each, CSV-like (deflate gets about 3:1), into `dir`. */
function writeTree(dir, fileCount, fileBytes) {
  const random = seededRandom(15);
  for (let index = 0; index < fileCount; index++) {
    const sub = path.join(dir, `part-${String(index % 100).padStart(2, '0')}`);
    if (index < 100) mkdirSync(sub, { recursive: true });
    const lines = [];
    let length = 0;
    while (length < fileBytes) {
      const line = `${index},${Math.floor(random() * 1e6)},${(random() * 1000).toFixed(3)},series-${Math.floor(random() * 50)}\n`;
      lines.push(line);
      length += line.length;
    }
    writeFileSync(path.join(sub, `table-${index}.csv`), lines.join('').slice(0, fileBytes));
  }
}

function extractOurs(archive, dest) {
  const { next, exited } = forkChild('extract-child.mjs', [JSON.stringify({ archive, dest })]);
  return next('result').then(async (result) => {
    await exited;
    return {
      elapsedMs: result.elapsedMs,
      peakRssBytes: result.peakRssGrowthBytes,
      rssMethod: result.rssMethod,
    };
  });
}

/** The system tool, timed from spawn to exit; its peak RSS (whole process) from GNU time when available. */
function extractFloor(format, archive, dest) {
  mkdirSync(dest, { recursive: true });
  const tool = format === 'zip' ? ['unzip', '-q', archive, '-d', dest] : ['tar', '-xf', archive, '-C', dest];
  const withTime = existsSync(GNU_TIME) ? [GNU_TIME, '-f', '%M', ...tool] : tool;
  const started = performance.now();
  const run = spawnSync(withTime[0], withTime.slice(1), { encoding: 'utf8' });
  const elapsedMs = performance.now() - started;
  if (run.status !== 0) throw new Error(`${tool.join(' ')} failed: ${run.stderr}`);
  const peakKiB = existsSync(GNU_TIME) ? Number(run.stderr.trim().split('\n').at(-1)) : Number.NaN;
  return { elapsedMs, peakRssBytes: peakKiB * 1024, rssMethod: 'GNU time (whole process)' };
}

export async function run({ short }) {
  const plan = short
    ? { fileCount: 200, fileBytes: 16 * 1024, iterations: 1, hitCalls: 200 }
    : { fileCount: 10_000, fileBytes: Math.floor((1024 * MiB) / 10_000), iterations: 3, hitCalls: 5_000 };
  const root = makeScratch('extract');
  const rows = [];
  const targets = [];
  const notes = [];
  try {
    const tree = path.join(root, 'tree');
    writeTree(tree, plan.fileCount, plan.fileBytes);
    const archives = { zip: path.join(root, 'data.zip'), tar: path.join(root, 'data.tar') };
    execFileSync('zip', ['-q', '-r', '-6', archives.zip, '.'], { cwd: tree });
    execFileSync('tar', ['-cf', archives.tar, '-C', tree, '.']);
    const hitZip = path.join(root, 'hit.zip');
    execFileSync('zip', ['-q', '-r', hitZip, 'part-00'], { cwd: tree });
    rmSync(tree, { recursive: true, force: true });
    const hits = await measureHits(path.join(root, 'hits'), hitZip, plan.hitCalls);
    const hitRatio = median(hits.extraction) / median(hits.file);
    rows.push({
      metric: 'hit p50: getOrExtract against getOrFetch of a file, same cache',
      unit: 'µs',
      values: { ours: figure(hits.extraction), floor: figure(hits.file) },
      ratio: { value: hitRatio, label: 'of a file hit' },
      target: { name: `<= ${HIT_RATIO_TARGET}x a file hit`, pass: hitRatio <= HIT_RATIO_TARGET },
    });
    targets.push({
      name: `extraction hit p50 <= ${HIT_RATIO_TARGET}x a file hit`,
      pass: hitRatio <= HIT_RATIO_TARGET,
      measured: `${hitRatio.toFixed(2)}x (${median(hits.extraction).toFixed(0)} µs against ${median(hits.file).toFixed(0)} µs, ${plan.hitCalls} calls each)`,
    });
    const contentBytes = plan.fileCount * plan.fileBytes;
    const label = `${plan.fileCount.toLocaleString('en-US')} files, ${Math.round(contentBytes / MiB)} MiB`;
    for (const format of ['zip', 'tar']) {
      const mbps = { ours: [], floor: [] };
      const rss = { ours: [], floor: [] };
      const methods = {};
      for (let i = 0; i < plan.iterations; i++) {
        const order = i % 2 === 0 ? CONTENDERS : [...CONTENDERS].reverse();
        for (const contender of order) {
          const dest = path.join(root, `out-${contender}`);
          rmSync(dest, { recursive: true, force: true });
          syncDisks();
          const result =
            contender === 'ours'
              ? await extractOurs(archives[format], dest)
              : extractFloor(format, archives[format], dest);
          mbps[contender].push(contentBytes / 1e6 / (result.elapsedMs / 1000));
          rss[contender].push(result.peakRssBytes / MiB);
          methods[contender] = result.rssMethod;
          rmSync(dest, { recursive: true, force: true });
        }
      }
      const ratio = figure(mbps.ours.map((value, i) => value / mbps.floor[i]));
      const worstRss = Math.max(...rss.ours);
      const tool = format === 'zip' ? 'unzip -q' : 'tar -xf';
      rows.push({
        metric: `${format} (${label}): throughput`,
        unit: 'MB/s',
        values: { ours: figure(mbps.ours), floor: figure(mbps.floor) },
        ratio: { ...ratio, label: `of ${tool}` },
        target: { name: `>= ${THROUGHPUT_TARGET}x floor`, pass: ratio.value >= THROUGHPUT_TARGET },
      });
      rows.push({
        metric: `${format}: peak RSS`,
        unit: 'MiB',
        values: { ours: figure(rss.ours), floor: figure(rss.floor) },
        target: { name: 'worst < 64 MiB growth', pass: worstRss * MiB < RSS_LIMIT_BYTES },
      });
      targets.push({
        name: `extract ${format}: MB/s >= ${THROUGHPUT_TARGET}x ${tool}`,
        pass: ratio.value >= THROUGHPUT_TARGET,
        measured: formatRatio(ratio),
      });
      targets.push({
        name: `extract ${format}: peak RSS growth < 64 MiB`,
        pass: worstRss * MiB < RSS_LIMIT_BYTES,
        measured: `${worstRss.toFixed(1)} MiB (worst of ${plan.iterations})`,
      });
      notes.push(
        `${format}: archive ${(statSync(archives[format]).size / MiB).toFixed(0)} MiB; RSS: ours ${methods.ours} (growth over the process's baseline), floor ${methods.floor}.`,
      );
    }
  } finally {
    removeScratch(root);
  }
  notes.push(
    'MB/s = 10^6 bytes of extracted content per second. ours: extractArchive (detect the format, vet every entry, inflate, write with O_EXCL|O_NOFOLLOW, sha256 per file, fsync of every file and directory); the floor writes and closes, never fsyncs and hashes nothing (unzip checks CRC-32, as ours does). Cells: median [min–max] over rounds; the ratio is taken per round, then the median.',
    `Median of ${plan.iterations} round(s), contenders alternating first.`,
  );
  return {
    id: 'extract',
    title: 'Extraction',
    contenders: CONTENDERS,
    rows,
    targets,
    notes,
  };
}
