import { promises as fsp } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CacheManager, InvalidKeyError } from '../../src/index.js';
import { makeTempDir, patternBytes, removeTempDirs } from '../helpers.js';
import { recordFigures } from './figures.js';

// Scenario 9a, hostile keys and sublayers (DESIGN.md principle 6 and section 8). Property: every string is
// either accepted, and then round-trips through a real getOrFetch to a file directly inside
// `<root>/<sublayer>`, or refused with InvalidKeyError before any I/O; and whatever the run tried, no file
// appears outside the cache root. An independent oracle, written from DESIGN.md section 8 rather than from
// src, names the strings that must be refused and the plain ones that must be accepted; anything in
// between may go either way but must still satisfy the property.
//
// Lone UTF-16 surrogates are left out of the generators: Node writes them to the file system as U+FFFD, so
// two different keys can name one file. That is pinned down by the focused tests at the end instead of
// being found at random by the property.

const KEY_RUNS = 500;
const SUBLAYER_RUNS = 150;
const TTL_MS = 3_600_000;

afterEach(removeTempDirs);

let hostileInputs = 0;
afterAll(() => recordFigures('hostile inputs', { hostileInputs }));

const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?$/i;
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what the rule forbids
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** The DESIGN.md section 8 rule a string breaks, or `undefined`. */
function mustRefuse(value: string): string | undefined {
  if (value.length === 0) return 'empty';
  if (Buffer.byteLength(value, 'utf8') > 200) return 'over 200 UTF-8 bytes';
  if (/[/\\]/.test(value)) return 'path separator';
  if (CONTROL.test(value)) return 'NUL or control character';
  if (value === '.' || value === '..') return 'dot segment';
  if (/[. ]$/.test(value)) return 'trailing dot or space';
  if (WINDOWS_RESERVED.test(value)) return 'Windows reserved name';
  if (value.endsWith('.manifest.json') || value.endsWith('.lock')) return 'cache suffix';
  if (value.includes('.tmp.')) return 'tmp marker';
  if (value === 'CACHEDIR.TAG') return 'CACHEDIR.TAG';
  return undefined;
}

/** Plain names (letters, digits, `_`, `-`, inner dots) that clash with nothing: these must be accepted. */
function mustAccept(value: string): boolean {
  if (!/^[\p{L}\p{N}_-]([\p{L}\p{N}_.-]*[\p{L}\p{N}_-])?$/u.test(value)) return false;
  if (Buffer.byteLength(value, 'utf8') > 200) return false;
  const lower = value.toLowerCase();
  if (/^(con|prn|aux|nul|com.|lpt.)(\..*)?$/.test(lower)) return false;
  if (lower.endsWith('.manifest.json') || lower.endsWith('.lock') || lower.includes('.tmp.')) return false;
  return lower !== 'cachedir.tag';
}

/** Distinct bytes per string; JSON.stringify keeps strings that differ in any code unit apart. */
function bytesFor(value: string): Buffer {
  const label = Buffer.from(`${JSON.stringify(value)}\n`);
  let seed = 7;
  for (const byte of label) seed = (Math.imul(seed, 31) + byte) >>> 0;
  return Buffer.concat([label, patternBytes(label.length * 3, seed)]);
}

/** The name the file system stores for `value` (lone surrogates become U+FFFD on the way to UTF-8). */
const onDisk = (value: string) => Buffer.from(value, 'utf8').toString('utf8');

/**
 * Whether names in `dir` are case-insensitive (Windows, macOS): there keys that differ only in case share
 * one file (README, Keys), and which spelling the file keeps after a replace is the file system's choice.
 */
async function isCaseInsensitive(dir: string): Promise<boolean> {
  await fsp.mkdir(dir, { recursive: true });
  const probe = path.join(dir, 'Case-Probe');
  await fsp.writeFile(probe, '');
  const insensitive = await fsp.access(path.join(dir, 'case-probe')).then(
    () => true,
    () => false,
  );
  await fsp.rm(probe);
  return insensitive;
}

/**
 * A name as a case-insensitive file system compares it: each UTF-16 unit upper-cased alone (NTFS's upcase
 * table), and on macOS also normalized (APFS and HFS+ ignore normalization; NTFS does not).
 */
function foldCase(name: string): string {
  const compared = process.platform === 'darwin' ? name.normalize('NFC') : name;
  return Array.from(compared.split(''), (char) => {
    const upper = char.toUpperCase();
    return upper.length === char.length ? upper : char;
  }).join('');
}

const KNOWN_NASTY = [
  '',
  '.',
  '..',
  '...',
  '../escape',
  '..\\escape',
  '/etc/passwd',
  'a/../../b',
  'C:\\Windows',
  '\\\\server\\share',
  'CON',
  'con.txt',
  'Nul',
  'aux.tar.gz',
  'COM1',
  'com9.log',
  'LPT1',
  'COM¹',
  'lpt²',
  'COM0',
  'ＣＯＮ',
  'con\u200b',
  'x.manifest.json',
  'X.MANIFEST.JSON',
  '.manifest.json',
  'x.lock',
  'X.LOCK',
  '.lock',
  'x.lock.d',
  'a.tmp.b',
  'A.TMP.B',
  '.tmp.',
  'x.tmp',
  'CACHEDIR.TAG',
  'cachedir.tag',
  'trailing.',
  'trailing ',
  ' leading',
  '\tleading',
  'a\u0000b',
  'a\nb',
  'a\rb',
  '\u001b[31m',
  '\u007f',
  '\u0085',
  '\u009f',
  '\u00a0',
  'a\u00a0',
  '\u2028',
  '\ufeffbom',
  '\u202egnp.exe',
  'a:b',
  'a*b',
  'a?b',
  'a"b',
  'a<b>',
  'a|b',
  '~',
  '~root',
  '$HOME',
  '$(id)',
  '`id`',
  '%2e%2e%2f',
  '-rf',
  '--',
  '.hidden',
  '..hidden',
  'owner.json',
  'e\u0301',
  '\u00e9',
  '\ufffd',
  'é'.repeat(100),
  'é'.repeat(101),
  'a'.repeat(200),
  'a'.repeat(201),
  '😀'.repeat(50),
  '😀'.repeat(51),
  `${'a'.repeat(186)}.manifest.json`,
];

const nastyUnit = fc.constantFrom(
  '/',
  '\\',
  '.',
  ' ',
  '\u0000',
  '\n',
  '\t',
  '\u001b',
  '\u007f',
  '\u0085',
  ':',
  '*',
  '?',
  '"',
  '<',
  '>',
  '|',
  '~',
  '$',
  '%',
  '\u00a0',
  '\u2028',
  '\u200b',
  '\u202e',
  '\ufeff',
  '\ufffd',
  'é',
  'e\u0301',
  'İ',
  '日',
  '😀',
  '\u3000',
);
const fragmentUnit = fc.constantFrom(
  '..',
  '../',
  '..\\',
  'CON',
  'nul',
  'COM1',
  'lpt¹',
  '.manifest.json',
  '.MANIFEST.JSON',
  '.lock',
  '.Lock',
  '.tmp.',
  '.TMP.',
  'CACHEDIR.TAG',
);
const unit = fc.oneof(
  { arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }), weight: 6 },
  { arbitrary: nastyUnit, weight: 3 },
  { arbitrary: fragmentUnit, weight: 2 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 2 },
  { arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 }), weight: 1 },
);
const hostileString = fc.oneof(
  { arbitrary: fc.string({ unit, maxLength: 16 }), weight: 6 },
  { arbitrary: fc.string({ unit, minLength: 40, maxLength: 110 }), weight: 2 },
  { arbitrary: fc.constantFrom(...KNOWN_NASTY), weight: 3 },
);

/** Every path under `dir` (directories included), depth first. */
async function walk(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    found.push(full);
    if (entry.isDirectory()) found.push(...(await walk(full)));
  }
  return found;
}

/** Calls an async method and fails if it throws synchronously (DESIGN.md section 4: only the constructor may). */
function callAsync<T>(call: () => Promise<T>): Promise<T> {
  let promise: Promise<T>;
  try {
    promise = call();
  } catch (error) {
    throw new Error(`threw synchronously instead of rejecting: ${String(error)}`);
  }
  return promise;
}

async function expectInvalidKey(promise: Promise<unknown>): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(InvalidKeyError);
  expect((error as InvalidKeyError).code).toBe('ERR_INVALID_KEY');
}

describe('hostile keys', () => {
  it('every key is either refused with InvalidKeyError or round-trips inside <root>/<sublayer>; nothing lands outside', async () => {
    const base = await makeTempDir();
    const root = path.join(base, 'cache');
    const dir = path.join(root, 'data');
    const cache = new CacheManager({ sublayer: 'data', ttl: TTL_MS, root, keepN: Number.POSITIVE_INFINITY });
    const fold = (await isCaseInsensitive(base)) ? foldCase : (name: string) => name;
    // Which key last wrote each on-disk name (folded where names are case-insensitive), to check every
    // file's bytes at the end.
    const lastWriter = new Map<string, string>();
    let accepted = 0;
    let refused = 0;

    await fc.assert(
      fc.asyncProperty(hostileString, async (key) => {
        hostileInputs += 1;
        const refuseRule = mustRefuse(key);
        const expected = bytesFor(key);
        let fetches = 0;
        const before = await fsp.readdir(dir).catch(() => [] as string[]);
        const outcome = await callAsync(() =>
          cache.getOrFetch(key, () => {
            fetches += 1;
            return expected;
          }),
        ).then(
          (returned) => ({ returned }),
          (error: unknown) => ({ error }),
        );

        if ('error' in outcome) {
          expect(outcome.error, `key ${JSON.stringify(key)}`).toBeInstanceOf(InvalidKeyError);
          expect(mustAccept(key), `plain key ${JSON.stringify(key)} was refused`).toBe(false);
          expect(fetches).toBe(0);
          await expectInvalidKey(callAsync(() => cache.get(key)));
          await expectInvalidKey(callAsync(() => cache.has(key)));
          await expectInvalidKey(callAsync(() => cache.delete(key)));
          // Refused before any I/O: the sublayer looks exactly as before.
          expect((await fsp.readdir(dir).catch(() => [] as string[])).sort()).toEqual(before.sort());
          refused += 1;
          return;
        }

        expect(refuseRule, `key ${JSON.stringify(key)} was accepted`).toBeUndefined();
        const { returned } = outcome;
        expect(returned).toBe(path.join(dir, key));
        expect(path.dirname(returned)).toBe(dir);
        expect(path.relative(dir, returned)).toBe(key);
        expect(fetches).toBeLessThanOrEqual(1);
        expect((await fsp.readFile(returned)).equals(expected)).toBe(true);
        expect(await cache.get(key)).toBe(returned);
        expect(await cache.has(key)).toBe(true);
        const manifest = JSON.parse(await fsp.readFile(`${returned}.manifest.json`, 'utf8'));
        expect(manifest.key).toBe(key);
        expect(manifest.size_bytes).toBe(expected.length);
        lastWriter.set(fold(onDisk(key)), key);
        accepted += 1;
      }),
      { numRuns: KEY_RUNS },
    );

    // Nothing outside the root; inside, only the tag and the sublayer; in the sublayer, only the
    // payloads and manifests of accepted keys, each holding its key's bytes (no tmp file, no lock).
    const outside = (await walk(base)).filter(
      (found) => found !== root && !found.startsWith(root + path.sep),
    );
    expect(outside).toEqual([]);
    expect((await fsp.readdir(root)).sort()).toEqual(['CACHEDIR.TAG', 'data']);
    const expectedNames = [...lastWriter.keys()].flatMap((name) => [name, fold(`${name}.manifest.json`)]);
    expect((await fsp.readdir(dir)).map(fold).sort()).toEqual(expectedNames.sort());
    for (const key of lastWriter.values()) {
      expect((await fsp.readFile(path.join(dir, key))).equals(bytesFor(key))).toBe(true);
    }
    expect(accepted + refused).toBe(KEY_RUNS);
    // Both branches must really have been exercised for the property to mean anything.
    expect(accepted).toBeGreaterThan(KEY_RUNS / 10);
    expect(refused).toBeGreaterThan(KEY_RUNS / 10);
  }, 120_000);

  it('every sublayer is either refused by the constructor with InvalidKeyError or holds its entries in <root>/<sublayer>', async () => {
    const base = await makeTempDir();
    const root = path.join(base, 'cache');
    const fold = (await isCaseInsensitive(base)) ? foldCase : (name: string) => name;
    // The sublayer that first wrote each on-disk directory (folded where names are case-insensitive): on
    // such a file system "L" after "l" is the same directory, and its payload.bin is l's entry, a hit
    // (the manifest records the key, not the sublayer: the README says so).
    const acceptedDirs = new Map<string, string>();
    let accepted = 0;
    let refused = 0;

    await fc.assert(
      fc.asyncProperty(hostileString, async (sublayer) => {
        hostileInputs += 1;
        let cache: CacheManager;
        try {
          cache = new CacheManager({ sublayer, ttl: TTL_MS, root });
        } catch (error) {
          expect(error, `sublayer ${JSON.stringify(sublayer)}`).toBeInstanceOf(InvalidKeyError);
          expect(mustAccept(sublayer), `plain sublayer ${JSON.stringify(sublayer)} was refused`).toBe(false);
          refused += 1;
          return;
        }
        expect(mustRefuse(sublayer), `sublayer ${JSON.stringify(sublayer)} was accepted`).toBeUndefined();
        expect(cache.sublayer).toBe(sublayer);
        const sharedWith = acceptedDirs.get(fold(onDisk(sublayer)));
        const expected = bytesFor(sharedWith ?? sublayer);
        const returned = await cache.getOrFetch('payload.bin', () => expected);
        expect(returned).toBe(path.join(root, sublayer, 'payload.bin'));
        expect(path.dirname(path.dirname(returned))).toBe(root);
        expect(path.relative(root, returned).split(path.sep)).toEqual([sublayer, 'payload.bin']);
        expect((await fsp.readFile(returned)).equals(expected)).toBe(true);
        expect(await cache.get('payload.bin')).toBe(returned);
        if (sharedWith === undefined) acceptedDirs.set(fold(onDisk(sublayer)), sublayer);
        accepted += 1;
      }),
      { numRuns: SUBLAYER_RUNS },
    );

    const outside = (await walk(base)).filter(
      (found) => found !== root && !found.startsWith(root + path.sep),
    );
    expect(outside).toEqual([]);
    expect((await fsp.readdir(root)).map(fold).sort()).toEqual(
      [fold('CACHEDIR.TAG'), ...acceptedDirs.keys()].sort(),
    );
    for (const sublayer of acceptedDirs.values()) {
      const sublayerDir = path.join(root, onDisk(sublayer));
      expect((await fsp.readdir(sublayerDir)).sort()).toEqual(['payload.bin', 'payload.bin.manifest.json']);
      expect((await fsp.readFile(path.join(sublayerDir, 'payload.bin'))).equals(bytesFor(sublayer))).toBe(
        true,
      );
    }
    expect(accepted + refused).toBe(SUBLAYER_RUNS);
    expect(accepted).toBeGreaterThan(SUBLAYER_RUNS / 10);
    expect(refused).toBeGreaterThan(SUBLAYER_RUNS / 10);
  }, 120_000);
});

describe('sublayers that differ only in case', () => {
  // The README's promise, both ways: separate where names are case-sensitive; one directory, and so one
  // entry per key, where they are not (macOS, Windows). Keys differ: their manifests record them.
  it('are separate on a case-sensitive file system and share entries on a case-insensitive one', async () => {
    const root = await makeTempDir();
    const lower = new CacheManager({ sublayer: 'models', ttl: TTL_MS, root });
    const upper = new CacheManager({ sublayer: 'Models', ttl: TTL_MS, root });
    await lower.getOrFetch('weights.bin', () => bytesFor('models'));
    let fetches = 0;

    const served = await upper.getOrFetch('weights.bin', () => {
      fetches += 1;
      return bytesFor('Models');
    });

    const shared = await isCaseInsensitive(root);
    expect(served).toBe(path.join(root, 'Models', 'weights.bin'));
    expect(fetches).toBe(shared ? 0 : 1);
    expect((await fsp.readFile(served)).equals(bytesFor(shared ? 'models' : 'Models'))).toBe(true);
  });
});

describe('keys that are not well-formed UTF-16', () => {
  // Node encodes a lone surrogate as U+FFFD (EF BF BD) on its way to the file system, so 'a\uD800',
  // 'a\uDBFF' and 'a\uFFFD' all name the file 'a\uFFFD'. DESIGN.md section 8 measures keys in UTF-8 bytes,
  // which such a string does not have: it should be refused, or at least kept apart from its neighbours.
  it('two keys that differ only in a lone surrogate do not share one entry', async () => {
    const root = await makeTempDir();
    const cache = new CacheManager({ sublayer: 'data', ttl: TTL_MS, root });
    const first = 'a\uD800';
    const second = 'a\uDBFF';
    hostileInputs += 2;
    const outcomes = [];
    for (const key of [first, second]) {
      outcomes.push(
        await cache
          .getOrFetch(key, () => bytesFor(key))
          .then(
            (returned) => ({ key, returned }),
            (error: unknown) => ({ key, error }),
          ),
      );
    }
    for (const outcome of outcomes) {
      if ('error' in outcome) expect(outcome.error).toBeInstanceOf(InvalidKeyError);
    }
    if (outcomes.every((outcome) => 'returned' in outcome)) {
      // Both accepted: each must still find its own bytes, and list() must name both keys.
      const firstPath = await cache.get(first);
      expect(
        firstPath,
        `get(${JSON.stringify(first)}) after writing ${JSON.stringify(second)}`,
      ).toBeDefined();
      expect((await fsp.readFile(firstPath as string)).equals(bytesFor(first))).toBe(true);
      expect((await cache.list()).map((entry) => entry.key).sort()).toEqual([first, second].sort());
    }
  });

  it('two sublayers that differ only in a lone surrogate do not serve each other’s entries', async () => {
    const root = await makeTempDir();
    const sublayers = ['s\uD800', 's\uDBFF'];
    hostileInputs += 2;
    for (const sublayer of sublayers) {
      let cache: CacheManager;
      try {
        cache = new CacheManager({ sublayer, ttl: TTL_MS, root });
      } catch (error) {
        expect(error).toBeInstanceOf(InvalidKeyError);
        continue;
      }
      const returned = await cache.getOrFetch('payload.bin', () => bytesFor(sublayer));
      const served = await fsp.readFile(returned);
      expect(
        served.equals(bytesFor(sublayer)),
        `sublayer ${JSON.stringify(sublayer)} was served ${JSON.stringify(served.subarray(0, 12).toString())}...`,
      ).toBe(true);
    }
  });
});
