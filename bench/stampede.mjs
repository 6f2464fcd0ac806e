// Row 3, the stampede: 8 processes ask for one cold key at the same instant; the fetcher takes 300 ms.
// Measured: time from the common start to the moment the LAST process has the path, and fetcher runs.
// The floor is one fetch of 300 ms, served to everyone at once.
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { figure, forkChild, makeScratch, nowNs, nsToMs, removeScratch } from './lib/common.mjs';

const PROCESSES = 8;
const FETCH_MS = 300;
const SLACK_MS = 100;
const PAYLOAD_BYTES = 1024 * 1024;

async function round(root, index) {
  const key = `cold-${index}.bin`;
  const counterFile = path.join(root, `fetches-${index}.txt`);
  writeFileSync(counterFile, '');
  const config = { root, key, counterFile, fetchMs: FETCH_MS, payloadBytes: PAYLOAD_BYTES };
  const children = Array.from({ length: PROCESSES }, () =>
    forkChild('stampede-client.mjs', [JSON.stringify(config)]),
  );
  await Promise.all(children.map((c) => c.next('ready')));
  // Everyone imported and idle: start 50 ms from now, on the clock all processes share.
  const atNs = nowNs() + 50_000_000n;
  for (const c of children) c.send({ type: 'start', atNs: atNs.toString() });
  const done = await Promise.all(children.map((c) => c.next('done')));
  await Promise.all(children.map((c) => c.exited));
  const servedMs = done.map((d) => nsToMs(BigInt(d.doneAtNs) - atNs)).sort((a, b) => a - b);
  const fetches = readFileSync(counterFile, 'utf8').split('\n').filter(Boolean).length;
  for (const d of done) {
    if (statSync(d.path).size !== PAYLOAD_BYTES) throw new Error(`stampede: ${d.path} is not the payload`);
  }
  const fetcher = done.find((d) => d.fetched);
  const fetchStartMs = nsToMs(BigInt(fetcher.fetchStartNs) - atNs);
  const fetcherServedMs = nsToMs(BigInt(fetcher.doneAtNs) - atNs);
  return { firstMs: servedMs[0], lastMs: servedMs.at(-1), fetches, fetchStartMs, fetcherServedMs };
}

export async function run({ short }) {
  const rounds = short ? 1 : 7;
  const root = makeScratch('stampede');
  const results = [];
  try {
    for (let i = 0; i < rounds; i++) results.push(await round(root, i));
  } finally {
    removeScratch(root);
  }
  const last = figure(results.map((r) => r.lastMs));
  const first = figure(results.map((r) => r.firstMs));
  const fetches = figure(results.map((r) => r.fetches));
  const maxFetches = Math.max(...results.map((r) => r.fetches));
  const lastPass = last.value <= FETCH_MS + SLACK_MS;
  return {
    id: 'stampede',
    title: `Stampede: ${PROCESSES} processes, one cold key, a ${FETCH_MS} ms fetcher`,
    contenders: ['ours', 'floor'],
    rows: [
      {
        metric: 'last process served',
        unit: 'ms',
        values: { ours: last, floor: figure([FETCH_MS]) },
        ratio: { ...figure(results.map((r) => r.lastMs / FETCH_MS)), label: 'of floor' },
        target: { name: `<= ${FETCH_MS + SLACK_MS} ms`, pass: lastPass },
      },
      {
        metric: 'first process served',
        unit: 'ms',
        values: { ours: first, floor: figure([FETCH_MS]) },
        ratio: { ...figure(results.map((r) => r.firstMs / FETCH_MS)), label: 'of floor' },
      },
      {
        metric: 'fetcher called',
        unit: 'ms',
        values: { ours: figure(results.map((r) => r.fetchStartMs)), floor: figure([0]) },
      },
      {
        metric: 'fetching process served',
        unit: 'ms',
        values: { ours: figure(results.map((r) => r.fetcherServedMs)), floor: figure([FETCH_MS]) },
      },
      {
        metric: 'fetcher runs',
        unit: '',
        values: { ours: fetches, floor: figure([1]) },
        target: { name: '1 in every round', pass: maxFetches === 1 },
      },
    ],
    targets: [
      {
        name: `stampede: last of ${PROCESSES} processes served within ${FETCH_MS} + ${SLACK_MS} ms (median)`,
        pass: lastPass,
        measured: `${last.value.toFixed(0)} ms [${last.min.toFixed(0)}–${last.max.toFixed(0)}] over ${rounds} round(s)`,
      },
      {
        name: 'stampede: fetcher run once',
        pass: maxFetches === 1,
        measured: `${maxFetches} at most per round`,
      },
    ],
    notes: [
      `${rounds} round(s), each with a new cold key and ${PROCESSES} fresh processes (already started and imported; the clock starts at a common instant on the shared monotonic clock). Payload ${PAYLOAD_BYTES / 1024} KiB. Cells: median [min–max] over rounds. "fetcher called": when the lock winner's fetcher started; "fetching process served": when that process had its path (fetch + write + publish + eviction + release).`,
    ],
  };
}
