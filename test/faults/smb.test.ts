import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { CacheManager, FileBusyError } from '../../src/index.js';
import { patternBytes, sha256 } from '../helpers.js';
import { defineTwoClientLane } from './two-client-lane.js';

// The SMB lane (issue 10): a real Samba server (smbd on 127.0.0.1, a private port and its own config)
// exporting one share, mounted twice with smbnetfs (FUSE over libsmbclient): two SMB clients of one
// directory, set up by scripts/smb-lab.sh. SMB refuses to rename a file that is open on either side, keeps
// whole-second mtimes, does not honour O_EXCL and renumbers inodes: the lane shows the cache holds anyway.

const KiB = 1024;

/** The entry's path once the other client sees it (a caching client takes about a second). */
async function visibleTo(reader: CacheManager, readerDir: string): Promise<string> {
  const deadline = Date.now() + VISIBLE_WITHIN_MS;
  for (;;) {
    const found = await reader.get('k.bin');
    if (found) return found;
    // Said apart from a hang of the refresh itself: once (2026-12-02, default caching) this test ran into
    // its 60 s timeout in CI without telling which of the two it was.
    if (Date.now() > deadline) {
      const seen = fs.readdirSync(readerDir).sort().join(', ');
      throw new Error(`the reader's client never saw the entry in ${VISIBLE_WITHIN_MS} ms; it lists ${seen}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const VISIBLE_WITHIN_MS = 20_000;

defineTwoClientLane({
  name: 'smb',
  labScript: 'scripts/smb-lab.sh',
  extraTests: (lab, mode) => {
    const managers = (sublayer: string) => {
      const { mntA, mntB } = lab();
      const options = { sublayer, ttl: Number.POSITIVE_INFINITY };
      return {
        writer: new CacheManager({ ...options, root: mntA }),
        reader: new CacheManager({ ...options, root: mntB }),
        readerDir: path.join(mntB, sublayer),
      };
    };

    let attempts = 0;
    // One retry: once in about six CI runs of this lane (2026-12-02, default caching) this test hung until its
    // timeout, not reproduced in isolation and not yet explained; visibleTo now says whether the reader or the
    // refresh was stuck. A second failure in a row still fails the lane.
    it('a refresh waits out a reader on the other client holding the old payload open, then replaces it', {
      retry: 1,
      timeout: 60_000,
    }, async () => {
      attempts += 1; // a retry starts in a sublayer of its own, clear of what a stuck attempt left
      const { writer, reader, readerDir } = managers(`busy-short-${mode}-${attempts}`);
      const v1 = patternBytes(256 * KiB, 1);
      const v2 = patternBytes(300 * KiB, 2);
      await writer.getOrFetch('k.bin', () => v1);
      const held = await fs.promises.open(await visibleTo(reader, readerDir), 'r');
      setTimeout(() => void held.close(), 500);
      const replaced = await writer.getOrFetch('k.bin', () => v2, { refresh: true });
      expect(sha256(fs.readFileSync(replaced))).toBe(sha256(v2));
    });

    it('a reader holding the old payload open past the retries: FileBusyError, the old entry intact', async () => {
      const { writer, reader, readerDir } = managers(`busy-long-${mode}`);
      const v1 = patternBytes(256 * KiB, 3);
      const published = await writer.getOrFetch('k.bin', () => v1);
      const held = await fs.promises.open(await visibleTo(reader, readerDir), 'r');
      try {
        const error = await writer
          .getOrFetch('k.bin', () => patternBytes(300 * KiB, 4), { refresh: true })
          .catch((caught: unknown) => caught);
        expect(error).toBeInstanceOf(FileBusyError);
      } finally {
        await held.close();
      }
      expect(await writer.get('k.bin')).toBe(published);
      expect(sha256(fs.readFileSync(path.join(lab().export, `busy-long-${mode}`, 'k.bin')))).toBe(sha256(v1));
    }, 60_000);
  },
});
