import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect, it } from 'vitest';
import { runExtractRace } from '../extract-race.js';
import { defineTwoClientLane, type Lab, type Mode } from './two-client-lane.js';

// Lane 8 of the reliability lab (issue 3): the kernel here has no NFS client, so scripts/sshfs-lab.sh serves
// one directory from a private sshd on 127.0.0.1 and mounts it twice with sshfs; each sshfs process keeps
// its own attribute and directory caches, like two NFS hosts.
defineTwoClientLane({ name: 'sshfs', labScript: 'scripts/sshfs-lab.sh', extraTests: extractionRace });

/**
 * getOrExtract from both clients at once (issue 15): four processes per mount race for one new archive.
 * Whatever the caching, every process must be served the archive's exact tree (principle 1: never a torn
 * or mixed one). With caching off the lock is exact, so one download and one extraction serve all; with
 * default caching duplicates are allowed, and a second extraction of the same archive finds the first
 * published (`already-published`) or publishes the same tree.
 */
function extractionRace(lab: () => Lab, mode: Mode): void {
  it('getOrExtract: 4 processes on each client race for one new archive and all get its exact tree', async () => {
    const { mntA, mntB, export: exported } = lab();
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-sshfs-extract-'));
    try {
      const key = `race-${mode}.zip`;
      const race = await runExtractRace({
        work,
        roots: [mntA, mntB],
        processes: 8,
        sublayer: 'extract',
        key,
      });
      expect(race.results.filter((result) => result.event !== 'done')).toEqual([]);
      for (const result of race.results) expect(result.files).toEqual(race.expected);
      const published = race.results.flatMap((result) => result.extractions).filter((o) => o === 'published');
      if (mode === 'nocache') {
        expect(race.fetches).toBe(1);
        expect(published).toHaveLength(1);
      } else {
        expect(race.fetches).toBeGreaterThanOrEqual(1);
      }
      // Listed on the server: a client's directory cache may be seconds old.
      const names = fs.readdirSync(path.join(exported, 'extract'));
      expect(names.filter((name) => /\.extracted\.[0-9a-f]{16}$/.test(name))).toHaveLength(1);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }, 240_000);
}
