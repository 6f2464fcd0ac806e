import { spawnSync } from 'node:child_process';
import diagnosticsChannel from 'node:diagnostics_channel';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backgroundEviction } from '../src/cache-manager.js';
import { BulkPayloadCorruptError, CacheManager, type CacheManagerOptions } from '../src/index.js';
import { tryLock, waitForLock } from '../src/soft-lock.js';
import { makeTempDir, manualClock, removeTempDirs } from './helpers.js';

let root: string;
let clock: ReturnType<typeof manualClock>;
beforeEach(async () => {
  root = await makeTempDir();
  clock = manualClock();
});
afterEach(removeTempDirs);

const cacheWith = (options: Partial<CacheManagerOptions> = {}) =>
  new CacheManager({ sublayer: 'obs', ttl: 1_000, root, now: clock.now, ...options });

describe('stats()', () => {
  it('counts hits, misses, fetches, bytes, evictions, stale answers and errors by code', async () => {
    const cache = cacheWith({ keepN: 1, touchIntervalMs: 0, evictionGraceMs: 0 });
    await cache.getOrFetch('a', () => 'aaaa');
    await cache.getOrFetch('a', () => 'unused');
    clock.advance(2_000);
    await cache.getOrFetch('b', () => 'bb');
    await cache[backgroundEviction];
    await expect(cache.getOrFetch('c', () => ({ body: 'x', expectedSize: 9 }))).rejects.toBeInstanceOf(
      BulkPayloadCorruptError,
    );
    clock.advance(2_000);
    const stale = await cache.getOrFetch('b', () => Promise.reject(new Error('down')), {
      staleIfError: true,
    });
    expect(path.basename(stale)).toBe('b');
    expect(cache.stats()).toEqual({
      hits: 2,
      misses: 4,
      fetches: 4,
      bytesWritten: 6,
      evictions: 1,
      staleServed: 1,
      staleServedOffline: 0,
      lockWaits: { count: 0, totalMs: 0 },
      errors: { ERR_PAYLOAD_CORRUPT: 1 },
    });
  });

  it('returns a snapshot, not a live object', async () => {
    const cache = cacheWith();
    const before = cache.stats();
    await cache.getOrFetch('a', () => 'x');
    expect(before.misses).toBe(0);
    expect(cache.stats().misses).toBe(1);
  });

  it('counts a lock wait with its duration', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('warm', () => 'x');
    const held = await tryLock(path.join(root, 'obs', 'k.lock'), 10_000);
    setTimeout(() => void held?.release(), 100);
    await cache.getOrFetch('k', () => 'v');
    const { lockWaits } = cache.stats();
    expect(lockWaits.count).toBe(1);
    expect(lockWaits.totalMs).toBeGreaterThanOrEqual(80);
  });

  it('publishes payload-cache:lock:wait with waitedMs only when another holder made it wait', async () => {
    const cache = cacheWith();
    await cache.getOrFetch('warm', () => 'x');
    const messages: Record<string, unknown>[] = [];
    const listener = (message: unknown) => messages.push(message as Record<string, unknown>);
    diagnosticsChannel.subscribe('payload-cache:lock:wait', listener);
    try {
      await cache.getOrFetch('free', () => 'v');
      expect(messages).toEqual([]);
      const held = await tryLock(path.join(root, 'obs', 'k.lock'), 10_000);
      setTimeout(() => void held?.release(), 100);
      await cache.getOrFetch('k', () => 'v');
      expect(messages).toEqual([{ sublayer: 'obs', key: 'k', waitedMs: expect.any(Number) }]);
      expect(messages[0]?.waitedMs).toBeGreaterThanOrEqual(80);
    } finally {
      diagnosticsChannel.unsubscribe('payload-cache:lock:wait', listener);
    }
  });
});

describe('diagnostics channels', () => {
  it('publishes miss, fetch:start, fetch:end, hit, evict and stale with documented payloads', async () => {
    const seen: [string, Record<string, unknown>][] = [];
    const names = ['hit', 'miss', 'fetch:start', 'fetch:end', 'evict', 'stale'];
    const listeners = names.map((name) => {
      const listener = (message: unknown) => seen.push([name, message as Record<string, unknown>]);
      diagnosticsChannel.subscribe(`payload-cache:${name}`, listener);
      return () => diagnosticsChannel.unsubscribe(`payload-cache:${name}`, listener);
    });
    try {
      const cache = cacheWith({ keepN: 1, touchIntervalMs: 0, evictionGraceMs: 0 });
      await cache.getOrFetch('a', () => 'aaa');
      await cache.get('a');
      clock.advance(2_000);
      await cache.getOrFetch('b', () => 'b');
      await cache[backgroundEviction];
      clock.advance(2_000);
      await cache.getOrFetch('b', () => Promise.reject(new Error('down')), { staleIfError: true });
    } finally {
      for (const unsubscribe of listeners) unsubscribe();
    }
    const summary = seen.map(([name, message]) => `${name}:${message.key}`);
    expect(summary).toEqual([
      'miss:a',
      'fetch:start:a',
      'fetch:end:a',
      'hit:a',
      'miss:b',
      'fetch:start:b',
      'fetch:end:b',
      'evict:a',
      'miss:b',
      'fetch:start:b',
      'fetch:end:b',
      'stale:b',
      'hit:b',
    ]);
    const byName = (name: string) => seen.filter(([n]) => n === name).map(([, message]) => message);
    expect(byName('miss')[0]).toEqual({ sublayer: 'obs', key: 'a', reason: 'absent' });
    expect(byName('miss')[2]).toMatchObject({ key: 'b', reason: 'expired' });
    expect(byName('fetch:start')[2]).toMatchObject({ key: 'b', conditional: true });
    expect(byName('fetch:end')[0]).toMatchObject({ key: 'a', outcome: 'written', sizeBytes: 3 });
    expect(byName('fetch:end')[2]).toMatchObject({ key: 'b', outcome: 'failed' });
    expect(byName('evict')[0]).toMatchObject({
      key: 'a',
      reason: 'evicted',
      path: path.join(root, 'obs', 'a'),
    });
    expect(byName('stale')[0]).toMatchObject({ key: 'b', path: path.join(root, 'obs', 'b') });
  });
});

describe('NODE_DEBUG=payload-cache', () => {
  it('prints debug lines for cache events in a real process', () => {
    const script = `
      const { CacheManager } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});
      const cache = new CacheManager({ sublayer: 'dbg', ttl: 60000, root: ${JSON.stringify(root)} });
      await cache.getOrFetch('k', () => 'v');
      await cache.getOrFetch('k', () => 'v');
    `;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, NODE_DEBUG: 'payload-cache' },
      encoding: 'utf8',
    });
    expect(run.status).toBe(0);
    expect(run.stderr).toMatch(/PAYLOAD-CACHE \d+: miss dbg\/k/);
    expect(run.stderr).toMatch(/PAYLOAD-CACHE \d+: hit dbg\/k/);
  });

  it('reports a long lock wait with the holder, at every interval', async () => {
    const dir = await makeTempDir();
    const lockPath = path.join(dir, 'k.lock');
    const held = await tryLock(lockPath, 10_000);
    const reports: [number, string | undefined][] = [];
    // Released once the second report is in, not after a guessed time: under Wine a poll can take longer
    // than a report interval.
    const taken = await waitForLock(lockPath, {
      key: 'k',
      staleMs: 10_000,
      timeoutMs: 60_000,
      reportEveryMs: 100,
      onStillWaiting: (waitedMs, holder) => {
        if (reports.push([waitedMs, holder]) === 2) void held?.release();
      },
    });
    await taken.release();
    expect(reports.length).toBeGreaterThanOrEqual(2);
    expect(reports[0]?.[1]).toBe(`${(await import('node:os')).hostname()}/${process.pid}`);
    expect(reports.every(([waitedMs], i) => waitedMs >= (i + 1) * 100)).toBe(true);
  });
});
