import { promises as fsp } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { backgroundEviction, backgroundSweep } from '../../src/cache-manager.js';
import { CacheManager, NOT_MODIFIED } from '../../src/index.js';
import { makeTempDir, manualClock, patternBytes, removeTempDirs, tmpFilesIn } from '../helpers.js';
import { recordFigures } from './figures.js';

// Scenario 9c, random operation sequences against a model (DESIGN.md sections 5 and 6). fast-check drives
// getOrFetch / get / delete / clear / prune and clock advances (the `now` option, a manual clock) on a real
// cache directory, and a small model written from DESIGN.md predicts every answer: which calls hit and
// which fetch, which bytes each returned path holds, what prune removes and why, and which entries exist
// afterwards. keepN, touchIntervalMs and evictionGraceMs are small so that eviction, the grace window and
// expiry all happen within a few steps. After every step, besides the model's exact prediction:
// - every committed entry holds exactly the bytes of the version the model last fetched for its key;
// - after a write or a prune, the entries exceed keepN only by entries the grace rule protects (used within
//   2 x touchIntervalMs + evictionGraceMs of now), the key just written being one of them;
// - a key the model deleted or cleared is a miss; no tmp file or lock is left behind.

const RUNS = 50;
const MAX_COMMANDS = 50;
const KEYS = ['a', 'b', 'c', 'd', 'e'] as const;
const KEEP_N = 3;
const TTL_MS = 5_000;
const TOUCH_INTERVAL_MS = 100;
const EVICTION_GRACE_MS = 200;
// A hit records its use at most once per touchIntervalMs, so eviction spares twice that plus the grace.
const IN_USE_WINDOW_MS = 2 * TOUCH_INTERVAL_MS + EVICTION_GRACE_MS;

afterEach(removeTempDirs);

const figures = { rounds: 0, hostileInputs: 0, bytesVerified: 0, entriesLost: 0 };
afterAll(() => recordFigures('hostile inputs', figures));

/** Bytes of one version of one key: distinct in content and size, so a mix-up shows. */
function bytesFor(key: string, version: number): Buffer {
  const seed = key.charCodeAt(0) * 1_000 + version;
  return Buffer.concat([Buffer.from(`${key}@${version}\n`), patternBytes(100 + ((seed * 37) % 400), seed)]);
}

interface ModelEntry {
  version: number;
  createdAtMs: number;
  lastUsedAtMs: number;
}

interface Model {
  nowMs: number;
  entries: Map<string, ModelEntry>;
  /** Last version fetched per key (versions only grow, even across delete and clear). */
  versions: Map<string, number>;
}

interface Real {
  cache: CacheManager;
  clock: ReturnType<typeof manualClock>;
  dir: string;
}

const isFresh = (entry: ModelEntry, nowMs: number) => nowMs - entry.createdAtMs < TTL_MS;
const isInUse = (entry: ModelEntry, nowMs: number) => entry.lastUsedAtMs > nowMs - IN_USE_WINDOW_MS;

/** A hit records its use at most once per touchIntervalMs. */
function touch(entry: ModelEntry, nowMs: number): void {
  if (nowMs - entry.lastUsedAtMs >= TOUCH_INTERVAL_MS) entry.lastUsedAtMs = nowMs;
}

/** DESIGN.md section 6: least recently used first (ties by key), never the key just written nor one in use. */
function modelEvict(model: Model, justWritten: string | undefined): string[] {
  const order = [...model.entries].sort(
    ([keyA, a], [keyB, b]) => a.lastUsedAtMs - b.lastUsedAtMs || (keyA < keyB ? -1 : 1),
  );
  const evicted: string[] = [];
  for (const [key, entry] of order) {
    if (model.entries.size <= KEEP_N) break;
    if (key === justWritten || isInUse(entry, model.nowMs)) continue;
    model.entries.delete(key);
    evicted.push(key);
  }
  return evicted;
}

/** Committed entries on disk, judged by name and lstat only (what the evictor counts). */
async function committedOnDisk(dir: string): Promise<Map<string, number>> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  const found = new Map<string, number>();
  for (const key of KEYS) {
    if (!names.includes(key) || !names.includes(`${key}.manifest.json`)) continue;
    const stats = await fsp.lstat(path.join(dir, key));
    if (stats.isFile()) found.set(key, stats.mtimeMs);
  }
  return found;
}

/** The checks that hold after every step; `evictedNow` marks steps that just ran eviction. */
async function checkInvariants(model: Model, real: Real, evictedNow: boolean): Promise<void> {
  figures.hostileInputs += 1;
  const onDisk = await committedOnDisk(real.dir);
  for (const key of model.entries.keys()) if (!onDisk.has(key)) figures.entriesLost += 1;
  expect([...onDisk.keys()].sort(), 'committed entries on disk').toEqual([...model.entries.keys()].sort());
  for (const [key, entry] of model.entries) {
    const bytes = await fsp.readFile(path.join(real.dir, key));
    expect(
      bytes.equals(bytesFor(key, entry.version)),
      `bytes of ${key} (model: version ${entry.version})`,
    ).toBe(true);
    figures.bytesVerified += bytes.length;
  }
  if (evictedNow && onDisk.size > KEEP_N) {
    // mtime is the last-used time; the key just written has mtime == now, so it is counted here too.
    const inUse = [...onDisk.values()].filter((mtimeMs) => mtimeMs > model.nowMs - IN_USE_WINDOW_MS).length;
    expect(onDisk.size, `entries ${onDisk.size} > keepN ${KEEP_N} + ${inUse} in use`).toBeLessThanOrEqual(
      KEEP_N + inUse,
    );
  }
  const listed = await real.cache.list();
  expect(listed.map((entry) => [entry.key, entry.expired]).sort()).toEqual(
    [...model.entries].map(([key, entry]) => [key, !isFresh(entry, model.nowMs)]).sort(),
  );
  for (const info of listed) {
    const entry = model.entries.get(info.key) as ModelEntry;
    // lastUsedAt is a Date made from a float mtime: it may read up to 1 ms early.
    expect(
      Math.abs(info.lastUsedAt.getTime() - entry.lastUsedAtMs),
      `lastUsedAt of ${info.key}`,
    ).toBeLessThanOrEqual(1);
  }
  const names = await fsp.readdir(real.dir).catch(() => [] as string[]);
  expect(await tmpFilesIn(real.dir)).toEqual([]);
  expect(names.filter((name) => name.endsWith('.lock'))).toEqual([]);
}

type Command = fc.AsyncCommand<Model, Real>;

class GetOrFetch implements Command {
  constructor(readonly key: string) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const existing = model.entries.get(this.key);
    const hit = existing !== undefined && isFresh(existing, model.nowMs);
    const fetched: number[] = [];
    const nextVersion = (model.versions.get(this.key) ?? 0) + 1;
    const returned = await real.cache.getOrFetch(this.key, () => {
      fetched.push(nextVersion);
      return bytesFor(this.key, nextVersion);
    });
    // The eviction a write asks for runs after the call returns; the model's step ends when it has.
    await real.cache[backgroundEviction];
    expect(returned).toBe(path.join(real.dir, this.key));
    let evicted: string[] = [];
    if (hit) {
      expect(fetched, `${this.key} was fresh: a hit, no fetch`).toEqual([]);
      touch(existing, model.nowMs);
    } else {
      expect(fetched, `${this.key} was ${existing ? 'expired' : 'absent'}: one fetch`).toEqual([nextVersion]);
      model.versions.set(this.key, nextVersion);
      model.entries.set(this.key, {
        version: nextVersion,
        createdAtMs: model.nowMs,
        lastUsedAtMs: model.nowMs,
      });
      evicted = modelEvict(model, this.key);
    }
    const expected = bytesFor(this.key, (model.entries.get(this.key) as ModelEntry).version);
    const served = await fsp.readFile(returned);
    expect(served.equals(expected), `bytes returned for ${this.key}`).toBe(true);
    figures.bytesVerified += served.length;
    for (const key of evicted) expect(await real.cache.has(key), `${key} was evicted`).toBe(false);
    await checkInvariants(model, real, !hit);
  }
  toString = () => `getOrFetch(${this.key})`;
}

/** A refresh answered NOT_MODIFIED: the entry keeps its bytes and gets a new created_at (a use, too). */
class Renew implements Command {
  constructor(readonly key: string) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const existing = model.entries.get(this.key);
    const nextVersion = (model.versions.get(this.key) ?? 0) + 1;
    const returned = await real.cache.getOrFetch(
      this.key,
      (ctx) => (ctx.previous ? NOT_MODIFIED : bytesFor(this.key, nextVersion)),
      { refresh: true },
    );
    await real.cache[backgroundEviction];
    expect(returned).toBe(path.join(real.dir, this.key));
    if (existing) {
      existing.createdAtMs = model.nowMs;
      existing.lastUsedAtMs = model.nowMs;
    } else {
      model.versions.set(this.key, nextVersion);
      model.entries.set(this.key, {
        version: nextVersion,
        createdAtMs: model.nowMs,
        lastUsedAtMs: model.nowMs,
      });
    }
    const evicted = modelEvict(model, this.key);
    for (const key of evicted) expect(await real.cache.has(key), `${key} was evicted`).toBe(false);
    await checkInvariants(model, real, true);
  }
  toString = () => `renew(${this.key})`;
}

/** A refresh whose only caller aborts while the fetcher answers, the body streams or the validator runs. */
class AbortedRefresh implements Command {
  constructor(
    readonly key: string,
    readonly at: 'fetch' | 'body' | 'validator',
  ) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const controller = new AbortController();
    const bytes = bytesFor(this.key, 999);
    const aborted = () =>
      new Promise<void>((resolve) => controller.signal.addEventListener('abort', () => resolve()));
    const at = this.at;
    const call = real.cache.getOrFetch(
      this.key,
      async () => {
        if (at === 'fetch') {
          controller.abort();
          await aborted();
        }
        return (async function* () {
          yield bytes.subarray(0, 10);
          if (at === 'body') {
            controller.abort();
            await aborted();
          }
          yield bytes.subarray(10);
        })();
      },
      {
        refresh: true,
        signal: controller.signal,
        validator: async () => {
          if (at !== 'validator') return;
          controller.abort();
          await new Promise<never>(() => {});
        },
      },
    );
    await expect(call).rejects.toThrow();
    // Nothing changed: the previous entry (if any) is intact, and no tmp file or lock is left.
    await checkInvariants(model, real, false);
  }
  toString = () => `abortedRefresh(${this.key}, ${this.at})`;
}

/** verify({ fix: true }) on a cache the model says is sound: nothing bad, nothing removed, nothing foreign. */
class VerifyFix implements Command {
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const report = await real.cache.verify({ fix: true });
    expect(report).toEqual({ checked: model.entries.size, bad: [], removed: [], foreign: [] });
    await checkInvariants(model, real, false);
  }
  toString = () => 'verify({ fix: true })';
}

class Get implements Command {
  constructor(readonly key: string) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const entry = model.entries.get(this.key);
    const returned = await real.cache.get(this.key);
    if (entry && isFresh(entry, model.nowMs)) {
      expect(returned, `get(${this.key}) on a fresh entry`).toBe(path.join(real.dir, this.key));
      touch(entry, model.nowMs);
      const served = await fsp.readFile(returned as string);
      expect(served.equals(bytesFor(this.key, entry.version))).toBe(true);
      figures.bytesVerified += served.length;
    } else {
      expect(returned, `get(${this.key}) on an ${entry ? 'expired' : 'absent'} entry`).toBeUndefined();
    }
    await checkInvariants(model, real, false);
  }
  toString = () => `get(${this.key})`;
}

class Delete implements Command {
  constructor(readonly key: string) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    expect(await real.cache.delete(this.key)).toBe(model.entries.has(this.key));
    model.entries.delete(this.key);
    expect(await real.cache.has(this.key), `${this.key} was deleted`).toBe(false);
    await checkInvariants(model, real, false);
  }
  toString = () => `delete(${this.key})`;
}

class Clear implements Command {
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    await real.cache.clear();
    model.entries.clear();
    for (const key of KEYS) expect(await real.cache.has(key), `${key} after clear()`).toBe(false);
    await checkInvariants(model, real, false);
  }
  toString = () => 'clear()';
}

class Prune implements Command {
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    const report = await real.cache.prune();
    const expected: [string, string][] = [];
    for (const [key, entry] of [...model.entries]) {
      if (isFresh(entry, model.nowMs) || isInUse(entry, model.nowMs)) continue;
      model.entries.delete(key);
      expected.push([key, 'expired']);
    }
    for (const key of modelEvict(model, undefined)) expected.push([key, 'evicted']);
    expect(report.removed.map((item) => [item.key, item.reason]).sort()).toEqual(expected.sort());
    await checkInvariants(model, real, true);
  }
  toString = () => 'prune()';
}

class Advance implements Command {
  constructor(readonly ms: number) {}
  check = () => true;
  async run(model: Model, real: Real): Promise<void> {
    model.nowMs += this.ms;
    real.clock.advance(this.ms);
    await checkInvariants(model, real, false);
  }
  toString = () => `advance(${this.ms})`;
}

const key = fc.constantFrom(...KEYS);
const advanceMs = fc.oneof(
  fc.constantFrom(
    1,
    TOUCH_INTERVAL_MS - 1,
    TOUCH_INTERVAL_MS,
    IN_USE_WINDOW_MS - 1,
    IN_USE_WINDOW_MS,
    IN_USE_WINDOW_MS + 1,
    TTL_MS - 1,
    TTL_MS,
  ),
  fc.integer({ min: 0, max: TTL_MS + 1_000 }),
);
const commands = fc.commands<Model, Real, false>(
  [
    key.map((k) => new GetOrFetch(k)),
    key.map((k) => new GetOrFetch(k)),
    key.map((k) => new GetOrFetch(k)),
    key.map((k) => new Get(k)),
    key.map((k) => new Delete(k)),
    fc.constant(new Clear()),
    fc.constant(new Prune()),
    key.map((k) => new Renew(k)),
    fc
      .tuple(key, fc.constantFrom('fetch' as const, 'body' as const, 'validator' as const))
      .map(([k, at]) => new AbortedRefresh(k, at)),
    fc.constant(new VerifyFix()),
    advanceMs.map((ms) => new Advance(ms)),
    advanceMs.map((ms) => new Advance(ms)),
  ],
  { maxCommands: MAX_COMMANDS, size: 'max' },
);

describe('random operation sequences against a model', () => {
  it('getOrFetch / get / delete / clear / prune / NOT_MODIFIED / aborts / verify --fix / clock advance agree with the model at every step', async () => {
    await fc.assert(
      fc.asyncProperty(commands, async (sequence) => {
        const root = await makeTempDir();
        const clock = manualClock();
        const cache = new CacheManager({
          sublayer: 'model',
          ttl: TTL_MS,
          root,
          keepN: KEEP_N,
          touchIntervalMs: TOUCH_INTERVAL_MS,
          evictionGraceMs: EVICTION_GRACE_MS,
          now: clock.now,
        });
        // Let the once-per-manager background sweep finish now, so that it cannot race the steps.
        await cache.list();
        await cache[backgroundSweep];
        const setup = async () => ({
          model: { nowMs: clock.now(), entries: new Map(), versions: new Map() } as Model,
          real: { cache, clock, dir: path.join(root, 'model') } as Real,
        });
        try {
          figures.rounds += 1;
          await fc.asyncModelRun(setup, sequence);
        } finally {
          await fsp.rm(root, { recursive: true, force: true });
        }
      }),
      { numRuns: RUNS },
    );
  }, 120_000);
});
