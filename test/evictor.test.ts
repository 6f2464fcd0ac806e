import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { entryPaths } from '../src/entry-paths.js';
import { evictionOrder, evictionShield, type ScannedEntry, scanSublayer } from '../src/evictor.js';
import { symlinksNeedPrivilege } from './helpers.js';

const DIR = path.join(path.sep, 'cache', 'imf');
const entry = (key: string, lastUsedAtMs: number, sizeBytes = 1): ScannedEntry => ({
  paths: entryPaths(DIR, key),
  sizeBytes,
  lastUsedAtMs,
});
const keys = (entries: ScannedEntry[]) => entries.map((item) => item.paths.key);

describe('evictionOrder', () => {
  it('puts the least recently used entry first', () => {
    const entries = [entry('c', 3_000), entry('a', 1_000), entry('d', 4_000), entry('b', 2_000)];
    expect(keys(evictionOrder(entries))).toEqual(['a', 'b', 'c', 'd']);
  });

  it('breaks ties by key, whatever the input order', () => {
    const forward = [entry('b', 1_000), entry('a', 1_000), entry('z', 500), entry('c', 1_000)];
    const backward = [...forward].reverse();
    expect(keys(evictionOrder(forward))).toEqual(['z', 'a', 'b', 'c']);
    expect(keys(evictionOrder(backward))).toEqual(['z', 'a', 'b', 'c']);
  });

  it('does not reorder its input', () => {
    const entries = [entry('b', 2_000), entry('a', 1_000)];
    evictionOrder(entries);
    expect(keys(entries)).toEqual(['b', 'a']);
  });

  it('returns an empty list for no entries', () => {
    expect(evictionOrder([])).toEqual([]);
  });
});

describe('evictionShield', () => {
  const nowMs = 1_800_000_000_000;
  const windowMs = 70_000;

  it('shields the key just written, however old its last use', () => {
    expect(evictionShield(entry('new', 0), 'new', nowMs, windowMs)).toBe('just-written');
  });

  it('shields an entry used inside the in-use window', () => {
    expect(evictionShield(entry('hot', nowMs - windowMs + 1), 'other', nowMs, windowMs)).toBe(
      'recently-used',
    );
    expect(evictionShield(entry('hot', nowMs), undefined, nowMs, windowMs)).toBe('recently-used');
  });

  it('shields an entry whose last use lies in the future (clock skew between hosts)', () => {
    expect(evictionShield(entry('ahead', nowMs + 5_000), undefined, nowMs, windowMs)).toBe('recently-used');
  });

  it('leaves an entry used before the window unshielded', () => {
    expect(evictionShield(entry('cold', nowMs - windowMs - 1), 'other', nowMs, windowMs)).toBeUndefined();
    expect(evictionShield(entry('cold', 0), undefined, nowMs, windowMs)).toBeUndefined();
  });

  it('shields nothing by use with a zero window', () => {
    expect(evictionShield(entry('k', nowMs - 1), undefined, nowMs, 0)).toBeUndefined();
  });
});

describe('scanSublayer', () => {
  let dir: string;
  const mtimeSeconds = 1_700_000_000;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'payload-cache-evictor-'));
  });

  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  async function writeWithMtime(name: string, data: string, seconds = mtimeSeconds): Promise<void> {
    await fsp.writeFile(path.join(dir, name), data);
    await fsp.utimes(path.join(dir, name), seconds, seconds);
  }

  it('returns an empty scan for a missing directory', async () => {
    const scan = await scanSublayer(path.join(dir, 'absent'));
    expect(scan).toEqual({ entries: [], lonePayloads: [], loneManifests: [], tmpFiles: [], locks: [] });
  });

  it.skipIf(symlinksNeedPrivilege)(
    'sorts every name into entries, lone payloads, lone manifests, tmp files and locks',
    async () => {
      await writeWithMtime('a.zip', 'aaaaa', mtimeSeconds);
      await writeWithMtime('a.zip.manifest.json', '{}');
      await writeWithMtime('b.bin', 'bb', mtimeSeconds + 10);
      await writeWithMtime('b.bin.manifest.json', '{}');
      await writeWithMtime('lone', 'lone payload', mtimeSeconds + 20);
      await writeWithMtime('ghost.manifest.json', '{}');
      await writeWithMtime('c.zip.tmp.host.1234.0123456789abcdef', 'partial', mtimeSeconds + 30);
      await fsp.mkdir(path.join(dir, 'd.zip.lock'));
      await writeWithMtime('CACHEDIR.TAG', 'Signature: 8a477f597d28d172789f06886806bc55\n');
      // A symlink named like a payload, with a manifest beside it: never an entry.
      await fsp.symlink(path.join(dir, 'a.zip'), path.join(dir, 'link.zip'));
      await writeWithMtime('link.zip.manifest.json', '{}');

      const scan = await scanSublayer(dir);

      const byKey = [...scan.entries].sort((x, y) => (x.paths.key < y.paths.key ? -1 : 1));
      expect(byKey).toEqual([
        { paths: entryPaths(dir, 'a.zip'), sizeBytes: 5, lastUsedAtMs: mtimeSeconds * 1000 },
        { paths: entryPaths(dir, 'b.bin'), sizeBytes: 2, lastUsedAtMs: (mtimeSeconds + 10) * 1000 },
      ]);
      expect(scan.entries.map((item) => item.paths.key)).not.toContain('link.zip');

      const lone = [...scan.lonePayloads].sort((x, y) => (x.paths.key < y.paths.key ? -1 : 1));
      expect(lone.map((item) => item.paths)).toEqual([entryPaths(dir, 'link.zip'), entryPaths(dir, 'lone')]);
      expect(lone.find((item) => item.paths.key === 'lone')?.mtimeMs).toBe((mtimeSeconds + 20) * 1000);

      expect(scan.loneManifests).toEqual([entryPaths(dir, 'ghost')]);
      expect(scan.tmpFiles).toEqual([
        { path: path.join(dir, 'c.zip.tmp.host.1234.0123456789abcdef'), mtimeMs: (mtimeSeconds + 30) * 1000 },
      ]);
      expect(scan.locks).toEqual([entryPaths(dir, 'd.zip')]);
    },
  );

  it('does not count a directory named like a payload as an entry', async () => {
    await fsp.mkdir(path.join(dir, 'weird'));
    await writeWithMtime('weird.manifest.json', '{}');
    const scan = await scanSublayer(dir);
    expect(scan.entries).toEqual([]);
    expect(scan.lonePayloads.map((item) => item.paths.key)).toEqual(['weird']);
    expect(scan.loneManifests).toEqual([]);
  });

  it.skipIf(symlinksNeedPrivilege)(
    'does not count a dangling symlink named like a payload as an entry',
    async () => {
      await fsp.symlink(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
      await writeWithMtime('dangling.manifest.json', '{}');
      const scan = await scanSublayer(dir);
      expect(scan.entries).toEqual([]);
      expect(scan.lonePayloads.map((item) => item.paths.key)).toEqual(['dangling']);
    },
  );
});

describe('lowWaterMark', () => {
  it('evicts 1 % below keepN once over it, and never below it for small limits', async () => {
    const { lowWaterMark } = await import('../src/evictor.js');
    expect(lowWaterMark(10_000)).toBe(9_900);
    expect(lowWaterMark(150)).toBe(149);
    expect(lowWaterMark(4)).toBe(4);
    expect(lowWaterMark(Number.POSITIVE_INFINITY)).toBe(Number.POSITIVE_INFINITY);
  });
});
