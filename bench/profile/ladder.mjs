// The many-writers row taken apart (docs/benchmarks.md section 7): 8 processes each store 250 distinct
// 64 KiB keys into one directory, first as the floor does, then adding one part of our commit protocol at a
// time by hand (no library code: bare fs.promises calls), then the library itself. Each rung prints its
// aggregate MB/s and its ratio to the floor measured in the same round; rungs alternate within a round.
// node bench/profile/ladder.mjs [rounds] [keysPerProcess]
//   floor     tmp file (O_EXCL, flushed) + rename + directory fsync
//   manifest  + a 180-byte manifest written the same way
//   lock      + a lock directory with an owner file, released by renaming it aside, unlinking, rmdir
//   checks    + the other calls a write of ours makes: the entry looked up before and under the lock, the
//             sublayer lstat'ed, the owner file's time set, the payload reopened after the rename, the
//             owner file read back before the release
//   ours      getOrFetch with a Buffer body, no limits (no eviction)
//   ours-keep getOrFetch with keepN 1,000, as the bench row runs it
import { fork } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distUrl, KiB, makeScratch, median, removeScratch, syncDisks } from '../lib/common.mjs';

const RUNGS = ['floor', 'manifest', 'lock', 'checks', 'ours', 'ours-keep'];
const PROCESSES = 8;
const SIZE_BYTES = 64 * KiB;
const STEP = Object.fromEntries(RUNGS.map((rung, index) => [rung, index]));

async function handWritten(rung, dir) {
  const step = STEP[rung];
  const manifest = Buffer.alloc(180, 0x41);
  const absent = (file) => fsp.lstat(file).catch(() => undefined);
  const atomic = async (target, bytes) => {
    const tmp = `${target}.tmp-${process.pid}`;
    await fsp.writeFile(tmp, bytes, { flag: 'wx', flush: true });
    await fsp.rename(tmp, target);
  };
  const withHandle = async (file, use) => {
    const handle = await fsp.open(file, 'r');
    try {
      await use(handle);
    } finally {
      await handle.close();
    }
  };
  return async (key, bytes) => {
    const target = path.join(dir, key);
    const lock = `${target}.lock`;
    const owner = path.join(lock, 'owner.json');
    const lookUp = async () => {
      await absent(target);
      await absent(`${target}.manifest.json`);
    };
    if (step >= STEP.checks) await Promise.all([lookUp(), fsp.lstat(dir), fsp.lstat(dir)]);
    if (step >= STEP.lock) {
      await fsp.mkdir(lock);
      await fsp.writeFile(owner, manifest, { flag: 'wx' });
    }
    if (step >= STEP.checks) {
      await fsp.lstat(lock);
      await fsp.utimes(owner, new Date(), new Date());
      await lookUp();
    }
    await atomic(target, bytes);
    if (step >= STEP.manifest) await atomic(`${target}.manifest.json`, manifest);
    if (step >= STEP.checks) await withHandle(target, (handle) => handle.stat());
    await withHandle(dir, (handle) => handle.sync());
    if (step >= STEP.checks)
      await withHandle(owner, (handle) => handle.read(Buffer.alloc(4 * KiB), 0, 4 * KiB, 0));
    if (step >= STEP.lock) {
      const aside = `${lock}.tmp-${process.pid}`;
      await fsp.rename(lock, aside);
      await fsp.unlink(path.join(aside, 'owner.json'));
      await fsp.rmdir(aside);
    }
  };
}

async function library(rung, dir) {
  const { CacheManager } = await import(distUrl('index.js'));
  const cache = new CacheManager({
    sublayer: 'entries',
    root: dir,
    ttl: Number.POSITIVE_INFINITY,
    keepN: rung === 'ours-keep' ? 1_000 : Number.POSITIVE_INFINITY,
    touchIntervalMs: 0,
    evictionGraceMs: 0,
  });
  return (key, bytes) => cache.getOrFetch(key, () => bytes);
}

async function child() {
  const { rung, dir, writer, count } = JSON.parse(process.argv[3]);
  const store = rung.startsWith('ours') ? await library(rung, dir) : await handWritten(rung, dir);
  const payload = Buffer.alloc(SIZE_BYTES, writer);
  process.send('ready');
  await new Promise((resolve) => process.once('message', resolve));
  for (let index = 0; index < count; index++) await store(`w${writer}-k${index}.bin`, payload);
  process.disconnect();
}

async function rungMBps(rung, root, count) {
  const dir = path.join(root, rung);
  await fsp.mkdir(dir);
  syncDisks();
  const script = fileURLToPath(import.meta.url);
  const config = (writer) => JSON.stringify({ rung, dir, writer, count });
  const children = Array.from({ length: PROCESSES }, (_, writer) => fork(script, ['child', config(writer)]));
  const exited = children.map((c) => new Promise((resolve) => c.once('exit', resolve)));
  await Promise.all(children.map((c) => new Promise((resolve) => c.once('message', resolve))));
  const startedAt = performance.now();
  for (const c of children) c.send('go');
  await Promise.all(exited);
  const seconds = (performance.now() - startedAt) / 1000;
  await fsp.rm(dir, { recursive: true, force: true });
  return (PROCESSES * count * SIZE_BYTES) / 1e6 / seconds;
}

async function main() {
  const rounds = Number(process.argv[2] ?? 3);
  const count = Number(process.argv[3] ?? 250);
  const root = makeScratch('ladder');
  const ratios = Object.fromEntries(RUNGS.map((rung) => [rung, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? RUNGS : [...RUNGS].reverse();
      const mbps = {};
      for (const rung of order) mbps[rung] = await rungMBps(rung, root, count);
      for (const rung of RUNGS) ratios[rung].push(mbps[rung] / mbps.floor);
      console.log(
        `round ${round + 1}: ${RUNGS.map((rung) => `${rung} ${mbps[rung].toFixed(1)}`).join(', ')} MB/s`,
      );
    }
  } finally {
    removeScratch(root);
  }
  for (const rung of RUNGS) {
    const values = ratios[rung];
    console.log(
      `${rung.padEnd(9)} ${median(values).toFixed(2)}x the floor [${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)}]`,
    );
  }
}

if (process.argv[2] === 'child') await child();
else await main();
