import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PayloadWriter } from '../src/atomic-writer.js';
import { entryPaths } from '../src/entry-paths.js';
import { commitEntry, removeEntryIfUnchanged, sealEntry } from '../src/entry-store.js';
import { manifestText } from '../src/manifest.js';
import { lockHolder, tryLock } from '../src/soft-lock.js';
import { makeTempDir, removeTempDirs } from './helpers.js';

afterEach(removeTempDirs);

const SHA256_OF_NOTHING = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** A writer whose seal (the payload's fsync) ends only when the test says so, or fails. */
function writerSealedBy(seal: Promise<void>): PayloadWriter {
  return { sizeBytes: 0, sha256: SHA256_OF_NOTHING, seal: () => seal } as unknown as PayloadWriter;
}

function deferred() {
  let resolve!: () => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Polls `condition` for up to 5 s; whether it came true. */
async function waitFor(condition: () => Promise<boolean>): Promise<boolean> {
  for (let i = 0; i < 500; i++) {
    if (await condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return false;
}

const tmpNames = async (dir: string) => (await fsp.readdir(dir)).filter((name) => name.includes('.tmp.'));

describe('sealEntry (the payload and the pending manifest are flushed at once)', () => {
  it('resolves only once the payload is sealed, with the manifest already written under a tmp name', async () => {
    const dir = await makeTempDir();
    const paths = entryPaths(dir, 'k');
    const seal = deferred();
    let resolved = false;
    const sealing = sealEntry(paths, writerSealedBy(seal.promise), {
      createdAtMs: Date.UTC(2026, 0, 1),
    }).then((pending) => {
      resolved = true;
      return pending;
    });

    // The manifest's tmp file is written while the payload's fsync has not ended...
    const written = await waitFor(async () => {
      const [name] = await tmpNames(dir);
      return name !== undefined && (await fsp.stat(path.join(dir, name))).size > 0;
    });
    expect(written).toBe(true);
    // ...but nothing may be renamed until that fsync has ended: the commit waits for both. (Given a moment
    // to show itself, a sealEntry that did not wait would have resolved by now.)
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(resolved).toBe(false);

    seal.resolve();
    const pending = await sealing;
    expect(JSON.parse(await fsp.readFile(pending.tmpPath, 'utf8'))).toMatchObject({
      key: 'k',
      size_bytes: 0,
      sha256: SHA256_OF_NOTHING,
      created_at: '2026-01-01T00:00:00.000Z',
    });
    expect(await fsp.readdir(dir)).toEqual([path.basename(pending.tmpPath)]);
  });

  it('removes the pending manifest again when the payload cannot be sealed (a failed fsync)', async () => {
    const dir = await makeTempDir();
    const paths = entryPaths(dir, 'k');
    const eio = Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });

    await expect(sealEntry(paths, writerSealedBy(Promise.reject(eio)), { createdAtMs: 0 })).rejects.toBe(eio);

    expect(await fsp.readdir(dir)).toEqual([]);
  });

  it('fails when the pending manifest cannot be written, after the seal has ended', async () => {
    const dir = await makeTempDir();
    const paths = entryPaths(path.join(dir, 'gone'), 'k');

    await expect(
      sealEntry(paths, writerSealedBy(Promise.resolve()), { createdAtMs: 0 }),
    ).rejects.toMatchObject({
      code: 'ENOENT',
    });
  });
});

describe('commitEntry when a lock failed open (another writer publishes between our renames)', () => {
  const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

  /** Writer A's entry, sealed and about to be committed; `race` runs where A checks its payload is still there. */
  async function writerA(dir: string, race: () => Promise<void>) {
    const paths = entryPaths(dir, 'k');
    const writer = await PayloadWriter.create(paths.payload);
    await writer.writeBody('bytes of A', new AbortController().signal);
    const pending = await sealEntry(paths, writer, { createdAtMs: Date.UTC(2026, 0, 1) });
    const isPublishedAt = writer.isPublishedAt.bind(writer);
    writer.isPublishedAt = async (filePath: string) => {
      await race();
      return isPublishedAt(filePath);
    };
    return { paths, writer, pending };
  }

  /** Writer B publishing by rename, as commitEntry does: its payload, then (unless told not to) its manifest. */
  async function publishB(dir: string, { manifest = true } = {}): Promise<string> {
    const paths = entryPaths(dir, 'k');
    const text = manifestText({
      schema_version: 1,
      key: 'k',
      created_at: '2026-01-01T00:00:01.000Z',
      size_bytes: 10,
      sha256: sha256('bytes of B'),
    });
    await fsp.writeFile(`${paths.payload}.b`, 'bytes of B');
    await fsp.rename(`${paths.payload}.b`, paths.payload);
    if (manifest) {
      await fsp.writeFile(`${paths.manifest}.b`, text);
      await fsp.rename(`${paths.manifest}.b`, paths.manifest);
    }
    return text;
  }

  it("leaves B's manifest in place when B renamed both its payload and its manifest before A looked", async () => {
    const dir = await makeTempDir();
    let textOfB = '';
    const { paths, writer, pending } = await writerA(dir, async () => {
      textOfB = await publishB(dir);
    });

    await commitEntry(paths, writer, pending);

    expect(await fsp.readFile(paths.payload, 'utf8')).toBe('bytes of B');
    expect(await fsp.readFile(paths.manifest, 'utf8')).toBe(textOfB);
    expect(await tmpNames(dir)).toEqual([]);
  });

  it("withdraws its own manifest when B's payload is in place but B's manifest is not yet: a miss", async () => {
    const dir = await makeTempDir();
    const { paths, writer, pending } = await writerA(dir, async () => {
      await publishB(dir, { manifest: false });
    });

    await commitEntry(paths, writer, pending);

    expect(await fsp.readFile(paths.payload, 'utf8')).toBe('bytes of B');
    expect(await fsp.readdir(dir)).toEqual(['k']);
  });

  // Samba moves a file's mtime to the time of its last write some time after the client set it (the SMB
  // lane saw it on about one write in thirty): the sealed mtime is then no proof either way.
  it("keeps its manifest when only the payload's mtime moved after the seal, as a Samba server moves it", async () => {
    const dir = await makeTempDir();
    const { paths, writer, pending } = await writerA(dir, async () => {
      const later = new Date(Date.UTC(2026, 0, 1, 0, 0, 1, 505));
      await fsp.utimes(paths.payload, later, later);
    });

    await commitEntry(paths, writer, pending);

    expect(await fsp.readFile(paths.payload, 'utf8')).toBe('bytes of A');
    expect(JSON.parse(await fsp.readFile(paths.manifest, 'utf8'))).toMatchObject({
      sha256: sha256('bytes of A'),
    });
    expect(await tmpNames(dir)).toEqual([]);
  });

  it("never puts back a manifest that landed between A's look and its withdrawal: its payload may be gone too", async () => {
    const dir = await makeTempDir();
    const { paths, writer, pending } = await writerA(dir, async () => {
      await publishB(dir, { manifest: false });
    });
    // A has read its own manifest and is renaming it aside; just before, B's manifest lands and then C, which
    // dies before its own manifest, renames its payload over B's. B's manifest now describes bytes that are gone.
    const rename = fsp.rename;
    const spy = vi.spyOn(fsp, 'rename').mockImplementation(async (from, to) => {
      if (from === paths.manifest) {
        spy.mockImplementation(rename);
        const textOfB = manifestText({
          schema_version: 1,
          key: 'k',
          created_at: '2026-01-01T00:00:01.000Z',
          size_bytes: 10,
          sha256: sha256('bytes of B'),
        });
        await fsp.writeFile(`${paths.manifest}.b`, textOfB);
        await rename(`${paths.manifest}.b`, paths.manifest);
        await fsp.writeFile(`${paths.payload}.c`, 'bytes of C');
        await rename(`${paths.payload}.c`, paths.payload);
      }
      return rename(from, to);
    });
    try {
      await commitEntry(paths, writer, pending);
    } finally {
      spy.mockRestore();
    }

    // A miss (one more download), never B's manifest over C's bytes.
    expect(await fsp.readFile(paths.payload, 'utf8')).toBe('bytes of C');
    expect(await fsp.readdir(dir)).toEqual(['k']);
  });
});

describe('commitEntry when its own payload rename fails (the old entry stands, if it is still there)', () => {
  const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

  /** An old entry committed at `k`, and writer A's new one sealed and ready to commit over it. */
  async function oldEntryAndWriterA(dir: string) {
    const paths = entryPaths(dir, 'k');
    const old = await PayloadWriter.create(paths.payload);
    await old.writeBody('old bytes', new AbortController().signal);
    await commitEntry(paths, old, await sealEntry(paths, old, { createdAtMs: Date.UTC(2026, 0, 1) }));
    const oldManifest = await fsp.readFile(paths.manifest, 'utf8');
    const writer = await PayloadWriter.create(paths.payload);
    await writer.writeBody('new bytes of A', new AbortController().signal);
    const pending = await sealEntry(paths, writer, { createdAtMs: Date.UTC(2026, 0, 2) });
    return { paths, writer, pending, oldManifest };
  }

  /** Fails A's payload rename with EIO, after `meanwhile` ran (another writer, a reader). */
  async function commitWithFailingRename(
    paths: ReturnType<typeof entryPaths>,
    writer: PayloadWriter,
    pending: Awaited<ReturnType<typeof sealEntry>>,
    meanwhile: () => Promise<void>,
  ) {
    const rename = fsp.rename;
    const spy = vi.spyOn(fsp, 'rename').mockImplementation(async (from, to) => {
      if (from === writer.tmpPath && to === paths.payload) {
        await meanwhile();
        throw Object.assign(new Error('EIO: i/o error, rename'), { code: 'EIO' });
      }
      return rename(from, to);
    });
    try {
      return await commitEntry(paths, writer, pending).catch((error: unknown) => error);
    } finally {
      spy.mockRestore();
      await writer.discard();
    }
  }

  it('puts the old manifest back beside the untouched old payload', async () => {
    const dir = await makeTempDir();
    const { paths, writer, pending, oldManifest } = await oldEntryAndWriterA(dir);

    const error = await commitWithFailingRename(paths, writer, pending, async () => {});

    expect(error).toMatchObject({ code: 'EIO' });
    expect(await fsp.readFile(paths.manifest, 'utf8')).toBe(oldManifest);
    expect(await fsp.readFile(paths.payload, 'utf8')).toBe('old bytes');
    expect(await tmpNames(dir)).toEqual([]);
  });

  it('puts it back when only a reader recorded a use of the old payload meanwhile (its mtime moved)', async () => {
    const dir = await makeTempDir();
    const { paths, writer, pending, oldManifest } = await oldEntryAndWriterA(dir);

    await commitWithFailingRename(paths, writer, pending, async () => {
      const later = new Date(Date.UTC(2026, 0, 3));
      await fsp.utimes(paths.payload, later, later);
    });

    expect(await fsp.readFile(paths.manifest, 'utf8')).toBe(oldManifest);
    expect(JSON.parse(oldManifest)).toMatchObject({ sha256: sha256('old bytes') });
  });

  it('leaves a miss when another writer (its lock failed open) renamed its payload in and died before its manifest', async () => {
    const dir = await makeTempDir();
    const { paths, writer, pending } = await oldEntryAndWriterA(dir);

    await commitWithFailingRename(paths, writer, pending, async () => {
      await fsp.writeFile(`${paths.payload}.c`, "C's bytes");
      await fsp.rename(`${paths.payload}.c`, paths.payload);
    });

    // Never the old manifest over C's bytes (the same size as the old payload's: only the bytes tell).
    expect(await fsp.readFile(paths.payload, 'utf8')).toBe("C's bytes");
    expect(await fsp.readdir(dir)).toEqual(['k']);
  });
});

describe('removeEntryIfUnchanged (what another eviction pass sees of a removal)', () => {
  it('holds the entry lock as a removal: lockHolder reports removing while it checks the entry', async () => {
    const dir = await makeTempDir();
    const paths = entryPaths(dir, 'k');
    const writer = await PayloadWriter.create(paths.payload);
    await writer.writeBody('bytes', new AbortController().signal);
    await commitEntry(paths, writer, await sealEntry(paths, writer, { createdAtMs: Date.UTC(2026, 0, 1) }));
    // The removal's first look at the payload happens under its lock: the holder is asked about right then.
    const seenDuringRemoval: string[] = [];
    const lstat = fsp.lstat;
    const spy = vi.spyOn(fsp, 'lstat').mockImplementation(async (...args: Parameters<typeof fsp.lstat>) => {
      if (args[0] === paths.payload && seenDuringRemoval.length === 0) {
        spy.mockImplementation(lstat as typeof fsp.lstat);
        seenDuringRemoval.push(await lockHolder(paths.lock));
      }
      return lstat(...args);
    });
    try {
      expect(await removeEntryIfUnchanged(paths, { sizeBytes: 5 }, 10_000)).toBe('removed');
    } finally {
      spy.mockRestore();
    }
    expect(seenDuringRemoval).toEqual(['removing']);
    expect(await lockHolder(paths.lock)).toBe('free');
  });

  it('lockHolder tells a writer from a removal, and a lock whose owner file is not written yet', async () => {
    const dir = await makeTempDir();
    const lock = path.join(dir, 'k.lock');
    const writerLock = await tryLock(lock, 10_000);
    expect(await lockHolder(lock)).toBe('other');
    await writerLock?.release();
    const removal = await tryLock(lock, 10_000, undefined, 'remove-entry');
    expect(await lockHolder(lock)).toBe('removing');
    await removal?.release();
    expect(await lockHolder(lock)).toBe('free');
    await fsp.mkdir(lock);
    expect(await lockHolder(lock)).toBe('unknown');
  });
});
