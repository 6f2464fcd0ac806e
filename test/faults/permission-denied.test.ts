import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { patternBytes, sha256 } from '../helpers.js';
import { recordFigures } from '../reliability/figures.js';
import {
  asUnprivileged,
  byLabel,
  cacheOps,
  killLeftovers,
  laneTitle,
  opResults,
  probeUnprivilegedNode,
  runCaptured,
  snapshotTree,
  UNPRIVILEGED_ID,
} from './lane.js';

// DESIGN.md principle 6 on a cache root the caller may read but not write: a system-wide cache populated
// by root (mode 0755) and used by a service account. The child runs as uid/gid 65534 through `setpriv`:
// hits are served, a miss fails with ERR_CACHE_READ_ONLY (EACCES) naming the path, and nothing changes on disk.

const probe = probeUnprivilegedNode();
const KiB = 1024;
const SUBLAYER = 'shared';
const HOUR_MS = 3_600_000;
const START_MS = Date.parse('2026-01-01T00:00:00Z');
// Past touchIntervalMs (60 s): a hit tries to bump the payload's last-used time, and must not fail for it.
const HIT_AT_MS = START_MS + 90_000;
const CHILD_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = 90_000;

let work: string;
let cacheRoot: string;

beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-permission-'));
  // mkdtemp makes 0700: uid 65534 must be able to reach the cache root inside.
  fs.chmodSync(work, 0o755);
  cacheRoot = path.join(work, 'cache');
});

afterEach(async () => {
  await killLeftovers();
  fs.rmSync(work, { recursive: true, force: true });
});

describe(
  laneTitle(`permission denied: a root-owned 0755 cache used as uid ${UNPRIVILEGED_ID}`, probe),
  () => {
    it.skipIf(!probe.canRun)(
      'serves hits, fails a miss with ERR_CACHE_READ_ONLY (EACCES) naming the path, and writes nothing',
      async () => {
        const first = patternBytes(256 * KiB, 21);
        const second = patternBytes(128 * KiB, 22);
        const prepare = opResults(
          await runCaptured(
            cacheOps({
              root: cacheRoot,
              sublayer: SUBLAYER,
              ttlMs: HOUR_MS,
              startMs: START_MS,
              ops: [
                {
                  op: 'getOrFetch',
                  key: 'first.bin',
                  body: { sizeBytes: first.length, seed: 21, form: 'stream' },
                },
                {
                  op: 'getOrFetch',
                  key: 'second.bin',
                  body: { sizeBytes: second.length, seed: 22, form: 'buffer' },
                },
              ],
            }),
            CHILD_TIMEOUT_MS,
          ),
          2,
        );
        expect(prepare.map((result) => result.sha256)).toEqual([sha256(first), sha256(second)]);
        const sublayerDir = path.join(cacheRoot, SUBLAYER);
        // Whatever the umask: the directories are root's and 0755, so the fault is the one this lane names.
        fs.chmodSync(cacheRoot, 0o755);
        fs.chmodSync(sublayerDir, 0o755);
        const before = snapshotTree(cacheRoot);
        for (const [name, node] of Object.entries(before)) {
          expect(node.uid, name).toBe(0);
          expect(node.mode & 0o777, name).toBe(node.type === 'dir' ? 0o755 : 0o644);
        }

        const ops = [
          { label: 'get hit', op: 'get', key: 'first.bin' },
          // The fetcher would return other bytes: a hit must never call it.
          {
            label: 'getOrFetch hit',
            op: 'getOrFetch',
            key: 'second.bin',
            body: { sizeBytes: 1 * KiB, seed: 99, form: 'buffer' },
          },
          {
            label: 'miss',
            op: 'getOrFetch',
            key: 'absent.bin',
            body: { sizeBytes: 1 * KiB, seed: 98, form: 'buffer' },
          },
          { label: 'get miss', op: 'get', key: 'absent.bin' },
          {
            label: 'miss in a new sublayer',
            op: 'getOrFetch',
            sublayer: 'new-sublayer',
            key: 'absent.bin',
            body: { sizeBytes: 1 * KiB, seed: 97, form: 'buffer' },
          },
          { label: 'delete', op: 'delete', key: 'second.bin' },
          // Both entries expire, so prune and clear have something they would remove.
          { op: 'advance', ms: 2 * HOUR_MS },
          { label: 'prune', op: 'prune' },
          { label: 'clear', op: 'clear' },
          { label: 'list', op: 'list' },
          { label: 'verify', op: 'verify' },
        ];
        const run = await runCaptured(
          asUnprivileged(
            cacheOps({ root: cacheRoot, sublayer: SUBLAYER, ttlMs: HOUR_MS, startMs: HIT_AT_MS, ops }),
          ),
          CHILD_TIMEOUT_MS,
        );
        const results = opResults(run, ops.length);
        const step = (label: string) => byLabel(results, label);
        const after = snapshotTree(cacheRoot);
        const changed = Object.keys({ ...before, ...after }).filter(
          (name) => JSON.stringify(before[name]) !== JSON.stringify(after[name]),
        );
        const served = [step('get hit'), step('getOrFetch hit')];
        recordFigures('permission denied', {
          processes: 2,
          entriesLost: changed.filter((name) => before[name]?.type === 'file').length,
          bytesVerified: served.reduce((sum, read) => sum + (read.sizeBytes ?? 0), 0),
        });

        const fileOf = (name: string) => path.join(sublayerDir, name);
        expect(step('get hit')).toMatchObject({
          ok: true,
          path: fileOf('first.bin'),
          sizeBytes: first.length,
          sha256: sha256(first),
        });
        expect(step('getOrFetch hit')).toMatchObject({
          ok: true,
          fetchCalls: 0,
          path: fileOf('second.bin'),
          sizeBytes: second.length,
          sha256: sha256(second),
        });

        // The lock is taken before fetching, so an unwritable root fails before any download is wasted.
        const miss = step('miss');
        expect(miss).toMatchObject({
          ok: false,
          fetchCalls: 0,
          error: { code: 'ERR_CACHE_READ_ONLY', causeCode: 'EACCES' },
        });
        expect(miss.error?.message).toContain(fileOf('absent.bin'));
        expect(step('get miss')).toMatchObject({ ok: true, path: null });
        const newSublayer = step('miss in a new sublayer');
        expect(newSublayer).toMatchObject({
          ok: false,
          fetchCalls: 0,
          error: { code: 'ERR_CACHE_READ_ONLY', causeCode: 'EACCES' },
        });
        expect(newSublayer.error?.message).toContain(path.join(cacheRoot, 'new-sublayer'));

        // Removals fail loudly rather than pretend: each names the file it could not remove or lock.
        expect(step('delete')).toMatchObject({ ok: false, error: { code: 'EACCES' } });
        expect(step('delete').error?.message).toContain(fileOf('second.bin'));
        // prune and clear fail on the first expired entry's lock, before removing anything.
        for (const label of ['prune', 'clear']) {
          expect(step(label), label).toMatchObject({ ok: false, error: { code: 'EACCES' } });
          expect([fileOf('first.bin.lock'), fileOf('second.bin.lock')], label).toContain(
            step(label).error?.message.match(/'(.*)'$/)?.[1],
          );
        }
        // Both were last used at the same moment: their order in the list is not defined.
        expect(step('list').value).toHaveLength(2);
        expect(step('list').value).toEqual(
          expect.arrayContaining([
            { key: 'first.bin', sizeBytes: first.length, expired: true, readOnly: false },
            { key: 'second.bin', sizeBytes: second.length, expired: true, readOnly: false },
          ]),
        );
        expect(step('verify')).toMatchObject({ ok: true, value: { checked: 2, bad: [], removed: [] } });

        // Nothing was written, touched (not even the hits' last-used time), created or removed.
        expect(changed).toEqual([]);
        expect(after).toEqual(before);
      },
      TEST_TIMEOUT_MS,
    );
  },
);
