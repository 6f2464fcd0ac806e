// Shared helpers of the benchmark suite: scratch directories, statistics, child processes, peak RSS.
import { fork, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';

export const benchDir = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const repoDir = path.dirname(benchDir);
/**
 * The built library: the suite measures what users import, never the TypeScript sources.
 * PAYLOAD_CACHE_BENCH_DIST points it at another build (an A/B comparison of a patched copy of dist/).
 */
const distDir = process.env.PAYLOAD_CACHE_BENCH_DIST
  ? pathToFileURL(`${path.resolve(process.env.PAYLOAD_CACHE_BENCH_DIST)}/`)
  : new URL('../../dist/', import.meta.url);
export const distUrl = (file = 'index.js') => new URL(file, distDir).href;

export const KiB = 1024;
export const MiB = 1024 * KiB;

/**
 * A fresh scratch directory under os.tmpdir(), so every contender writes to the same file system.
 * Removed by {@link removeScratch} (or at exit, if the run is interrupted).
 */
const scratchDirs = new Set();
export function makeScratch(label) {
  const dir = mkdtempSync(path.join(os.tmpdir(), `payload-cache-bench-${label}-`));
  scratchDirs.add(dir);
  return dir;
}
export function removeScratch(dir) {
  rmSync(dir, { recursive: true, force: true });
  scratchDirs.delete(dir);
}
process.on('exit', () => {
  for (const dir of scratchDirs) rmSync(dir, { recursive: true, force: true });
});

/** Flushes dirty pages system-wide, so one contender's unflushed writes never land on the next one's fsync. */
export function syncDisks() {
  spawnSync('sync');
}

export function median(values) {
  return percentile(values, 0.5);
}

/** Linear interpolation between order statistics (the same rule tinybench uses). */
export function percentile(values, q) {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (sorted.length - 1) * q;
  const low = Math.floor(at);
  const high = Math.ceil(at);
  return sorted[low] + (sorted[high] - sorted[low]) * (at - low);
}

/** A figure measured several times: its median, and the spread the rounds showed. */
export function figure(values) {
  const finite = values.filter(Number.isFinite);
  return { value: median(finite), min: Math.min(...finite), max: Math.max(...finite), n: finite.length };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Nanoseconds on CLOCK_MONOTONIC, which every process on the host shares. */
export const nowNs = () => process.hrtime.bigint();
export const nsToMs = (ns) => Number(ns) / 1e6;

/**
 * Waits until the shared monotonic clock reaches `atNs`: sleeps most of the way, then spins the last
 * milliseconds so that every process starts within a few microseconds of the others.
 */
export async function waitUntil(atNs) {
  const remainingMs = nsToMs(atNs - nowNs());
  if (remainingMs > 3) await sleep(remainingMs - 3);
  while (nowNs() < atNs) {}
}

/** A deterministic pseudo-random generator (mulberry32), so every run uses the same "random" schedule. */
export function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const randomKey = (prefix) => `${prefix}-${randomBytes(6).toString('hex')}`;

/**
 * Peak resident set size, in bytes, since the last {@link resetPeakRss}: the kernel's own high-water mark
 * (VmHWM), exact where sampling would miss short peaks. `undefined` off Linux.
 */
export function peakRssBytes() {
  const match = /VmHWM:\s+(\d+) kB/.exec(readProcStatus());
  return match ? Number(match[1]) * 1024 : undefined;
}
export function currentRssBytes() {
  const match = /VmRSS:\s+(\d+) kB/.exec(readProcStatus());
  return match ? Number(match[1]) * 1024 : process.memoryUsage.rss();
}
/** Resets VmHWM to the current RSS (Linux >= 4.0); `false` where that is not possible. */
export function resetPeakRss() {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}
function readProcStatus() {
  try {
    return readFileSync('/proc/self/status', 'utf8');
  } catch {
    return '';
  }
}

/**
 * Forks `script` (a file in bench/children) with an IPC channel. Returns the child plus helpers to await
 * its next message of a given type and to await its exit.
 */
export function forkChild(script, args = [], options = {}) {
  const child = fork(path.join(benchDir, 'children', script), args, {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    ...options,
  });
  const queue = [];
  const waiters = [];
  child.on('message', (message) => {
    const index = waiters.findIndex((w) => w.type === message.type);
    if (index >= 0) waiters.splice(index, 1)[0].resolve(message);
    else queue.push(message);
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const next = (type) => {
    const index = queue.findIndex((m) => m.type === type);
    if (index >= 0) return Promise.resolve(queue.splice(index, 1)[0]);
    return new Promise((resolve, reject) => {
      waiters.push({ type, resolve });
      exited.then(({ code, signal }) =>
        reject(new Error(`${script} exited (${signal ?? code}) while the parent waited for "${type}"`)),
      );
    });
  };
  return { child, next, exited, send: (message) => child.send(message) };
}

/**
 * Runs `work` and measures this process's peak RSS growth over its RSS just before: the kernel's
 * high-water mark where it can be reset (Linux), else samples every 5 ms. Returns `{ value, elapsedMs,
 * peakRssGrowthBytes, rssMethod }`.
 */
export async function measurePeakRss(work) {
  collectGarbage();
  const exactPeak = resetPeakRss() && peakRssBytes() !== undefined;
  const baseline = currentRssBytes();
  let sampledPeak = baseline;
  const sampler = exactPeak
    ? undefined
    : setInterval(() => {
        sampledPeak = Math.max(sampledPeak, process.memoryUsage.rss());
      }, 5);
  const started = performance.now();
  const value = await work();
  const elapsedMs = performance.now() - started;
  if (sampler) clearInterval(sampler);
  const peak = exactPeak ? peakRssBytes() : Math.max(sampledPeak, process.memoryUsage.rss());
  return {
    value,
    elapsedMs,
    peakRssGrowthBytes: peak - baseline,
    rssMethod: exactPeak ? 'VmHWM' : 'sampled',
  };
}

/** A full garbage collection, without needing `node --expose-gc` (so `npm run bench` can stay plain). */
export function collectGarbage() {
  if (!globalThis.gc) {
    v8.setFlagsFromString('--expose-gc');
    globalThis.gc = vm.runInNewContext('gc');
  }
  globalThis.gc();
}
