import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { entryPaths } from '../src/entry-paths.js';
import { manifestCount, readSublayer, scanSublayer } from '../src/sublayer-scan.js';
import { symlinksNeedPrivilege } from './helpers.js';

describe('scanSublayer', () => {
  let dir: string;
  const mtimeSeconds = 1_700_000_000;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'payload-cache-scan-'));
  });

  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  async function writeWithMtime(name: string, data: string, seconds = mtimeSeconds): Promise<void> {
    await fsp.writeFile(path.join(dir, name), data);
    await fsp.utimes(path.join(dir, name), seconds, seconds);
  }
  const byPath = <T extends { path: string }>(items: T[]) =>
    [...items].sort((a, b) => (a.path < b.path ? -1 : 1));

  it('returns an empty scan for a missing directory', async () => {
    const scan = await scanSublayer(path.join(dir, 'absent'));
    expect(scan).toEqual({
      entries: [],
      lonePayloads: [],
      loneManifests: [],
      tmpObjects: [],
      locks: [],
      extractions: [],
      foreign: [],
    });
  });

  it('reads a sublayer of more names than one read returns (it reads in chunks), losing none', async () => {
    const keys = Array.from({ length: 1_300 }, (_, index) => `k${index}`);
    for (const key of keys) {
      await fsp.writeFile(path.join(dir, key), 'x');
      await fsp.writeFile(path.join(dir, `${key}.manifest.json`), '{}');
    }
    await fsp.writeFile(path.join(dir, 'lone.manifest.json'), '{}');
    const listing = await readSublayer(dir);
    expect(listing.size).toBe(2 * keys.length + 1);
    // An upper bound of the entries: a manifest without its payload counts too.
    expect(manifestCount(listing)).toBe(keys.length + 1);
    const scan = await scanSublayer(dir, { listing, concurrency: 4 });
    expect(scan.entries.map((entry) => entry.paths.key).sort()).toEqual([...keys].sort());
    expect(scan.loneManifests.map((paths) => paths.key)).toEqual(['lone']);
  });

  it.skipIf(symlinksNeedPrivilege)('refuses to read a sublayer through a symlink', async () => {
    await fsp.mkdir(path.join(dir, 'real'));
    await fsp.symlink(path.join(dir, 'real'), path.join(dir, 'link'));
    await expect(readSublayer(path.join(dir, 'link'))).rejects.toMatchObject({ code: 'ERR_UNSAFE_PATH' });
    expect((await readSublayer(path.join(dir, 'absent'))).size).toBe(0);
  });

  it('sorts extraction directories and their tmp directories by name; other names at those shapes are foreign', async () => {
    const sha = '0123456789abcdef';
    await fsp.mkdir(path.join(dir, `weo.zip.extracted.${sha}`));
    await fsp.mkdir(path.join(dir, `weo.zip.extracted.${sha}.tmp.host.42.${'a'.repeat(16)}`));
    await fsp.writeFile(path.join(dir, `file.zip.extracted.${sha}`), 'a file at an extraction name');
    await fsp.mkdir(path.join(dir, `UPPER.zip.extracted.${sha.toUpperCase()}`));
    const scan = await scanSublayer(dir);
    expect(scan.extractions).toEqual([
      { path: path.join(dir, `weo.zip.extracted.${sha}`), key: 'weo.zip', shaPrefix: sha },
    ]);
    expect(scan.tmpObjects.map((tmp) => tmp.extraction)).toEqual([{ key: 'weo.zip', shaPrefix: sha }]);
    expect(scan.foreign.map((item) => [path.basename(item.path), item.reason]).sort()).toEqual([
      [`UPPER.zip.extracted.${sha.toUpperCase()}`, 'unknown-name'],
      [`file.zip.extracted.${sha}`, 'not-a-regular-file'],
    ]);
  });

  it.skipIf(symlinksNeedPrivilege)(
    'sorts every name into entries, lone payloads, lone manifests, tmp objects, locks and foreign things',
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
      // A symlink named like a payload, with a manifest beside it: never an entry, and not ours.
      await fsp.symlink(path.join(dir, 'a.zip'), path.join(dir, 'link.zip'));
      await writeWithMtime('link.zip.manifest.json', '{}');
      // Names with ".tmp." that the cache did not give: a user's file, and a directory.
      await writeWithMtime('data.tmp.csv', 'user data');
      await fsp.mkdir(path.join(dir, 'x.tmp.host.1.0123456789abcdef'));

      const scan = await scanSublayer(dir);

      const byKey = [...scan.entries].sort((x, y) => (x.paths.key < y.paths.key ? -1 : 1));
      expect(byKey).toEqual([
        { paths: entryPaths(dir, 'a.zip'), sizeBytes: 5, lastUsedAtMs: mtimeSeconds * 1000 },
        { paths: entryPaths(dir, 'b.bin'), sizeBytes: 2, lastUsedAtMs: (mtimeSeconds + 10) * 1000 },
      ]);
      expect(scan.lonePayloads).toEqual([
        { paths: entryPaths(dir, 'lone'), sizeBytes: 12, mtimeMs: (mtimeSeconds + 20) * 1000 },
      ]);
      const lone = [...scan.loneManifests].map((paths) => paths.key).sort();
      expect(lone).toEqual(['ghost', 'link.zip']);
      expect(scan.tmpObjects).toEqual([
        {
          path: path.join(dir, 'c.zip.tmp.host.1234.0123456789abcdef'),
          sizeBytes: 7,
          mtimeMs: (mtimeSeconds + 30) * 1000,
          isDirectory: false,
        },
      ]);
      expect(scan.locks).toEqual([entryPaths(dir, 'd.zip')]);
      expect(byPath(scan.foreign)).toEqual(
        byPath([
          { path: path.join(dir, 'CACHEDIR.TAG'), reason: 'unknown-name' },
          { path: path.join(dir, 'link.zip'), reason: 'not-a-regular-file' },
          { path: path.join(dir, 'data.tmp.csv'), reason: 'unknown-name' },
          { path: path.join(dir, 'x.tmp.host.1.0123456789abcdef'), reason: 'not-a-regular-file' },
        ]),
      );
    },
  );

  it('counts a directory named like a payload as foreign, never as an entry or a lone payload', async () => {
    await fsp.mkdir(path.join(dir, 'weird'));
    await writeWithMtime('weird.manifest.json', '{}');
    const scan = await scanSublayer(dir);
    expect(scan.entries).toEqual([]);
    expect(scan.lonePayloads).toEqual([]);
    expect(scan.loneManifests).toEqual([entryPaths(dir, 'weird')]);
    expect(scan.foreign).toEqual([{ path: path.join(dir, 'weird'), reason: 'not-a-regular-file' }]);
  });

  it('counts directories at manifest and tmp names and files at lock names as foreign', async () => {
    await fsp.mkdir(path.join(dir, 'photos.manifest.json'));
    await writeWithMtime('backup.lock', 'a file, not a lock');
    await writeWithMtime('photos', 'payload-like');
    const scan = await scanSublayer(dir);
    expect(scan.entries).toEqual([]);
    expect(scan.locks).toEqual([]);
    expect(byPath(scan.foreign)).toEqual(
      byPath([
        { path: path.join(dir, 'photos.manifest.json'), reason: 'not-a-regular-file' },
        { path: path.join(dir, 'backup.lock'), reason: 'not-a-regular-file' },
      ]),
    );
    expect(scan.lonePayloads.map((lone) => lone.paths.key)).toEqual(['photos']);
  });

  it.skipIf(symlinksNeedPrivilege)('counts a dangling symlink named like a payload as foreign', async () => {
    await fsp.symlink(path.join(dir, 'nowhere'), path.join(dir, 'dangling'));
    await writeWithMtime('dangling.manifest.json', '{}');
    const scan = await scanSublayer(dir);
    expect(scan.entries).toEqual([]);
    expect(scan.foreign).toEqual([{ path: path.join(dir, 'dangling'), reason: 'not-a-regular-file' }]);
  });
});
