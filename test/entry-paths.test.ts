import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  classifyName,
  entryPaths,
  extractionPaths,
  MAX_KEY_BYTES,
  tmpPathFor,
  validateKey,
} from '../src/entry-paths.js';
import { InvalidKeyError, PayloadCacheError } from '../src/errors.js';

const bytes = (text: string) => Buffer.byteLength(text, 'utf8');

/** The InvalidKeyError `validateKey` throws for `value`; fails the test if it accepts the value. */
function rejection(value: unknown, what: 'key' | 'sublayer' = 'key'): InvalidKeyError {
  try {
    validateKey(value, what);
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidKeyError);
    expect(error).toBeInstanceOf(PayloadCacheError);
    return error as InvalidKeyError;
  }
  return expect.fail(`validateKey accepted ${JSON.stringify(value)}`);
}

describe('validateKey rejects hostile keys, naming the rule', () => {
  // Each value with a pattern the rule text must match; where a value breaks two rules, either may be named.
  const hostile: [label: string, value: unknown, rule: RegExp][] = [
    ['parent traversal ../x', '../x', /\//],
    ['a path with a slash', 'a/b', /\//],
    ['a path with a backslash', 'a\\b', /\\/],
    ['the parent directory ..', '..', /"\.\."|dot/],
    ['the current directory .', '.', /"\."|dot/],
    ['the empty string', '', /empty/],
    ['an embedded NUL', 'a\u0000b', /NUL|control/],
    ['a start-of-heading control character', 'a\u0001b', /control/],
    ['a newline', 'a\nb', /control/],
    ['a tab', 'a\tb', /control/],
    ['a carriage return', 'a\rb', /control/],
    ['the unit separator \\u001f', 'a\u001fb', /control/],
    ['DEL \\u007f', 'a\u007fb', /control/],
    ['a C1 control \\u0085', 'a\u0085b', /control/],
    ['300 ASCII bytes', 'a'.repeat(300), /200.*bytes/],
    ['201 ASCII bytes', 'a'.repeat(201), /200.*bytes/],
    ['101 two-byte characters (202 bytes, 101 chars)', 'é'.repeat(101), /200.*bytes/],
    ['a lock directory name', 'x.lock', /\.lock/],
    ['a lock directory name in upper case', 'X.LOCK', /\.lock/],
    ['a manifest name', 'x.manifest.json', /\.manifest\.json/],
    ['a manifest name in mixed case', 'x.Manifest.JSON', /\.manifest\.json/],
    ['a tmp marker', 'a.tmp.b', /\.tmp\./],
    ['a tmp marker in upper case', 'a.TMP.b', /\.tmp\./],
    ['CON', 'CON', /reserved/],
    ['con.txt', 'con.txt', /reserved/],
    ['nul', 'nul', /reserved/],
    ['Aux.tar.gz', 'Aux.tar.gz', /reserved/],
    ['PRN', 'PRN', /reserved/],
    ['COM1.txt', 'COM1.txt', /reserved/],
    ['com9', 'com9', /reserved/],
    ['LPT9', 'LPT9', /reserved/],
    ['lpt1.zip', 'lpt1.zip', /reserved/],
    ['the cache directory tag', 'CACHEDIR.TAG', /CACHEDIR\.TAG/],
    ['the cache directory tag in lower case', 'cachedir.tag', /CACHEDIR\.TAG/],
    ['the name of an extraction directory', 'weo.zip.extracted.0123456789abcdef', /extraction/],
    ['the name of an extraction directory, upper case', 'WEO.ZIP.EXTRACTED.0123456789ABCDEF', /extraction/],
    ['a trailing dot', 'data.', /dot/],
    ['a trailing space', 'data ', /space/],
    ['a colon (NTFS stream)', 'a:b', /:/],
    ['U+10FFFF (Node on Windows aborts on such a path)', 'a\u{10FFFF}b', /U\+10FFFF/],
    ['a number', 42, /string/],
    ['null', null, /string/],
    ['undefined', undefined, /string/],
    ['an object', { toString: () => 'k' }, /string/],
  ];

  it.each(hostile)('%s', (_label, value, rule) => {
    const error = rejection(value);
    expect(error.code).toBe('ERR_INVALID_KEY');
    expect(error.rule).toMatch(rule);
    expect(error.key).toBe(value);
    expect(error.message).toContain(error.rule);
  });

  it('names a sublayer as a sublayer in the message', () => {
    const error = rejection('../x', 'sublayer');
    expect(error.code).toBe('ERR_INVALID_KEY');
    expect(error.message).toMatch(/^invalid sublayer /);
  });

  it('names a key as a key in the message', () => {
    expect(rejection('a/b').message).toMatch(/^invalid key /);
  });
});

describe('validateKey accepts good keys unchanged', () => {
  const good = [
    'weo_april_2024.zip',
    'data-v1.2.tar.gz',
    'données',
    'console',
    'x.lockfile',
    'CONSOLE.txt',
    'com10',
    'x.manifest.json.bak',
    'weo.zip.extracted.csv',
    'weo.zip.extracted.0123456789abcdef.bak',
    'weo.zip.extracted.0123456789abcde',
    'a.tmp',
    'tmp.b',
    'a'.repeat(200),
    'é'.repeat(100),
    // Its neighbours are fine: only U+10FFFF trips the libuv assertion.
    'a\u{10FFFE}b',
    'a\u{10FFFD}b',
  ];

  it.each(good)('%s', (key) => {
    expect(validateKey(key)).toBe(key);
    expect(validateKey(key, 'sublayer')).toBe(key);
  });

  it('accepts exactly 200 UTF-8 bytes and rejects 201', () => {
    expect(bytes('a'.repeat(200))).toBe(200);
    expect(validateKey('a'.repeat(200))).toBe('a'.repeat(200));
    expect(rejection(`${'a'.repeat(199)}é`).rule).toMatch(/200.*bytes/);
  });
});

describe('tmpPathFor', () => {
  const dir = path.join(path.sep, 'cache', 'sublayer');

  it('keeps the name within 255 bytes for a 200-byte key plus .manifest.json', () => {
    const target = path.join(dir, `${'k'.repeat(200)}.manifest.json`);
    const tmp = tmpPathFor(target);
    expect(bytes(path.basename(tmp))).toBeLessThanOrEqual(255);
    expect(path.basename(tmp)).toContain('.tmp.');
    expect(path.dirname(tmp)).toBe(dir);
  });

  it('keeps the name within 255 bytes for a 400-byte multi-byte name, without splitting a character', () => {
    const target = path.join(dir, `${'é'.repeat(199)}.manifest.json`);
    const tmp = tmpPathFor(target);
    const name = path.basename(tmp);
    expect(bytes(name)).toBeLessThanOrEqual(255);
    expect(name).toContain('.tmp.');
    expect(name).not.toContain('\uFFFD');
    expect(Buffer.from(name, 'utf8').toString('utf8')).toBe(name);
    expect(path.dirname(tmp)).toBe(dir);
  });

  it('keeps two long names that differ only at their end distinct after shortening', () => {
    const common = 'x'.repeat(250);
    const first = path.basename(tmpPathFor(path.join(dir, `${common}A`)));
    const second = path.basename(tmpPathFor(path.join(dir, `${common}B`)));
    const stem = (name: string) => name.slice(0, name.indexOf('.tmp.'));
    expect(bytes(first)).toBeLessThanOrEqual(255);
    expect(bytes(second)).toBeLessThanOrEqual(255);
    expect(stem(first)).not.toBe(stem(second));
  });

  it('starts a short name with the whole target name', () => {
    const tmp = tmpPathFor(path.join(dir, 'weo.zip'));
    expect(path.basename(tmp).startsWith('weo.zip.tmp.')).toBe(true);
    expect(path.dirname(tmp)).toBe(dir);
  });

  it('gives a different name on each call', () => {
    const target = path.join(dir, 'weo.zip');
    const names = new Set(Array.from({ length: 50 }, () => tmpPathFor(target)));
    expect(names.size).toBe(50);
  });

  it('produces names that are classified as tmp files, never as an entry', () => {
    for (const target of ['weo.zip', 'weo.zip.manifest.json', `${'k'.repeat(200)}.manifest.json`]) {
      expect(classifyName(path.basename(tmpPathFor(path.join(dir, target))))).toEqual({ kind: 'tmp' });
    }
  });
});

describe('classifyName', () => {
  const cases: [name: string, expected: ReturnType<typeof classifyName>][] = [
    ['weo.zip', { kind: 'payload', key: 'weo.zip' }],
    ['données', { kind: 'payload', key: 'données' }],
    ['weo.zip.manifest.json', { kind: 'manifest', key: 'weo.zip' }],
    ['weo.zip.lock', { kind: 'lock', key: 'weo.zip' }],
    ['weo.zip.tmp.host.123.0123456789abcdef', { kind: 'tmp' }],
    ['weo.zip.manifest.json.tmp.host.123.0123456789abcdef', { kind: 'tmp' }],
    // Only the exact tail tmpPathFor writes is a tmp name: anything else with ".tmp." is a user's file.
    ['WEO.TMP.host.1.ab', { kind: 'foreign' }],
    ['data.tmp.csv', { kind: 'foreign' }],
    ['weo.zip.tmp.host.123.0123456789ABCDEF', { kind: 'foreign' }],
    ['weo.zip.lock.tmp.my_host-1.99.fedcba9876543210', { kind: 'tmp' }],
    [
      'weo.zip.extracted.0123456789abcdef',
      { kind: 'extraction', key: 'weo.zip', shaPrefix: '0123456789abcdef' },
    ],
    ['weo.zip.extracted.0123456789abcdef.tmp.host.1.0123456789abcdef', { kind: 'tmp' }],
    // Not as the cache writes them (upper-case hex, a key no key may be): foreign, never an extraction.
    ['weo.zip.extracted.0123456789ABCDEF', { kind: 'foreign' }],
    ['CON.extracted.0123456789abcdef', { kind: 'foreign' }],
    ['weo.zip.extracted.0123456789abcde', { kind: 'payload', key: 'weo.zip.extracted.0123456789abcde' }],
    ['CACHEDIR.TAG', { kind: 'foreign' }],
    ['.manifest.json', { kind: 'foreign' }],
    ['.lock', { kind: 'foreign' }],
    ['x.lock.lock', { kind: 'foreign' }],
    ['x.lock.manifest.json', { kind: 'foreign' }],
    ['CON', { kind: 'foreign' }],
    ['nul.manifest.json', { kind: 'foreign' }],
    ['trailing.', { kind: 'foreign' }],
    [`${'a'.repeat(201)}`, { kind: 'foreign' }],
  ];

  it.each(cases)('%s', (name, expected) => {
    expect(classifyName(name)).toEqual(expected);
  });
});

describe('entryPaths', () => {
  it('gives the payload, manifest and lock paths inside the directory', () => {
    const dir = path.join(path.sep, 'cache', 'imf');
    const paths = entryPaths(dir, 'weo.zip');
    expect(paths).toEqual({
      key: 'weo.zip',
      dir,
      payload: path.join(dir, 'weo.zip'),
      manifest: path.join(dir, 'weo.zip.manifest.json'),
      lock: path.join(dir, 'weo.zip.lock'),
    });
    for (const file of [paths.payload, paths.manifest, paths.lock]) {
      expect(path.dirname(file)).toBe(dir);
    }
  });
});

describe('extractionPaths', () => {
  it('names the directory after the key and the first 16 hex digits of the sha256, in lower case', () => {
    const dir = path.join(path.sep, 'cache', 'imf');
    const sha = `0123456789ABCDEF${'0'.repeat(48)}`;
    const paths = extractionPaths(dir, 'weo.zip', sha);
    const extractionDir = path.join(dir, 'weo.zip.extracted.0123456789abcdef');
    expect(paths).toEqual({
      key: 'weo.zip',
      archiveSha256: sha.toLowerCase(),
      dir: extractionDir,
      marker: path.join(extractionDir, 'extraction.json'),
      fileList: path.join(extractionDir, 'files.jsonl'),
      content: path.join(extractionDir, 'content'),
    });
    // What a key may never be, so no payload can collide with an extraction.
    expect(() => validateKey(path.basename(paths.dir))).toThrow(/extraction/);
  });

  it('keeps the directory name within 255 bytes for the longest key', () => {
    const paths = extractionPaths(path.sep, 'é'.repeat(MAX_KEY_BYTES / 2), 'f'.repeat(64));
    expect(Buffer.byteLength(path.basename(paths.dir))).toBeLessThanOrEqual(255);
  });
});
