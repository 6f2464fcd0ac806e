import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { backgroundSweep } from '../../src/cache-manager.js';
import { CacheManager, type FetchContext, PayloadCacheError } from '../../src/index.js';
import {
  makeTempDir,
  manualClock,
  patternBytes,
  releaseFifoReaders,
  removeTempDirs,
  sha256,
  tmpFilesIn,
} from '../helpers.js';
import { recordFigures } from './figures.js';

// Scenario 9b, hostile manifests (DESIGN.md section 3 and principle 6). Random bytes, random JSON and
// mutations of a valid manifest (wrong types, huge and negative sizes, extra and prototype-named fields,
// future and impossible dates, imf_reader 1.5 style) are written beside a real payload. Property: has, get,
// getOrFetch, list, prune and verify never throw, and a hit happens exactly when the manifest is valid for
// that payload. "Valid" is decided by an oracle written from DESIGN.md section 3, not from src; where the
// design is silent (null optional fields, negative schema versions, manifests over 64 KiB...) the oracle
// says "either" and only consistency is checked.

const RUNS = 220;
const KEY = 'weo_april_2024.zip';
const TTL_MS = 3_600_000;
const SKEW_MS = 300_000;
const PAYLOAD = patternBytes(1_000, 11);
const REFETCHED = patternBytes(1_337, 12);
const PAYLOAD_SHA = sha256(PAYLOAD);

afterEach(removeTempDirs);

let hostileInputs = 0;
let bytesVerified = 0;
afterAll(() => recordFigures('hostile inputs', { hostileInputs, bytesVerified }));

type State = 'fresh' | 'expired' | 'absent' | 'either';
interface Verdict {
  state: State;
  /** For a manifest that parses: whether its sha256 names the payload's bytes. */
  sha: 'none' | 'match' | 'mismatch';
  /** Not a manifest at all, or one for another size: verify() must flag it. */
  flagged: boolean;
}

const ISO = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|([+-])(\d{2}):?(\d{2}))$/;

/** ms since the epoch for an ISO 8601 date-time with a zone, `'either'` for odd forms, NaN for garbage. */
function isoMs(text: string): number | 'either' {
  const match = ISO.exec(text);
  if (!match) return /^\d{4}-\d{2}-\d{2}(T[\d:.]+)?$/.test(text) ? 'either' : Number.NaN;
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number) as number[];
  const daysInMonth = new Date(Date.UTC(year as number, month as number, 0)).getUTCDate();
  if ((month as number) < 1 || (month as number) > 12 || (day as number) < 1 || (day as number) > daysInMonth)
    return Number.NaN;
  if ((hour as number) > 23 || (minute as number) > 59 || (second as number) > 59) return 'either';
  const fraction = Number((match[7] ?? '0').padEnd(3, '0').slice(0, 3));
  const offsetMin =
    match[8] === 'Z' ? 0 : (match[9] === '-' ? -1 : 1) * (Number(match[10]) * 60 + Number(match[11]));
  const local = Date.UTC(year as number, (month as number) - 1, day, hour, minute, second, fraction);
  return local - offsetMin * 60_000;
}

/** The oracle: what DESIGN.md section 3 says a lookup must find for these manifest bytes. */
function judge(bytes: Uint8Array, nowMs: number): Verdict {
  const miss: Verdict = { state: 'absent', sha: 'none', flagged: true };
  if (bytes.length > 64 * 1024) return { state: 'either', sha: 'none', flagged: false };
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return miss;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return miss;
  const record = value as Record<string, unknown>;
  const own = (field: string) => Object.hasOwn(record, field);
  let either = false;

  if (!own('schema_version')) return miss;
  const version = record.schema_version;
  // DESIGN.md names 1 and "1.5.0"; negative, fractional or unsafe (>= 2^53) numbers are left open.
  if (typeof version === 'number') either ||= !(Number.isSafeInteger(version) && version >= 0);
  else if (typeof version === 'string') either ||= version.length === 0;
  else return miss;

  if (typeof record.created_at !== 'string') return miss;
  const createdAtMs = isoMs(record.created_at);
  if (createdAtMs === 'either') either = true;
  else if (Number.isNaN(createdAtMs)) return miss;

  const size = record.size_bytes;
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 0) return miss;
  if (size !== PAYLOAD.length) return miss;

  for (const field of ['etag', 'last_modified']) {
    if (!own(field)) continue;
    if (record[field] === null) either = true;
    else if (typeof record[field] !== 'string') return miss;
  }
  let sha: Verdict['sha'] = 'none';
  if (own('sha256') && record.sha256 === null) either = true;
  else if (own('sha256')) {
    const text = record.sha256;
    if (typeof text !== 'string' || !/^[0-9a-f]{64}$/i.test(text)) return miss;
    sha = text.toLowerCase() === PAYLOAD_SHA ? 'match' : 'mismatch';
  }
  // A manifest naming another key is a miss; verify() need not flag it (its bytes may be fine).
  if (own('key') && record.key === null) either = true;
  else if (own('key') && record.key !== KEY) {
    if (typeof record.key !== 'string') return miss;
    return { state: 'absent', sha, flagged: false };
  }
  if (either || createdAtMs === 'either') return { state: 'either', sha, flagged: false };
  const expired = createdAtMs > nowMs + SKEW_MS || nowMs - createdAtMs >= TTL_MS;
  return { state: expired ? 'expired' : 'fresh', sha, flagged: false };
}

// --- generators -------------------------------------------------------------------------------------

const START_MS = Date.parse('2026-03-10T12:00:00.000Z');
const iso = (ms: number) => new Date(ms).toISOString();
/** imf_reader 1.5 writes `2026-04-29T10:00:00+0000`. */
const imfStyle = (ms: number) => `${new Date(ms).toISOString().slice(0, 19)}+0000`;

const timestamps = fc.oneof(
  fc.constantFrom(
    iso(START_MS - 1_000),
    iso(START_MS - TTL_MS),
    iso(START_MS - TTL_MS + 1),
    iso(START_MS + SKEW_MS - 1),
    iso(START_MS + SKEW_MS + 1),
    iso(START_MS + 10 * 365 * 86_400_000),
    imfStyle(START_MS - 60_000),
    imfStyle(START_MS - 2 * TTL_MS),
    '2026-03-10T17:30:00.000+05:30',
    '2026-03-10T11:59:59.999-00:00',
    '2026-02-30T00:00:00Z',
    '2026-13-01T00:00:00Z',
    '2026-03-10T25:00:00Z',
    '2026-03-10',
    '2026-03-10T12:00:00',
    '+275760-09-13T00:00:00.000Z',
    '0000-01-01T00:00:00Z',
    'yesterday',
    '',
  ),
  fc.date({ min: new Date(0), max: new Date(4e12), noInvalidDate: true }).map((date) => date.toISOString()),
  fc.integer({ min: -2 * TTL_MS, max: 2 * SKEW_MS }).map((offset) => iso(START_MS + offset)),
);

const oddValues = fc.oneof(
  fc.constantFrom<unknown>(
    null,
    true,
    false,
    0,
    -1,
    -PAYLOAD.length,
    PAYLOAD.length,
    PAYLOAD.length + 1,
    PAYLOAD.length - 1,
    PAYLOAD.length + 0.5,
    1e308,
    2 ** 53,
    2 ** 53 + 2,
    Number.MAX_SAFE_INTEGER,
    '',
    '1',
    String(PAYLOAD.length),
    '1.5.0',
    [],
    {},
    [PAYLOAD.length],
    { size: PAYLOAD.length },
    KEY,
    KEY.toUpperCase(),
    'other-key.zip',
    PAYLOAD_SHA,
    PAYLOAD_SHA.toUpperCase(),
    sha256(REFETCHED),
    `${PAYLOAD_SHA}0`,
    '"etag"',
  ),
  timestamps,
  fc.jsonValue({ maxDepth: 2 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
);

const FIELDS = [
  'schema_version',
  'key',
  'created_at',
  'size_bytes',
  'sha256',
  'etag',
  'last_modified',
  '__proto__',
  'constructor',
  'toString',
  'hasOwnProperty',
  'extra',
  'url',
] as const;
const mutation = fc.record({
  field: fc.constantFrom(...FIELDS),
  value: fc.oneof(
    { arbitrary: fc.constant<'delete'>('delete'), weight: 1 },
    { arbitrary: oddValues, weight: 4 },
  ),
});

function validManifest(createdAt: string): Record<string, unknown> {
  return {
    schema_version: 1,
    key: KEY,
    created_at: createdAt,
    size_bytes: PAYLOAD.length,
    sha256: PAYLOAD_SHA,
    etag: '"v1"',
    last_modified: 'Wed, 21 Oct 2026 07:28:00 GMT',
  };
}

/** Sets a field as an own, enumerable property, so that `__proto__` really lands in the JSON text. */
function withField(record: Record<string, unknown>, field: string, value: unknown): void {
  Object.defineProperty(record, field, { value, enumerable: true, writable: true, configurable: true });
}

interface Input {
  kind: string;
  bytes: Uint8Array;
}
const asInput = (kind: string) => (bytes: Uint8Array | string) => ({
  kind,
  bytes: typeof bytes === 'string' ? Buffer.from(bytes) : bytes,
});

// A valid manifest with any created_at (fresh, expired, future, impossible), then up to three mutations.
const mutatedManifests = fc
  .tuple(timestamps, fc.array(mutation, { maxLength: 3 }))
  .map(([createdAt, mutations]) => {
    const record = validManifest(createdAt);
    for (const { field, value } of mutations) {
      if (value === 'delete') delete record[field];
      else withField(record, field, value);
    }
    return JSON.stringify(record);
  })
  .map(asInput('mutated'));

const imfManifests = fc
  .record({
    schema_version: fc.constantFrom<unknown>('1.5.0', '1.4.2', '2', 1),
    created_at: fc
      .integer({ min: -2 * TTL_MS, max: 2 * SKEW_MS })
      .map((offset) => imfStyle(START_MS + offset)),
    size_bytes: fc.constantFrom(PAYLOAD.length, PAYLOAD.length + 1, 0),
    url: fc.constant(
      'https://www.imf.org/-/media/Files/Publications/WEO/WEO-Database/2024/WEOApr2024all.ashx',
    ),
  })
  .map((record) => JSON.stringify(record))
  .map(asInput('imf_reader'));

const validText = JSON.stringify(validManifest(iso(START_MS - 1_000)));
const textMutations = fc
  .oneof(
    fc.integer({ min: 0, max: validText.length - 1 }).map((at) => validText.slice(0, at)),
    fc.string({ maxLength: 8 }).map((tail) => `${validText}${tail}`),
    fc.constantFrom(
      `\ufeff${validText}`,
      `  \n${validText}\n\n`,
      validText.replace('{', '{"size_bytes":1,'),
      validText.replace('}', `,"size_bytes":${PAYLOAD.length + 1}}`),
      `${validText.slice(0, -1)},"pad":"${'x'.repeat(70_000)}"}`,
      `[${validText}]`,
      `"${validText.replaceAll('"', '\\"')}"`,
      `${'['.repeat(20_000)}${']'.repeat(20_000)}`,
      `{"a":${'{"a":'.repeat(5_000)}1${'}'.repeat(5_001)}`,
      'null',
      '0',
      '',
      '{}',
      '{"__proto__":{"size_bytes":1000}}',
    ),
  )
  .map(asInput('text'));
const utf16 = fc.constant(Buffer.from(validText, 'utf16le')).map(asInput('utf16'));

const hostileManifest: fc.Arbitrary<Input> = fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 400 }).map(asInput('bytes')), weight: 2 },
  { arbitrary: fc.json({ maxDepth: 3 }).map(asInput('json')), weight: 2 },
  { arbitrary: mutatedManifests, weight: 6 },
  { arbitrary: imfManifests, weight: 2 },
  { arbitrary: textMutations, weight: 2 },
  { arbitrary: utf16, weight: 1 },
);

/**
 * Why verify() calls a valid manifest of the wrong size bad: it names another key (checked first: it is
 * then no manifest of this entry at all), or it gives another size.
 */
function badReason(bytes: Uint8Array): 'wrong-key' | 'size-mismatch' {
  const { key } = JSON.parse(Buffer.from(bytes).toString('utf8')) as { key?: unknown };
  return typeof key === 'string' && key !== KEY ? 'wrong-key' : 'size-mismatch';
}

// --- the property -----------------------------------------------------------------------------------

describe('hostile manifests', () => {
  it('random manifest bytes beside a real payload: nothing throws, and a hit happens exactly when the manifest is valid', async () => {
    const root = await makeTempDir();
    const dir = path.join(root, 'data');
    const payloadPath = path.join(dir, KEY);
    const manifestPath = `${payloadPath}.manifest.json`;
    const clock = manualClock(START_MS);
    const cache = new CacheManager({ sublayer: 'data', ttl: TTL_MS, root, now: clock.now });
    // A first write marks the root as a cache (CACHEDIR.TAG), which the janitors below require.
    await new CacheManager({ sublayer: 'tag', ttl: TTL_MS, root }).getOrFetch('tag', () => 'x');
    await cache.has(KEY);
    await cache[backgroundSweep];
    const seen = { fresh: 0, expired: 0, absent: 0, either: 0 };

    await fc.assert(
      fc.asyncProperty(hostileManifest, async ({ kind, bytes }) => {
        hostileInputs += 1;
        await fsp.rm(dir, { recursive: true, force: true });
        await fsp.mkdir(dir, { recursive: true });
        await fsp.writeFile(payloadPath, PAYLOAD);
        const usedAt = new Date(START_MS - 1_000);
        await fsp.utimes(payloadPath, usedAt, usedAt);
        await fsp.writeFile(manifestPath, bytes);
        const verdict = judge(bytes, START_MS);
        seen[verdict.state] += 1;
        const label = `${kind} manifest ${JSON.stringify(Buffer.from(bytes).toString('utf8').slice(0, 300))}`;

        // Reads: consistent with each other, and with the oracle where it is decided.
        const has = await cache.has(KEY);
        const got = await cache.get(KEY);
        const listed = await cache.list();
        const report = await cache.verify();
        expect(got !== undefined, label).toBe(has);
        expect(listed.length, label).toBeLessThanOrEqual(1);
        if (got !== undefined) {
          expect(got).toBe(payloadPath);
          expect((await fsp.readFile(got)).equals(PAYLOAD), label).toBe(true);
          bytesVerified += PAYLOAD.length;
        }
        if (verdict.state !== 'either') {
          expect(has, label).toBe(verdict.state === 'fresh');
          expect(
            listed.map((entry) => ({ key: entry.key, expired: entry.expired, sizeBytes: entry.sizeBytes })),
            label,
          ).toEqual(
            verdict.state === 'absent'
              ? []
              : [{ key: KEY, expired: verdict.state === 'expired', sizeBytes: 1_000 }],
          );
        }
        if ((verdict.state === 'fresh' || verdict.state === 'expired') && verdict.sha !== 'mismatch') {
          expect(report, label).toEqual({ checked: 1, bad: [], removed: [], foreign: [] });
        } else if (verdict.state === 'fresh' || verdict.state === 'expired') {
          expect(report, label).toEqual({
            checked: 0,
            bad: [{ key: KEY, path: payloadPath, reason: 'hash-mismatch' }],
            removed: [],
            foreign: [],
          });
        } else if (verdict.flagged) {
          // A manifest of ours for another size is a bad entry; bytes that are no manifest at all are
          // foreign (the cache cannot prove it wrote them): either way verify() reports it.
          expect(report.checked, label).toBe(0);
          const flagged = [
            ...report.bad.map((item) => [item.reason, item.path]),
            ...report.foreign.map((item) => [item.reason, item.path]),
          ];
          expect(flagged, label).toEqual([
            report.bad.length > 0 ? [badReason(bytes), payloadPath] : ['invalid-manifest', manifestPath],
          ]);
        }

        // getOrFetch: a hit serves the payload untouched; anything else fetches and publishes anew.
        let fetches = 0;
        let previousGiven = false;
        const returned = await cache.getOrFetch(KEY, (ctx: FetchContext) => {
          fetches += 1;
          previousGiven = ctx.previous !== undefined;
          return REFETCHED;
        });
        expect(returned).toBe(payloadPath);
        const served = await fsp.readFile(returned);
        bytesVerified += served.length;
        expect(fetches, label).toBe(has ? 0 : 1);
        expect(served.equals(has ? PAYLOAD : REFETCHED), label).toBe(true);
        // Only a valid (expired) manifest may be handed to the fetcher for a conditional request.
        if (verdict.state !== 'either') expect(previousGiven, label).toBe(verdict.state === 'expired');
        if (fetches === 1) {
          const rewritten = JSON.parse(await fsp.readFile(manifestPath, 'utf8'));
          expect(rewritten).toMatchObject({
            key: KEY,
            size_bytes: REFETCHED.length,
            sha256: sha256(REFETCHED),
          });
        }

        // The janitors never throw either; afterwards the served entry is still there unless its
        // manifest named other bytes (verify --fix removes exactly that).
        await cache.prune();
        await cache.verify({ fix: true });
        const after = await cache.get(KEY);
        const removedAsBad = fetches === 0 && verdict.sha === 'mismatch';
        if (removedAsBad) expect(after, label).toBeUndefined();
        else {
          expect(after, label).toBe(payloadPath);
          expect((await fsp.readFile(payloadPath)).equals(served), label).toBe(true);
        }
        expect(await tmpFilesIn(dir)).toEqual([]);
        expect((await fsp.readdir(dir)).filter((name) => name.endsWith('.lock'))).toEqual([]);
      }),
      { numRuns: RUNS },
    );

    // Each decided outcome must really have occurred for the property to mean anything.
    expect(seen.fresh).toBeGreaterThan(RUNS / 40);
    expect(seen.expired).toBeGreaterThan(RUNS / 40);
    expect(seen.absent).toBeGreaterThan(RUNS / 5);
  }, 120_000);
});

// --- special files planted at the manifest path -------------------------------------------------------

describe.skipIf(process.platform === 'win32')('special files at the manifest path', () => {
  it('a FIFO planted at the manifest path is a miss, not a hang', async () => {
    // Opening a FIFO for reading blocks until a writer appears; a reader that does not open with
    // O_NONBLOCK (or check the file type first) hangs, holding a libuv thread-pool thread.
    hostileInputs += 1;
    const root = await makeTempDir();
    const dir = path.join(root, 'data');
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, KEY), PAYLOAD);
    const fifo = path.join(dir, `${KEY}.manifest.json`);
    execFileSync('mkfifo', [fifo]);
    const cache = new CacheManager({ sublayer: 'data', ttl: TTL_MS, root });
    const lookup = cache.get(KEY).then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    const timer = new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 3_000));
    const first = await Promise.race([lookup, timer]);
    // Whatever happened, free any reader still blocked in open(2) before asserting.
    await releaseFifoReaders(dir, Promise.all([lookup, cache[backgroundSweep]]));
    await fsp.rm(fifo, { force: true });
    expect(first, 'get() was still blocked opening the FIFO after 3 s').not.toBe('hung');
    expect(first).toEqual({ value: undefined });
  });

  it('a directory planted at the manifest path is a miss, and no operation rejects with a raw EISDIR', async () => {
    // A directory cannot be unlinked: code that removes "the old manifest" with unlink fails on it, and
    // clear() then stops before it has cleared the other keys.
    hostileInputs += 1;
    const root = await makeTempDir();
    const dir = path.join(root, 'data');
    const cache = new CacheManager({ sublayer: 'data', ttl: TTL_MS, root });
    await cache.getOrFetch('other.zip', () => REFETCHED);
    await fsp.writeFile(path.join(dir, KEY), PAYLOAD);
    await fsp.mkdir(path.join(dir, `${KEY}.manifest.json`));

    expect(await cache.has(KEY)).toBe(false);
    expect(await cache.get(KEY)).toBeUndefined();
    expect((await cache.list()).map((entry) => entry.key)).toEqual(['other.zip']);
    const outcomes: Record<string, string> = {};
    const attempt = async (name: string, run: () => Promise<unknown>) => {
      outcomes[name] = await run().then(
        () => 'ok',
        (error: unknown) =>
          error instanceof PayloadCacheError ? `typed ${error.code}` : `raw ${(error as Error).message}`,
      );
    };
    await attempt('verify', () => cache.verify());
    await attempt('prune', () => cache.prune());
    await attempt('getOrFetch', async () => {
      const returned = await cache.getOrFetch(KEY, () => REFETCHED);
      expect((await fsp.readFile(returned)).equals(REFETCHED)).toBe(true);
    });
    await attempt('verify --fix', () => cache.verify({ fix: true }));
    await attempt('clear', () => cache.clear());
    const rawErrors = Object.entries(outcomes).filter(([, outcome]) => outcome.startsWith('raw'));
    expect(rawErrors, JSON.stringify(outcomes)).toEqual([]);
    expect(await cache.get('other.zip'), 'clear() left another key a hit').toBeUndefined();
  });
});
