import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildCliIfStale, DAY_MS, runCli, seed } from '../cli-helpers.js';
import { asUnprivileged, killLeftovers, laneTitle, probeUnprivilegedNode, snapshotTree } from './lane.js';

// One sublayer the caller may not read (mode 0700, owned by root) beside readable ones, used as uid 65534
// through `setpriv`: `ls`, `verify` and `prune` report that sublayer on stderr, still do the others, and
// exit 1; nothing changes on disk. (Root reads every directory, so only an unprivileged user sees EACCES.)

const probe = probeUnprivilegedNode();
let work: string;
let cacheRoot: string;

beforeAll(buildCliIfStale, 120_000);

beforeEach(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-unreadable-'));
  fs.chmodSync(work, 0o755);
  cacheRoot = path.join(work, 'cache');
  await seed(cacheRoot, 'open', 'a.zip', 'aaaa', DAY_MS);
  await seed(cacheRoot, 'closed', 'b.zip', 'bbbb', DAY_MS);
  for (const dir of [cacheRoot, path.join(cacheRoot, 'open')]) fs.chmodSync(dir, 0o755);
  fs.chmodSync(path.join(cacheRoot, 'closed'), 0o700);
});

afterEach(async () => {
  await killLeftovers();
  fs.rmSync(work, { recursive: true, force: true });
});

describe(laneTitle('an unreadable sublayer beside readable ones, as uid 65534', probe), () => {
  it.skipIf(!probe.canRun)(
    'ls, verify and prune --dry-run report the unreadable sublayer, still cover the others, and exit 1',
    async () => {
      const before = snapshotTree(cacheRoot);
      const covered: [string[], RegExp][] = [
        [['ls'], /a\.zip/],
        [['verify'], /open\/: 1 ok/],
        [['prune', '--dry-run', '--ttl', '1s'], /a\.zip\s+4 B\s+expired/],
      ];
      for (const [command, otherSublayerDone] of covered) {
        const result = await runCli([...command, '--root', cacheRoot], {
          command: asUnprivileged([process.execPath]),
        });
        const label = command.join(' ');
        expect(result.code, `${label}: ${result.stderr}`).toBe(1);
        expect(result.stderr, label).toMatch(/sublayer "closed" skipped: .*EACCES/);
        expect(result.stdout, label).toMatch(otherSublayerDone);
      }
      expect(snapshotTree(cacheRoot)).toEqual(before);
    },
    120_000,
  );
});
