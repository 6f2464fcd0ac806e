// Row 8, many writers (issue 16): 8 processes each store 500 distinct 64 KiB keys into one sublayer from
// the same instant; ours with keepN 1,000 (so three entries in four are evicted as the writes go), the
// floor (tmp file + fsync + rename + directory fsync per key) and cacache keep everything. Measured:
// aggregate MB/s from the common start until the last process has exited (ours finishes its eviction
// passes before it exits). Then every stored key is checked: ours must hold exactly keepN entries, each a
// payload with its manifest and the key's exact bytes, and no tmp file; the others every key.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { figure, forkChild, KiB, makeScratch, nowNs, removeScratch, syncDisks } from './lib/common.mjs';
import { payloadFor } from './lib/many-writers.mjs';
import { formatRatio } from './lib/report.mjs';

const CONTENDERS = ['ours', 'floor', 'cacache'];
const PROCESSES = 8;
const KEEP_N = 1_000;
const SIZE_BYTES = 64 * KiB;
const TARGET = 0.6;

async function round(contender, dir, count) {
  const config = (writer) => ({ contender, dir, writer, count, sizeBytes: SIZE_BYTES, keepN: KEEP_N });
  const children = Array.from({ length: PROCESSES }, (_, writer) =>
    forkChild('many-writer.mjs', [JSON.stringify(config(writer))]),
  );
  await Promise.all(children.map((child) => child.next('ready')));
  const atNs = nowNs() + 50_000_000n;
  const exitedAt = children.map((child) => child.exited.then(() => nowNs()));
  for (const child of children) child.send({ atNs: atNs.toString() });
  await Promise.all(children.map((child) => child.next('done')));
  const seconds = Math.max(...(await Promise.all(exitedAt)).map((ns) => Number(ns - atNs) / 1e9));
  return (PROCESSES * count * SIZE_BYTES) / 1e6 / seconds;
}

/** Every stored key has its exact bytes; ours holds exactly keepN entries and nothing half-made. */
async function verify(contender, dir, count) {
  const expected = PROCESSES * count;
  if (contender === 'cacache') {
    const { default: cacache } = await import('cacache');
    const store = path.join(dir, 'cacache');
    const keys = Object.keys(await cacache.ls(store));
    if (keys.length !== expected) throw new Error(`cacache holds ${keys.length} keys, not ${expected}`);
    for (const key of keys) {
      const { data } = await cacache.get(store, key);
      if (!data.equals(payloadFor(key, SIZE_BYTES))) throw new Error(`cacache: ${key} has other bytes`);
    }
    return keys.length;
  }
  const where = contender === 'ours' ? path.join(dir, 'many') : dir;
  const names = await fsp.readdir(where);
  const leftovers = names.filter((name) => name.includes('.tmp'));
  if (leftovers.length > 0) throw new Error(`${contender}: tmp files left: ${leftovers.slice(0, 3)}`);
  const payloads = names.filter((name) => name.endsWith('.bin'));
  const wanted = contender === 'ours' ? Math.min(KEEP_N, expected) : expected;
  if (payloads.length !== wanted)
    throw new Error(`${contender} holds ${payloads.length} keys, not ${wanted}`);
  for (const name of payloads) {
    const bytes = await fsp.readFile(path.join(where, name));
    if (!bytes.equals(payloadFor(name, SIZE_BYTES))) throw new Error(`${contender}: ${name} has other bytes`);
    if (contender === 'ours') {
      const manifest = JSON.parse(await fsp.readFile(path.join(where, `${name}.manifest.json`), 'utf8'));
      if (manifest.size_bytes !== SIZE_BYTES) throw new Error(`ours: ${name}'s manifest is wrong`);
    }
  }
  return payloads.length;
}

export async function run({ short }) {
  const plan = short ? { count: 20, rounds: 1 } : { count: 500, rounds: 3 };
  const root = makeScratch('many');
  const mbps = Object.fromEntries(CONTENDERS.map((contender) => [contender, []]));
  const kept = {};
  try {
    for (let i = 0; i < plan.rounds; i++) {
      const order = i % 2 === 0 ? CONTENDERS : [...CONTENDERS].reverse();
      for (const contender of order) {
        const dir = path.join(root, `${contender}-${i}`);
        await fsp.mkdir(dir, { recursive: true });
        syncDisks();
        mbps[contender].push(await round(contender, dir, plan.count));
        kept[contender] = await verify(contender, dir, plan.count);
        await fsp.rm(dir, { recursive: true, force: true });
      }
    }
  } finally {
    removeScratch(root);
  }
  const ratio = figure(mbps.ours.map((value, i) => value / mbps.floor[i]));
  const written = PROCESSES * plan.count;
  return {
    id: 'many',
    title: 'Many writers',
    contenders: CONTENDERS,
    rows: [
      {
        metric: `${PROCESSES} processes × ${plan.count} keys of 64 KiB, one sublayer: aggregate`,
        unit: 'MB/s',
        values: Object.fromEntries(CONTENDERS.map((contender) => [contender, figure(mbps[contender])])),
        ratio: { ...ratio, label: 'of the floor' },
        target: { name: `>= ${TARGET}x floor`, pass: ratio.value >= TARGET },
      },
    ],
    targets: [
      {
        name: `many writers: aggregate MB/s >= ${TARGET}x the floor, every kept key exact`,
        pass: ratio.value >= TARGET,
        measured: `${formatRatio(ratio)}; ${written} written, ours kept ${kept.ours} (keepN ${KEEP_N}), floor ${kept.floor}, cacache ${kept.cacache}, all verified`,
      },
    ],
    notes: [
      'Aggregate MB/s = all bytes written / time from the common start until the last process has exited. ours: getOrFetch with a Buffer body, keepN 1,000, touchIntervalMs and evictionGraceMs 0; floor: writeFile(tmp, flush) + rename + directory fsync per key; cacache: put (never fsyncs). After each round every stored key is read back and compared; ours must hold exactly keepN entries with manifests and no tmp file.',
      `Median of ${plan.rounds} round(s), contenders alternating.`,
    ],
  };
}
