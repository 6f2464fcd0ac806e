import { existsSync, promises as fsp, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../src/atomic-writer.js';
import {
  isExpired,
  type Manifest,
  manifestText,
  parseManifest,
  parseTimestamp,
  readManifest,
} from '../src/manifest.js';
import { symlinksNeedPrivilege } from './helpers.js';

const SHA = 'a'.repeat(64);
const VALID_V1 = {
  schema_version: 1,
  key: 'weo_april_2024.zip',
  created_at: '2026-11-25T14:51:57.123Z',
  size_bytes: 48213,
  sha256: SHA,
  etag: '"abc"',
  last_modified: 'Wed, 21 Oct 2026 07:28:00 GMT',
};
const IMF_READER_1_5 =
  '{"schema_version":"1.5.0","created_at":"2026-04-29T10:00:00+0000","size_bytes":48213}';

/** Parses `fields` as manifest JSON; fails the test if they are not a valid manifest. */
function manifestOf(fields: Record<string, unknown>): Manifest {
  return parseManifest(JSON.stringify(fields)) ?? expect.fail(`not a manifest: ${JSON.stringify(fields)}`);
}

const withField = (field: string, value: unknown) => JSON.stringify({ ...VALID_V1, [field]: value });
const withoutField = (field: string) => {
  const copy: Record<string, unknown> = { ...VALID_V1 };
  delete copy[field];
  return JSON.stringify(copy);
};

describe('parseManifest', () => {
  it('accepts a valid v1 manifest with every field', () => {
    expect(parseManifest(JSON.stringify(VALID_V1))).toEqual(VALID_V1);
  });

  it('keeps unknown fields', () => {
    const parsed = parseManifest(JSON.stringify({ ...VALID_V1, origin_url: 'https://x/y', retries: 2 }));
    expect(parsed).toMatchObject({ ...VALID_V1, origin_url: 'https://x/y', retries: 2 });
  });

  it('accepts a manifest with only the required fields', () => {
    const parsed = parseManifest('{"schema_version":1,"created_at":"2026-11-25T14:51:57Z","size_bytes":0}');
    expect(parsed?.schema_version).toBe(1);
    expect(parsed?.size_bytes).toBe(0);
    expect(parsed?.created_at).toBe('2026-11-25T14:51:57Z');
    expect(parsed?.sha256).toBeUndefined();
  });

  it('accepts the Python imf_reader 1.5 format (string version, +0000 zone, no sha256)', () => {
    const parsed = parseManifest(IMF_READER_1_5);
    expect(parsed).toBeDefined();
    expect(parsed?.schema_version).toBe('1.5.0');
    expect(parsed?.created_at).toBe('2026-04-29T10:00:00+0000');
    expect(parsed?.size_bytes).toBe(48213);
    expect(parsed?.sha256).toBeUndefined();
  });

  const invalid: [label: string, text: string][] = [
    ['garbage text', 'not json at all {'],
    ['an empty file', ''],
    ['truncated JSON', JSON.stringify(VALID_V1).slice(0, 40)],
    ['a JSON array', JSON.stringify([VALID_V1])],
    ['JSON null', 'null'],
    ['a JSON number', '42'],
    ['a JSON string', '"manifest"'],
    ['size_bytes as a string', withField('size_bytes', '48213')],
    ['negative size_bytes', withField('size_bytes', -1)],
    ['fractional size_bytes', withField('size_bytes', 1.5)],
    ['size_bytes null', withField('size_bytes', null)],
    ['numeric created_at', withField('created_at', 1764082317123)],
    ['created_at "yesterday"', withField('created_at', 'yesterday')],
    ['created_at as a bare date', withField('created_at', '2026-04-29')],
    ['created_at without a zone', withField('created_at', '2026-04-29T10:00:00')],
    ['created_at with an impossible month', withField('created_at', '2026-13-01T10:00:00Z')],
    ['missing created_at', withoutField('created_at')],
    ['missing size_bytes', withoutField('size_bytes')],
    ['missing schema_version', withoutField('schema_version')],
    ['empty string schema_version', withField('schema_version', '')],
    ['sha256 too short', withField('sha256', 'abc123')],
    ['sha256 not hex', withField('sha256', 'g'.repeat(64))],
    ['sha256 as a number', withField('sha256', 12345)],
    ['key as a number', withField('key', 7)],
  ];

  it.each(invalid)('returns undefined, never throws, for %s', (_label, text) => {
    expect(() => parseManifest(text)).not.toThrow();
    expect(parseManifest(text)).toBeUndefined();
  });
});

describe('parseTimestamp', () => {
  const tenUtc = Date.UTC(2026, 3, 29, 10, 0, 0);

  it.each([
    ['2026-04-29T10:00:00Z', tenUtc],
    ['2026-04-29T10:00:00.123Z', tenUtc + 123],
    ['2026-04-29T10:00:00+00:00', tenUtc],
    ['2026-04-29T10:00:00+0000', tenUtc],
    ['2026-04-29T10:00:00+0200', tenUtc - 2 * 3_600_000],
    ['2026-04-29T10:00:00-0130', tenUtc + 90 * 60_000],
    ['2026-04-29T10:00:00-01:30', tenUtc + 90 * 60_000],
  ])('%s', (text, expected) => {
    expect(parseTimestamp(text)).toBe(expected);
  });

  it.each(['yesterday', '2026-04-29', '2026-04-29T10:00:00', '1764082317123', ''])('%s is NaN', (text) => {
    expect(parseTimestamp(text)).toBeNaN();
  });
});

describe('isExpired', () => {
  const createdAtMs = Date.UTC(2026, 10, 25, 12, 0, 0);
  const manifestAt = (ms: number): Manifest =>
    manifestOf({ schema_version: 1, created_at: new Date(ms).toISOString(), size_bytes: 1 });
  const manifest = manifestAt(createdAtMs);
  const hour = 3_600_000;
  const skew = 300_000;

  it('is fresh just before ttl has passed and expired just after', () => {
    expect(isExpired(manifest, { ttlMs: hour, maxClockSkewMs: skew, nowMs: createdAtMs + hour - 1 })).toBe(
      false,
    );
    expect(isExpired(manifest, { ttlMs: hour, maxClockSkewMs: skew, nowMs: createdAtMs + hour + 1 })).toBe(
      true,
    );
  });

  it('treats ttl 0 as expired at once', () => {
    expect(isExpired(manifest, { ttlMs: 0, maxClockSkewMs: skew, nowMs: createdAtMs })).toBe(true);
  });

  it('never expires with ttl Infinity', () => {
    const tenYearsLater = createdAtMs + 10 * 365 * 24 * hour;
    expect(
      isExpired(manifest, { ttlMs: Number.POSITIVE_INFINITY, maxClockSkewMs: skew, nowMs: tenYearsLater }),
    ).toBe(false);
  });

  it('counts a created_at further in the future than maxClockSkewMs as expired', () => {
    const nowMs = createdAtMs;
    const future = manifestAt(nowMs + skew + 1_000);
    expect(isExpired(future, { ttlMs: hour, maxClockSkewMs: skew, nowMs })).toBe(true);
    expect(isExpired(future, { ttlMs: Number.POSITIVE_INFINITY, maxClockSkewMs: skew, nowMs })).toBe(true);
  });

  it('keeps a created_at in the future but within maxClockSkewMs fresh', () => {
    const nowMs = createdAtMs;
    const slightlyAhead = manifestAt(nowMs + skew - 1_000);
    expect(isExpired(slightlyAhead, { ttlMs: hour, maxClockSkewMs: skew, nowMs })).toBe(false);
  });

  it('reads imf_reader offsets (+0000, -0130) when judging freshness', () => {
    const imf = manifestOf(JSON.parse(IMF_READER_1_5));
    const tenUtc = Date.UTC(2026, 3, 29, 10, 0, 0);
    expect(isExpired(imf, { ttlMs: hour, maxClockSkewMs: skew, nowMs: tenUtc + 30 * 60_000 })).toBe(false);
    expect(isExpired(imf, { ttlMs: 20 * 60_000, maxClockSkewMs: skew, nowMs: tenUtc + 30 * 60_000 })).toBe(
      true,
    );
    // 10:00 at -01:30 is 11:30 UTC: at 11:00 UTC it is 30 min in the future, beyond a 5-minute skew.
    const behind = manifestOf({
      schema_version: '1.5.0',
      created_at: '2026-04-29T10:00:00-0130',
      size_bytes: 1,
    });
    expect(isExpired(behind, { ttlMs: hour, maxClockSkewMs: skew, nowMs: tenUtc + hour })).toBe(true);
    expect(isExpired(behind, { ttlMs: hour, maxClockSkewMs: skew, nowMs: tenUtc + 2 * hour })).toBe(false);
  });
});

describe('readManifest and manifests written atomically on disk', () => {
  let dir: string;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'payload-cache-manifest-'));
  });

  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('returns undefined for a missing file', async () => {
    expect(await readManifest(path.join(dir, 'absent.manifest.json'))).toBeUndefined();
  });

  it('reads a valid manifest', async () => {
    const file = path.join(dir, 'k.manifest.json');
    await fsp.writeFile(file, JSON.stringify(VALID_V1));
    expect(await readManifest(file)).toEqual(VALID_V1);
  });

  it.skipIf(symlinksNeedPrivilege)('does not follow a symlink to a valid manifest', async () => {
    const target = path.join(dir, 'real.json');
    await fsp.writeFile(target, JSON.stringify(VALID_V1));
    const link = path.join(dir, 'k.manifest.json');
    await fsp.symlink(target, link);
    expect(await readManifest(target)).toEqual(VALID_V1);
    expect(await readManifest(link)).toBeUndefined();
  });

  it('returns undefined for a valid manifest padded past 64 KiB, and reads one of exactly 64 KiB', async () => {
    const text = JSON.stringify(VALID_V1);
    const exact = path.join(dir, 'exact.manifest.json');
    await fsp.writeFile(exact, text + ' '.repeat(64 * 1024 - Buffer.byteLength(text)));
    expect((await fsp.stat(exact)).size).toBe(64 * 1024);
    expect(await readManifest(exact)).toEqual(VALID_V1);

    const oversized = path.join(dir, 'big.manifest.json');
    await fsp.writeFile(oversized, text + ' '.repeat(64 * 1024 + 1 - Buffer.byteLength(text)));
    expect((await fsp.stat(oversized)).size).toBe(64 * 1024 + 1);
    expect(await readManifest(oversized)).toBeUndefined();
  });

  it('returns undefined for a directory or a garbage file', async () => {
    const asDir = path.join(dir, 'd.manifest.json');
    await fsp.mkdir(asDir);
    expect(await readManifest(asDir)).toBeUndefined();
    const garbage = path.join(dir, 'g.manifest.json');
    await fsp.writeFile(garbage, Buffer.from([0xff, 0x00, 0x7b, 0x22]));
    expect(await readManifest(garbage)).toBeUndefined();
  });

  // Read through a plain descriptor (no FileHandle to close it on collection): a path that skipped the close
  // would leak one per hit. Counted in /proc (Linux only: elsewhere, Wine included, /proc does not count
  // this process's descriptors).
  it.skipIf(process.platform !== 'linux' || !existsSync('/proc/self/fd'))(
    'closes its descriptor on every path: a valid manifest, one past the first read, a directory, garbage',
    async () => {
      const text = JSON.stringify(VALID_V1);
      const files = {
        valid: text,
        long: text + ' '.repeat(8 * 1024),
        garbage: '{"schema_version":',
      };
      for (const [name, content] of Object.entries(files)) await fsp.writeFile(path.join(dir, name), content);
      await fsp.mkdir(path.join(dir, 'directory'));
      const openDescriptors = () => readdirSync('/proc/self/fd').length;
      const before = openDescriptors();
      for (let round = 0; round < 50; round++) {
        for (const name of [...Object.keys(files), 'directory', 'absent'])
          await readManifest(path.join(dir, name));
      }
      expect(openDescriptors()).toBe(before);
    },
  );

  it('round-trips through writeFileAtomic(manifestText) and leaves no tmp file behind', async () => {
    const file = path.join(dir, 'weo.zip.manifest.json');
    const manifest = manifestOf({ ...VALID_V1, origin_url: 'https://example.org/weo.zip' });
    await writeFileAtomic(file, manifestText(manifest));
    expect(await readManifest(file)).toEqual(manifest);
    expect(await fsp.readdir(dir)).toEqual(['weo.zip.manifest.json']);
  });

  it('replaces an existing manifest and leaves no tmp file behind', async () => {
    const file = path.join(dir, 'weo.zip.manifest.json');
    await writeFileAtomic(file, manifestText(manifestOf(VALID_V1)));
    const renewed = manifestOf({ ...VALID_V1, created_at: '2026-12-01T00:00:00.000Z' });
    await writeFileAtomic(file, manifestText(renewed));
    expect(await readManifest(file)).toEqual(renewed);
    const names = await fsp.readdir(dir);
    expect(names).toEqual(['weo.zip.manifest.json']);
    expect(names.some((name) => name.includes('.tmp.'))).toBe(false);
  });
});

describe('impossible calendar dates', () => {
  it('rejects a created_at on a day that does not exist instead of rolling it over', () => {
    expect(parseTimestamp('2026-02-30T10:00:00Z')).toBeNaN();
    expect(parseTimestamp('2028-02-29T10:00:00Z')).toBe(Date.parse('2028-02-29T10:00:00Z'));
  });
});
