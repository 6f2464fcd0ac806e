import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { detectArchiveFormat, type ExtractOptions, extractArchive } from '../src/archive-extract.js';
import {
  ArchiveInvalidError,
  type ArchiveInvalidReason,
  ArchiveUnsafeError,
  type ArchiveUnsafeReason,
  InvalidOptionsError,
} from '../src/errors.js';
import { buildTar, buildZip, gzipped, type TarEntrySpec, type ZipEntrySpec } from './archive-builders.js';
import {
  makeTempDir,
  patternBytes,
  rejectionOf,
  removeTempDirs,
  sha256,
  symlinksNeedPrivilege,
} from './helpers.js';

afterEach(removeTempDirs);

/** A work directory holding the archive (`archive`) and an empty destination (`dest`), nothing else. */
async function workspace(bytes: Buffer, archiveName = 'archive') {
  const work = await makeTempDir('payload-cache-archive-');
  const archivePath = path.join(work, archiveName);
  await fsp.writeFile(archivePath, bytes);
  const dest = path.join(work, 'dest');
  await fsp.mkdir(dest);
  return { work, archivePath, dest };
}

/** Every path under `dir`, relative, sorted, directories with a trailing `/`; never follows a link. */
async function treeOf(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (current: string) => {
    for (const entry of await fsp.readdir(current, { withFileTypes: true })) {
      const full = path.join(current, entry.name);
      const relative = path.relative(dir, full).split(path.sep).join('/');
      if (entry.isDirectory()) {
        found.push(`${relative}/`);
        await walk(full);
      } else found.push(relative);
    }
  };
  await walk(dir);
  return found.sort();
}

/**
 * Extracts `bytes` and expects `errorClass` with `reason`; then checks that nothing is left in the
 * destination and that nothing appeared anywhere else in the work directory.
 */
async function expectRefused<E extends ArchiveUnsafeError | ArchiveInvalidError>(
  errorClass: new (...args: never[]) => E,
  bytes: Buffer,
  reason: E['reason'],
  options: ExtractOptions,
): Promise<E> {
  const { work, archivePath, dest } = await workspace(bytes);
  const error = await rejectionOf(extractArchive(archivePath, dest, options));
  expect(error).toBeInstanceOf(errorClass);
  expect((error as E).reason).toBe(reason);
  expect(await treeOf(work)).toEqual(['archive', 'dest/']);
  return error as E;
}

const expectUnsafe = async (bytes: Buffer, reason: ArchiveUnsafeReason, options: ExtractOptions = {}) => {
  const error = await expectRefused(ArchiveUnsafeError, bytes, reason, options);
  expect(error.code).toBe('ERR_ARCHIVE_UNSAFE');
  return error;
};

const expectInvalid = async (bytes: Buffer, reason: ArchiveInvalidReason, options: ExtractOptions = {}) => {
  const error = await expectRefused(ArchiveInvalidError, bytes, reason, options);
  expect(error.code).toBe('ERR_ARCHIVE_INVALID');
  return error;
};

function flipByte(bytes: Buffer, offset: number): void {
  bytes.writeUInt8(bytes.readUInt8(offset) ^ 0xff, offset);
}

const zipFile = (name: string, content: string | Buffer = 'x', extra: Partial<ZipEntrySpec> = {}) => ({
  name,
  content,
  ...extra,
});

describe('zip: hostile entries are refused and nothing is written', () => {
  it('zip-slip: ../evil.txt, after a harmless file (which is removed again)', async () => {
    const zip = buildZip([zipFile('ok.txt'), zipFile('../evil.txt')]);
    const error = await expectUnsafe(zip, 'parent-segment');
    expect(error.entryName).toBe('../evil.txt');
  });

  it('zip-slip hidden in the middle of a path: a/../../evil.txt', async () => {
    await expectUnsafe(buildZip([zipFile('a/../../evil.txt')]), 'parent-segment');
  });

  it('an absolute name pointing into the work directory itself', async () => {
    const { work } = await workspace(Buffer.alloc(0));
    const zip = buildZip([zipFile(path.join(work, 'escaped.txt'))]);
    await expectUnsafe(zip, 'absolute-path');
    expect(await treeOf(work)).toEqual(['archive', 'dest/']);
  });

  it.each(['C:\\evil.txt', 'C:/evil.txt'])('a drive letter: %s', async (name) => {
    await expectUnsafe(buildZip([zipFile(name)]), 'absolute-path');
  });

  it('a backslash, which yauzl would otherwise turn into a separator', async () => {
    await expectUnsafe(buildZip([zipFile('dir\\file.txt')]), 'backslash');
    await expectUnsafe(buildZip([zipFile('..\\evil.txt')]), 'backslash');
  });

  it('a symlink (Unix mode 0o120777)', async () => {
    await expectUnsafe(buildZip([zipFile('link', '/etc', { unixMode: 0o120777 })]), 'symlink');
  });

  it('a character device and a FIFO', async () => {
    await expectUnsafe(buildZip([zipFile('dev', '', { unixMode: 0o020644 })]), 'special-file');
    await expectUnsafe(buildZip([zipFile('fifo', '', { unixMode: 0o010644 })]), 'special-file');
  });

  it('a setuid executable', async () => {
    await expectUnsafe(buildZip([zipFile('run', '#!/bin/sh\n', { unixMode: 0o104755 })]), 'setuid-setgid');
  });

  it('the same name twice (the second would silently win)', async () => {
    await expectUnsafe(buildZip([zipFile('a.txt', 'one'), zipFile('a.txt', 'two')]), 'duplicate-name');
  });

  it('names that differ only in case', async () => {
    await expectUnsafe(buildZip([zipFile('README'), zipFile('readme')]), 'case-collision');
  });

  it('a name used as a file, then as a directory', async () => {
    await expectUnsafe(buildZip([zipFile('a'), zipFile('a/b')]), 'file-directory-conflict');
  });

  it.each(['CON', 'data/aux.txt', 'ab:c', 'trailing.', 'x|y', 'ctl\u0001'])(
    'a name Windows cannot hold: %j',
    async (name) => {
      await expectUnsafe(buildZip([zipFile(name)]), 'unportable-name');
    },
  );

  it('a zip bomb: 1 KiB that inflates to 880 KiB is past the default ratio, refused before any byte is written', async () => {
    const zip = buildZip([zipFile('zeros.bin', Buffer.alloc(880 * 1024))]);
    expect(zip.length).toBeLessThanOrEqual(1024);
    const error = await expectUnsafe(zip, 'compression-ratio');
    expect(error.message).toContain('maxCompressionRatio');
  });

  it('the same zip passes when maxCompressionRatio allows it', async () => {
    const zip = buildZip([zipFile('zeros.bin', Buffer.alloc(880 * 1024))]);
    const { archivePath, dest } = await workspace(zip);
    const result = await extractArchive(archivePath, dest, { maxCompressionRatio: 2_000 });
    expect(result.totalBytes).toBe(880 * 1024);
  });

  it('more bytes than maxExtractedBytes, refused from the declared sizes', async () => {
    const zip = buildZip([zipFile('a', patternBytes(600)), zipFile('b', patternBytes(600, 2))]);
    await expectUnsafe(zip, 'too-many-bytes', { maxExtractedBytes: 1_000 });
  });

  it('100,001 tiny entries (zip64): refused from the entry count, before any entry is read', async () => {
    const entries = Array.from({ length: 100_001 }, (_, index) => ({ name: `f${index}` }));
    const zip = buildZip(entries);
    const startedAt = performance.now();
    const error = await expectUnsafe(zip, 'too-many-entries');
    expect(error.entryName).toBeUndefined();
    expect(error.message).toContain('100001');
    expect(performance.now() - startedAt).toBeLessThan(5_000);
  });
});

describe('zip: damaged or unreadable archives are ArchiveInvalidError, and nothing stays', () => {
  // Entries up to 1 MiB are read whole, larger ones stream through yauzl: both paths hold an entry to its
  // declared size and CRC-32.
  const sizes = [
    ['read whole', 50_000],
    ['streamed', 1_200_000],
  ] as const;

  it.each(sizes)('a CRC-32 that does not match the content (%s)', async (_path, sizeBytes) => {
    await expectInvalid(
      buildZip([zipFile('a.bin', patternBytes(sizeBytes), { crc32: 0x12345678 })]),
      'corrupt',
    );
  });

  it.each(sizes)('an entry that inflates past its declared size (%s)', async (_path, sizeBytes) => {
    const lying = zipFile('a.bin', patternBytes(sizeBytes), { declaredSize: 100 });
    await expectInvalid(buildZip([lying]), 'corrupt');
  });

  it.each(sizes)('an entry that inflates to less than its declared size (%s)', async (_path, sizeBytes) => {
    const lying = zipFile('a.bin', patternBytes(sizeBytes), { declaredSize: sizeBytes + 1 });
    await expectInvalid(buildZip([lying]), 'corrupt');
  });

  it('an encrypted entry', async () => {
    await expectInvalid(buildZip([zipFile('secret.txt', 'x', { encrypted: true })]), 'unsupported');
  });

  it('a compression method other than stored or deflate', async () => {
    await expectInvalid(buildZip([zipFile('a.txt', 'x', { methodNumber: 14 })]), 'unsupported');
  });

  it('a truncated zip (the end of the central directory is gone)', async () => {
    const zip = buildZip([zipFile('a.txt', patternBytes(1000))]);
    await expectInvalid(zip.subarray(0, zip.length - 30), 'corrupt', { format: 'zip' });
  });
});

/** The tree `files` (path -> content) describes, in treeOf's form. */
function expectedTree(files: Record<string, Buffer | string>, directories: string[]): string[] {
  return [...Object.keys(files), ...directories.map((directory) => `${directory}/`)].sort();
}

async function expectContents(dest: string, files: Record<string, Buffer | string>): Promise<void> {
  for (const [name, content] of Object.entries(files)) {
    // Compared by hash: a deep comparison of large buffers is slow and its diff unreadable anyway.
    expect(sha256(await fsp.readFile(path.join(dest, name))), name).toBe(sha256(content));
  }
}

describe('good archives round-trip byte for byte', () => {
  const files: Record<string, Buffer> = {
    'README.md': Buffer.from('# data\n'),
    'empty.txt': Buffer.alloc(0),
    'data/2024/weo.csv': patternBytes(300_000, 7),
    'data/2024/zeros.bin': Buffer.alloc(5_000),
    'data/Übersicht é.csv': Buffer.from('ä,ö,ü\n'),
    'bin/run.sh': Buffer.from('#!/bin/sh\necho ok\n'),
  };
  const directories = ['bin', 'data', 'data/2024', 'data/empty-dir'];
  const modeOf = (name: string) => (name.endsWith('.sh') ? 0o755 : 0o644);

  it('zip, deflated and stored, with explicit and implied directories', async () => {
    const zip = buildZip([
      { name: 'data/', unixMode: 0o040755 },
      { name: 'data/empty-dir/', unixMode: 0o040755 },
      ...Object.entries(files).map(([name, content], index) => ({
        name,
        content,
        method: index % 2 === 0 ? ('deflate' as const) : ('store' as const),
        unixMode: 0o100000 | modeOf(name),
      })),
    ]);
    const { archivePath, dest } = await workspace(zip);
    expect(await detectArchiveFormat(archivePath)).toBe('zip');
    const result = await extractArchive(archivePath, dest);
    await expectRoundTrip(dest, result);
  });

  const tarEntries = (): TarEntrySpec[] => [
    { path: './', type: 'Directory' },
    { path: './data/', type: 'Directory' },
    { path: './data/empty-dir/', type: 'Directory' },
    ...Object.entries(files).map(([name, content]) => ({ path: `./${name}`, content, mode: modeOf(name) })),
  ];

  it('tar, with ./ prefixes as GNU tar writes them', async () => {
    const { archivePath, dest } = await workspace(buildTar(tarEntries()));
    expect(await detectArchiveFormat(archivePath)).toBe('tar');
    await expectRoundTrip(dest, await extractArchive(archivePath, dest));
  });

  it('tar.gz', async () => {
    const { archivePath, dest } = await workspace(gzipped(buildTar(tarEntries())));
    expect(await detectArchiveFormat(archivePath)).toBe('tar.gz');
    const result = await extractArchive(archivePath, dest);
    expect(result.format).toBe('tar.gz');
    await expectRoundTrip(dest, result);
  });

  async function expectRoundTrip(dest: string, result: Awaited<ReturnType<typeof extractArchive>>) {
    expect(await treeOf(dest)).toEqual(expectedTree(files, directories));
    await expectContents(dest, files);
    const listed = Object.fromEntries(result.files.map((file) => [file.path, file]));
    for (const [name, content] of Object.entries(files)) {
      expect(listed[name], name).toEqual({ path: name, sizeBytes: content.length, sha256: sha256(content) });
    }
    expect(result.totalBytes).toBe(Object.values(files).reduce((sum, content) => sum + content.length, 0));
    expect([...result.directories].sort()).toEqual(directories);
    if (process.platform !== 'win32') {
      expect((await fsp.stat(path.join(dest, 'bin/run.sh'))).mode & 0o100).toBe(0o100);
      expect((await fsp.stat(path.join(dest, 'README.md'))).mode & 0o111).toBe(0);
    }
  }

  it('a long name carried in a pax header', async () => {
    const longName = `${'deep/'.repeat(40)}file.csv`;
    const { archivePath, dest } = await workspace(
      buildTar([{ path: longName, content: 'x', paxPath: true }]),
    );
    const result = await extractArchive(archivePath, dest);
    expect(result.files.map((file) => file.path)).toEqual([longName]);
    expect(await fsp.readFile(path.join(dest, longName), 'utf8')).toBe('x');
  });

  it('a single gzip file becomes one file named after the archive without .gz', async () => {
    const content = patternBytes(100_000, 3);
    const { archivePath, dest } = await workspace(gzipSync(content), 'weo.csv.gz');
    expect(await detectArchiveFormat(archivePath)).toBe('gzip');
    const result = await extractArchive(archivePath, dest);
    expect(result.format).toBe('gzip');
    expect(await treeOf(dest)).toEqual(['weo.csv']);
    expect(sha256(await fsp.readFile(path.join(dest, 'weo.csv')))).toBe(sha256(content));
    expect(result.files).toEqual([{ path: 'weo.csv', sizeBytes: content.length, sha256: sha256(content) }]);
  });

  it('a single gzip file with gzipFileName, and a name that must pass the rules too', async () => {
    const { archivePath, dest } = await workspace(gzipSync('a,b\n'));
    await extractArchive(archivePath, dest, { gzipFileName: 'table.csv' });
    expect(await treeOf(dest)).toEqual(['table.csv']);
    const second = await workspace(gzipSync('a,b\n'));
    const error = await rejectionOf(
      extractArchive(second.archivePath, second.dest, { gzipFileName: '../x' }),
    );
    expect(error).toMatchObject({ code: 'ERR_ARCHIVE_UNSAFE', reason: 'parent-segment' });
  });
});

describe('tar and tar.gz: hostile entries are refused and nothing is written', () => {
  it('a symlink, then a file written through it', async () => {
    const tar = buildTar([
      { path: 'link', type: 'SymbolicLink', linkpath: '..' },
      { path: 'link/escaped.txt', content: 'gotcha' },
    ]);
    const error = await expectUnsafe(tar, 'symlink');
    expect(error.entryName).toBe('link');
  });

  it('a hard link to a file outside', async () => {
    await expectUnsafe(buildTar([{ path: 'passwd', type: 'Link', linkpath: '/etc/passwd' }]), 'hard-link');
  });

  it.each(['CharacterDevice', 'BlockDevice', 'FIFO'])('a %s node', async (type) => {
    await expectUnsafe(buildTar([{ path: 'node', type }]), 'special-file');
  });

  it('setuid and setgid bits', async () => {
    await expectUnsafe(buildTar([{ path: 'run', content: 'x', mode: 0o4755 }]), 'setuid-setgid');
    await expectUnsafe(buildTar([{ path: 'dir/', type: 'Directory', mode: 0o2775 }]), 'setuid-setgid');
  });

  it('absolute names and .. segments, plain and in a pax header', async () => {
    await expectUnsafe(buildTar([{ path: '/tmp/escaped', content: 'x' }]), 'absolute-path');
    await expectUnsafe(buildTar([{ path: '../escaped', content: 'x' }]), 'parent-segment');
    await expectUnsafe(buildTar([{ path: '../escaped', content: 'x', paxPath: true }]), 'parent-segment');
  });

  it('a backslash in a name (read as the archive spells it, on every platform)', async () => {
    await expectUnsafe(buildTar([{ path: '..\\escaped', content: 'x' }]), 'backslash');
  });

  it('duplicate and case-colliding names, after files already written (removed again)', async () => {
    const first = { path: 'a.txt', content: 'one' };
    await expectUnsafe(
      buildTar([first, { path: 'b.txt' }, { path: 'a.txt', content: 'two' }]),
      'duplicate-name',
    );
    await expectUnsafe(buildTar([first, { path: 'A.TXT', content: 'two' }]), 'case-collision');
  });

  it('more entries than maxEntries, counted as they stream', async () => {
    const entries = Array.from({ length: 51 }, (_, index) => ({ path: `f${index}`, content: 'x' }));
    const error = await expectUnsafe(buildTar(entries), 'too-many-entries', { maxEntries: 50 });
    expect(error.entryName).toBe('f50');
  });

  it('a tar.gz bomb: 10 MiB of zeros in a tar, gzipped to a few KiB', async () => {
    const bomb = gzipped(buildTar([{ path: 'zeros.bin', content: Buffer.alloc(10 * 1024 * 1024) }]));
    expect(bomb.length).toBeLessThan(50 * 1024);
    await expectUnsafe(bomb, 'compression-ratio');
  });

  it('a gzip bomb appended after the tar end marker (never turned into files, still bounded)', async () => {
    const tar = buildTar([{ path: 'a.txt', content: 'x' }]);
    const bomb = gzipped(Buffer.concat([tar, Buffer.alloc(10 * 1024 * 1024)]));
    await expectUnsafe(bomb, 'compression-ratio');
  });

  it('a file whose content outgrows maxExtractedBytes while it streams (sizes not declared: single gzip)', async () => {
    await expectUnsafe(gzipSync(patternBytes(10_000)), 'too-many-bytes', { maxExtractedBytes: 5_000 });
  });
});

describe('tar: damaged or unreadable archives are ArchiveInvalidError, and nothing stays', () => {
  it('a tar cut in the middle of a file', async () => {
    const tar = buildTar([{ path: 'a.bin', content: patternBytes(10_000) }], { endBlocks: false });
    await expectInvalid(tar.subarray(0, 512 + 4_000), 'corrupt');
  });

  it('a header whose checksum is wrong', async () => {
    const tar = buildTar([
      { path: 'a.txt', content: 'x' },
      { path: 'b.txt', content: 'y' },
    ]);
    flipByte(tar, 1024 + 10); // a byte of the second header's name
    await expectInvalid(tar, 'corrupt');
  });

  it('an entry type the extractor does not read (a GNU sparse file)', async () => {
    await expectInvalid(buildTar([{ path: 'sparse', type: 'SparseFile', content: 'x' }]), 'unsupported');
  });

  it('a damaged gzip stream', async () => {
    const tgz = gzipped(buildTar([{ path: 'a.bin', content: patternBytes(100_000) }]));
    flipByte(tgz, tgz.length - 6); // the CRC-32 in the gzip trailer
    await expectInvalid(tgz, 'corrupt');
  });
});

describe('formats and options', () => {
  it('bytes of no known format are ArchiveInvalidError (unknown-format)', async () => {
    await expectInvalid(Buffer.from('just some text, not an archive'), 'unknown-format');
    await expectInvalid(Buffer.alloc(0), 'unknown-format');
  });

  it('an explicit format wins over detection', async () => {
    const tar = buildTar([{ path: 'a.txt', content: 'x' }]);
    await expectInvalid(tar, 'corrupt', { format: 'zip' });
    const { archivePath, dest } = await workspace(gzipSync(tar), 'a.tgz');
    await extractArchive(archivePath, dest, { format: 'gzip', gzipFileName: 'inner.tar' });
    expect(sha256(await fsp.readFile(path.join(dest, 'inner.tar')))).toBe(sha256(tar));
  });

  it('bad options are InvalidOptionsError, before anything is read', async () => {
    const { archivePath, dest } = await workspace(buildZip([zipFile('a.txt')]));
    for (const options of [{ format: 'rar' as never }, { maxEntries: 0 }, { maxCompressionRatio: -1 }]) {
      expect(await rejectionOf(extractArchive(archivePath, dest, options))).toBeInstanceOf(
        InvalidOptionsError,
      );
    }
    expect(await treeOf(dest)).toEqual([]);
  });

  it('an abort stops the extraction, rejects with the reason and removes what was written', async () => {
    // Enough files (each fsynced) that the extraction is still running when the first one appears.
    const entries = Array.from({ length: 2_000 }, (_, index) => ({ path: `f${index}`, content: 'x' }));
    const { work, archivePath, dest } = await workspace(buildTar(entries));
    const controller = new AbortController();
    const watcher = setInterval(() => {
      fsp.readdir(dest).then(
        (names) => {
          if (names.length > 0) controller.abort(new Error('stop'));
        },
        () => {},
      );
    }, 1);
    try {
      const error = await rejectionOf(extractArchive(archivePath, dest, { signal: controller.signal }));
      expect(error).toEqual(new Error('stop'));
      expect(await treeOf(work)).toEqual(['archive', 'dest/']);
    } finally {
      clearInterval(watcher);
    }
    const aborted = new AbortController();
    aborted.abort(new Error('before'));
    expect(await rejectionOf(extractArchive(archivePath, dest, { signal: aborted.signal }))).toEqual(
      new Error('before'),
    );
  });

  it('the sha256 it reports is the file content’s', async () => {
    const content = patternBytes(2 * 1024 * 1024 + 17, 11);
    const { archivePath, dest } = await workspace(buildZip([zipFile('big.bin', content)]));
    const [file] = (await extractArchive(archivePath, dest)).files;
    expect(file?.sha256).toBe(
      createHash('sha256')
        .update(await fsp.readFile(path.join(dest, 'big.bin')))
        .digest('hex'),
    );
    expect(file?.sha256).toBe(sha256(content));
  });
});

describe('allowLinks: "inside" extracts links that stay inside, and only those', () => {
  const inside = { allowLinks: 'inside' } as const;

  it.skipIf(symlinksNeedPrivilege)(
    'a relative symbolic link to a file and one to a directory (tar)',
    async () => {
      const tar = buildTar([
        { path: 'data/v1/table.csv', content: 'a,b\n' },
        { path: 'latest', type: 'SymbolicLink', linkpath: 'data/v1' },
        { path: 'data/current.csv', type: 'SymbolicLink', linkpath: 'v1/table.csv' },
      ]);
      const { archivePath, dest } = await workspace(tar);
      const result = await extractArchive(archivePath, dest, inside);
      expect(await fsp.readlink(path.join(dest, 'latest'))).toBe('data/v1');
      expect(await fsp.readFile(path.join(dest, 'latest', 'table.csv'), 'utf8')).toBe('a,b\n');
      expect(await fsp.readFile(path.join(dest, 'data', 'current.csv'), 'utf8')).toBe('a,b\n');
      expect(
        result.files.filter((file) => file.symlinkTarget !== undefined).map((file) => file.path),
      ).toEqual(['latest', 'data/current.csv']);
    },
  );

  it.skipIf(symlinksNeedPrivilege)('a symbolic link in a zip (its target is its content)', async () => {
    const zip = buildZip([
      { name: 'notes.txt', content: 'hello' },
      { name: 'readme', content: 'notes.txt', unixMode: 0o120777 },
    ]);
    const { archivePath, dest } = await workspace(zip);
    await extractArchive(archivePath, dest, inside);
    expect(await fsp.readlink(path.join(dest, 'readme'))).toBe('notes.txt');
  });

  it.skipIf(symlinksNeedPrivilege)(
    'refuses a link that leads outside, plainly or through another link',
    async () => {
      const up = buildTar([{ path: 'up', type: 'SymbolicLink', linkpath: '../archive' }]);
      expect((await expectUnsafe(up, 'symlink', inside)).message).toContain('outside');
      // Lexically `a/../archive` is the `archive` extracted here; with `a -> .` the file system takes it to
      // the work directory's `archive` (a check that folds `..` first, as Node's non-native realpath does,
      // would let it through).
      const chained = buildTar([
        { path: 'archive', content: 'decoy inside' },
        { path: 'a', type: 'SymbolicLink', linkpath: '.' },
        { path: 'b', type: 'SymbolicLink', linkpath: 'a/../archive' },
      ]);
      expect((await expectUnsafe(chained, 'symlink', inside)).message).toContain('outside');
      const absolute = buildTar([{ path: 'etc', type: 'SymbolicLink', linkpath: '/etc' }]);
      await expectUnsafe(absolute, 'symlink', inside);
    },
  );

  it.skipIf(symlinksNeedPrivilege)(
    'refuses a link that leads to nothing, and a file written through a link',
    async () => {
      const dangling = buildTar([{ path: 'nowhere', type: 'SymbolicLink', linkpath: 'missing.csv' }]);
      expect((await expectUnsafe(dangling, 'symlink', inside)).message).toContain('nothing');
      const through = buildTar([
        { path: 'dir/', type: 'Directory' },
        { path: 'link', type: 'SymbolicLink', linkpath: 'dir' },
        { path: 'link/file.txt', content: 'x' },
      ]);
      await expectUnsafe(through, 'file-directory-conflict', inside);
    },
  );

  it('a hard link to a file extracted before it; not to anything else', async () => {
    const tar = buildTar([
      { path: 'data.csv', content: 'a,b\n' },
      { path: 'copy.csv', type: 'Link', linkpath: 'data.csv' },
    ]);
    const { archivePath, dest } = await workspace(tar);
    const result = await extractArchive(archivePath, dest, inside);
    expect(await fsp.readFile(path.join(dest, 'copy.csv'), 'utf8')).toBe('a,b\n');
    expect(result.files.map((file) => [file.path, file.sizeBytes])).toEqual([
      ['data.csv', 4],
      ['copy.csv', 4],
    ]);
    await expectUnsafe(buildTar([{ path: 'x', type: 'Link', linkpath: 'later.csv' }]), 'hard-link', inside);
    await expectUnsafe(buildTar([{ path: 'x', type: 'Link', linkpath: '../archive' }]), 'hard-link', inside);
    const toDirectory = buildTar([
      { path: 'dir/', type: 'Directory' },
      { path: 'x', type: 'Link', linkpath: 'dir' },
    ]);
    await expectUnsafe(toDirectory, 'hard-link', inside);
  });

  it('bad values of allowLinks are InvalidOptionsError', async () => {
    const { archivePath, dest } = await workspace(buildTar([{ path: 'a', content: 'x' }]));
    const error = await rejectionOf(extractArchive(archivePath, dest, { allowLinks: 'all' as never }));
    expect(error).toBeInstanceOf(InvalidOptionsError);
  });
});
