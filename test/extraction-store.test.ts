import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { extractionPaths } from '../src/entry-paths.js';
import { ArchiveUnsafeError } from '../src/errors.js';
import { lookupExtraction, removeExtractionTree } from '../src/extraction-on-disk.js';
import { prepareExtraction } from '../src/extraction-store.js';
import { sha256OfFile } from '../src/file-system.js';
import { buildZip } from './archive-builders.js';
import {
  makeTempDir,
  patternBytes,
  rejectionOf,
  removeTempDirs,
  sha256,
  symlinksNeedPrivilege,
} from './helpers.js';

afterEach(removeTempDirs);

const KEY = 'data.zip';
const NOW_MS = Date.parse('2026-06-01T12:00:00Z');

async function sublayerWith(archive: Buffer) {
  const dir = await makeTempDir('payload-cache-extraction-store-');
  const archivePath = path.join(dir, KEY);
  await fsp.writeFile(archivePath, archive);
  return { dir, archivePath, paths: extractionPaths(dir, KEY, sha256(archive)) };
}

describe('prepareExtraction and publish', () => {
  it('builds the tree out of sight and publishes it with its marker and file list in one rename', async () => {
    const archive = buildZip([
      { name: 'a.txt', content: 'alpha' },
      { name: 'sub/b.bin', content: patternBytes(10_000) },
    ]);
    const { dir, archivePath, paths } = await sublayerWith(archive);
    const prepared = await prepareExtraction(paths, archivePath, { nowMs: NOW_MS });
    // Before publish: only a tmp directory beside the archive, and no extraction by its name.
    const before = await fsp.readdir(dir);
    expect(before.filter((name) => name !== KEY)).toEqual([
      expect.stringMatching(/\.extracted\.[0-9a-f]{16}\.tmp\./),
    ]);
    expect(await lookupExtraction(paths)).toBeUndefined();

    expect(await prepared.publish()).toBe('published');
    expect((await fsp.readdir(dir)).sort()).toEqual([KEY, path.basename(paths.dir)].sort());
    const found = await lookupExtraction(paths);
    expect(found?.marker).toMatchObject({
      kind: 'payload-cache-extraction',
      key: KEY,
      archive_sha256: sha256(archive),
      complete: true,
      format: 'zip',
      file_count: 2,
      total_bytes: 10_005,
      created_at: new Date(NOW_MS).toISOString(),
    });
    expect(found?.lastUsedAtMs).toBe(NOW_MS);
    expect(await fsp.readFile(path.join(paths.content, 'a.txt'), 'utf8')).toBe('alpha');
    const lines = (await fsp.readFile(paths.fileList, 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    expect(lines).toEqual([
      { path: 'a.txt', size_bytes: 5, sha256: sha256('alpha') },
      { path: 'sub/b.bin', size_bytes: 10_000, sha256: sha256(patternBytes(10_000)) },
    ]);
  });

  it('a hostile archive leaves nothing behind, not even the tmp directory', async () => {
    const { dir, archivePath, paths } = await sublayerWith(buildZip([{ name: '../x', content: 'x' }]));
    expect(await rejectionOf(prepareExtraction(paths, archivePath, { nowMs: NOW_MS }))).toBeInstanceOf(
      ArchiveUnsafeError,
    );
    expect(await fsp.readdir(dir)).toEqual([KEY]);
  });

  it('discard removes the prepared tree', async () => {
    const { dir, archivePath, paths } = await sublayerWith(buildZip([{ name: 'a.txt', content: 'a' }]));
    await (await prepareExtraction(paths, archivePath, { nowMs: NOW_MS })).discard();
    expect(await fsp.readdir(dir)).toEqual([KEY]);
  });

  it('a second writer of the same archive (a lock that failed open) drops its copy; the first stands', async () => {
    const { dir, archivePath, paths } = await sublayerWith(buildZip([{ name: 'a.txt', content: 'a' }]));
    const first = await prepareExtraction(paths, archivePath, { nowMs: NOW_MS });
    const second = await prepareExtraction(paths, archivePath, { nowMs: NOW_MS + 1_000 });
    expect(await first.publish()).toBe('published');
    expect(await second.publish()).toBe('already-published');
    expect((await fsp.readdir(dir)).sort()).toEqual([KEY, path.basename(paths.dir)].sort());
    expect((await lookupExtraction(paths))?.marker.created_at).toBe(new Date(NOW_MS).toISOString());
  });
});

describe('lookupExtraction is a miss for anything but a complete marker of this key and archive', () => {
  async function published() {
    const archive = buildZip([{ name: 'a.txt', content: 'a' }]);
    const { archivePath, paths } = await sublayerWith(archive);
    await (await prepareExtraction(paths, archivePath, { nowMs: NOW_MS })).publish();
    const marker = JSON.parse(await fsp.readFile(paths.marker, 'utf8')) as Record<string, unknown>;
    return { paths, marker };
  }

  it.each([
    [
      'another archive with the same 16-digit prefix',
      (sha: string) => ({ archive_sha256: `${sha.slice(0, 16)}${'0'.repeat(48)}` }),
    ],
    ['another key', () => ({ key: 'other.zip' })],
    ['an incomplete extraction', () => ({ complete: false })],
    ['another kind of file', () => ({ kind: 'something-else' })],
  ])('%s', async (_label, change) => {
    const { paths, marker } = await published();
    expect(await lookupExtraction(paths)).toBeDefined();
    await fsp.writeFile(paths.marker, JSON.stringify({ ...marker, ...change(paths.archiveSha256) }));
    expect(await lookupExtraction(paths)).toBeUndefined();
  });

  it('a marker that is not JSON, or missing', async () => {
    const { paths } = await published();
    await fsp.writeFile(paths.marker, '{not json');
    expect(await lookupExtraction(paths)).toBeUndefined();
    await fsp.unlink(paths.marker);
    expect(await lookupExtraction(paths)).toBeUndefined();
  });

  it.skipIf(symlinksNeedPrivilege)('a marker that is a symlink to a valid marker', async () => {
    const { paths } = await published();
    const elsewhere = path.join(path.dirname(paths.dir), 'copy.json');
    await fsp.rename(paths.marker, elsewhere);
    await fsp.symlink(elsewhere, paths.marker);
    expect(await lookupExtraction(paths)).toBeUndefined();
  });
});

describe('removeExtractionTree', () => {
  it.skipIf(symlinksNeedPrivilege)('removes the tree but never follows a symlink out of it', async () => {
    const work = await makeTempDir('payload-cache-remove-tree-');
    const outside = path.join(work, 'outside');
    await fsp.mkdir(outside);
    await fsp.writeFile(path.join(outside, 'precious.txt'), 'keep me');
    const tree = path.join(work, 'tree');
    await fsp.mkdir(path.join(tree, 'a', 'b'), { recursive: true });
    await fsp.writeFile(path.join(tree, 'a', 'b', 'file.txt'), 'x');
    await fsp.symlink(outside, path.join(tree, 'a', 'link-to-dir'));
    await fsp.symlink(path.join(outside, 'precious.txt'), path.join(tree, 'link-to-file'));
    expect(await removeExtractionTree(tree)).toBe(true);
    expect(await fsp.readdir(work)).toEqual(['outside']);
    expect(await fsp.readFile(path.join(outside, 'precious.txt'), 'utf8')).toBe('keep me');
    expect(await removeExtractionTree(tree)).toBe(false);
  });
});

describe('sha256OfFile', () => {
  it('hashes the whole file', async () => {
    const { archivePath } = await sublayerWith(patternBytes(3 * 1024 * 1024));
    expect(await sha256OfFile(archivePath)).toBe(sha256(patternBytes(3 * 1024 * 1024)));
  });
});
