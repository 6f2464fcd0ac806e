import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildZip } from '../archive-builders.js';
import { patternBytes, sha256 } from '../helpers.js';
import { recordFigures } from '../reliability/figures.js';
import {
  byLabel,
  cacheOps,
  hostMountsUnder,
  inPrivateMounts,
  killLeftovers,
  laneTitle,
  type OpResult,
  opResults,
  probeMountNamespace,
  runCaptured,
  snapshotTree,
  type TreeNode,
} from './lane.js';

// DESIGN.md principle 6 on a read-only cache root (a cache shipped on a read-only volume, or a shared
// directory mounted ro): hits are still served, a miss fails with ERR_CACHE_READ_ONLY (EROFS) naming the path it could not
// write, and nothing changes on disk. The root is a read-only bind mount of a prepared cache, made inside
// `unshare -m` so that it exists only for the child.

const probe = probeMountNamespace();
const KiB = 1024;
const SUBLAYER = 'ro';
const HOUR_MS = 3_600_000;
const START_MS = Date.parse('2026-01-01T00:00:00Z');
// Past touchIntervalMs (60 s): a hit tries to bump the payload's last-used time, and must not fail for it.
const HIT_AT_MS = START_MS + 90_000;
const CHILD_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = 90_000;

let work: string;
let prepared: string;
let readOnlyRoot: string;

beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-read-only-'));
  prepared = path.join(work, 'prepared');
  readOnlyRoot = path.join(work, 'read-only');
  fs.mkdirSync(readOnlyRoot);
});

const first = patternBytes(256 * KiB, 11);
const second = patternBytes(128 * KiB, 12);
// An extracted archive in a sublayer of its own, so that the entry counts of SUBLAYER stay two.
const ARCHIVES = 'archives';
const archive = buildZip([
  { name: 'model/weights.bin', content: patternBytes(64 * KiB, 13) },
  { name: 'model/config.json', content: '{"layers":2}' },
]);
const archiveTree = ['model/', 'model/config.json', 'model/weights.bin'];
/** getOrExtract of the archive; its fetcher would return other bytes, so a hit must never call it. */
const extractOp = (label: string, extra: Record<string, unknown> = {}) => ({
  label,
  op: 'getOrExtract',
  sublayer: ARCHIVES,
  key: 'model.zip',
  archiveBase64: buildZip([{ name: 'other.txt', content: 'not the archive' }]).toString('base64'),
  ...extra,
});

/** Commits first.bin and second.bin at START_MS into `prepared`, as root, outside any namespace. */
async function prepareCache(): Promise<void> {
  const prepare = opResults(
    await runCaptured(
      cacheOps({
        root: prepared,
        sublayer: SUBLAYER,
        ttlMs: HOUR_MS,
        startMs: START_MS,
        ops: [
          { op: 'getOrFetch', key: 'first.bin', body: { sizeBytes: first.length, seed: 11, form: 'stream' } },
          {
            op: 'getOrFetch',
            key: 'second.bin',
            body: { sizeBytes: second.length, seed: 12, form: 'buffer' },
          },
          {
            op: 'getOrExtract',
            sublayer: ARCHIVES,
            key: 'model.zip',
            archiveBase64: archive.toString('base64'),
          },
        ],
      }),
      CHILD_TIMEOUT_MS,
    ),
    3,
  );
  expect(prepare.slice(0, 2).map((result) => result.sha256)).toEqual([sha256(first), sha256(second)]);
  expect(prepare[2]).toMatchObject({ ok: true, fetchCalls: 1, files: archiveTree });
}

/**
 * Runs `ops` at HIT_AT_MS in a child that sees a read-only bind mount of `prepared` at `readOnlyRoot`: as its
 * root, unless `config` names another (with the mount as a read-only layer, say).
 */
async function onReadOnlyRoot(
  ops: Record<string, unknown>[],
  config: Record<string, unknown> = {},
): Promise<OpResult[]> {
  const command = inPrivateMounts(
    'mount --bind "$1" "$2"\nmount -o remount,bind,ro "$2"',
    [prepared, readOnlyRoot],
    cacheOps({ root: readOnlyRoot, sublayer: SUBLAYER, ttlMs: HOUR_MS, startMs: HIT_AT_MS, ops, ...config }),
  );
  const results = opResults(await runCaptured(command, CHILD_TIMEOUT_MS), ops.length);
  // The bind mount lived in the child's namespace only: the host still sees the empty directory underneath.
  expect(fs.readdirSync(readOnlyRoot)).toEqual([]);
  return results;
}

/** Names under `prepared` whose content or metadata differ between two snapshots. */
function changedBetween(before: Record<string, TreeNode>, after: Record<string, TreeNode>): string[] {
  return Object.keys({ ...before, ...after }).filter(
    (name) => JSON.stringify(before[name]) !== JSON.stringify(after[name]),
  );
}

afterEach(async () => {
  await killLeftovers();
  const leaked = hostMountsUnder(work);
  // Never delete through a mount: leave the directory for a human if one leaked.
  if (leaked.length === 0) fs.rmSync(work, { recursive: true, force: true });
  expect(leaked, 'mounts leaked into the host namespace').toEqual([]);
});

describe(laneTitle('read-only cache root: a read-only bind mount inside unshare -m', probe), () => {
  it.skipIf(!probe.canRun)(
    'serves hits, fails a miss with ERR_CACHE_READ_ONLY (EROFS) naming the path, and changes nothing on disk',
    async () => {
      await prepareCache();
      const before = snapshotTree(prepared);
      const results = await onReadOnlyRoot([
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
        extractOp('extract hit'),
        { label: 'delete', op: 'delete', key: 'second.bin' },
        // Both entries expire, so prune and clear have something they would remove.
        { op: 'advance', ms: 2 * HOUR_MS },
        { label: 'prune', op: 'prune' },
        { label: 'clear', op: 'clear' },
        { label: 'list', op: 'list' },
        { label: 'verify', op: 'verify' },
      ]);
      const step = (label: string) => byLabel(results, label);
      const after = snapshotTree(prepared);
      const changed = changedBetween(before, after);
      const served = [step('get hit'), step('getOrFetch hit')];
      recordFigures('read-only root', {
        processes: 2,
        entriesLost: changed.filter((name) => before[name]?.type === 'file').length,
        bytesVerified: served.reduce((sum, read) => sum + (read.sizeBytes ?? 0), 0),
      });

      const sublayerDir = path.join(readOnlyRoot, SUBLAYER);
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

      // The lock is taken before fetching, so a read-only root fails before any download is wasted.
      const miss = step('miss');
      expect(miss).toMatchObject({
        ok: false,
        fetchCalls: 0,
        error: { code: 'ERR_CACHE_READ_ONLY', causeCode: 'EROFS' },
      });
      expect(miss.error?.message).toContain(fileOf('absent.bin'));
      expect(step('get miss')).toMatchObject({ ok: true, path: null });
      // An extraction hit on the read-only root: served in place, its last-used times left as they are.
      expect(step('extract hit')).toMatchObject({ ok: true, fetchCalls: 0, files: archiveTree });
      expect(step('extract hit').path?.startsWith(path.join(readOnlyRoot, ARCHIVES))).toBe(true);

      // Removals fail loudly rather than pretend: each names the file it could not remove or lock.
      expect(step('delete')).toMatchObject({ ok: false, error: { code: 'EROFS' } });
      expect(step('delete').error?.message).toContain(fileOf('second.bin'));
      // prune and clear fail on the first expired entry's lock, before removing anything.
      for (const label of ['prune', 'clear']) {
        expect(step(label), label).toMatchObject({ ok: false, error: { code: 'EROFS' } });
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

  it.skipIf(!probe.canRun)(
    'a miss in a sublayer not created yet fails with ERR_CACHE_READ_ONLY (EROFS) naming the sublayer, not a misleading ENOENT',
    async () => {
      await prepareCache();
      const before = snapshotTree(prepared);
      const results = await onReadOnlyRoot([
        { label: 'get', op: 'get', sublayer: 'new-sublayer', key: 'absent.bin' },
        {
          label: 'miss',
          op: 'getOrFetch',
          sublayer: 'new-sublayer',
          key: 'absent.bin',
          body: { sizeBytes: 1 * KiB, seed: 97, form: 'buffer' },
        },
      ]);
      const step = (label: string) => byLabel(results, label);
      const changed = changedBetween(before, snapshotTree(prepared));
      recordFigures('read-only root', { processes: 2, entriesLost: changed.length, bytesVerified: 0 });

      expect(step('get')).toMatchObject({ ok: true, path: null });
      expect(changed).toEqual([]);
      // The root exists; what failed is creating the sublayer on a read-only file system, and the error
      // must say so: "no such file or directory" would send the user looking for a missing directory.
      const miss = step('miss');
      expect(miss.error?.message).toContain(path.join(readOnlyRoot, 'new-sublayer'));
      expect(miss).toMatchObject({
        ok: false,
        fetchCalls: 0,
        error: { code: 'ERR_CACHE_READ_ONLY', causeCode: 'EROFS' },
      });
    },
    TEST_TIMEOUT_MS,
  );

  it.skipIf(!probe.canRun)(
    'a site layer: hits served from the read-only mount in place, misses fetched into the user root only',
    async () => {
      await prepareCache();
      const before = snapshotTree(prepared);
      const userRoot = path.join(work, 'user');
      const siteFile = (key: string) => path.join(readOnlyRoot, SUBLAYER, key);
      const userFile = (key: string) => path.join(userRoot, SUBLAYER, key);
      const fresh = await onReadOnlyRoot(
        [
          {
            label: 'site hit',
            op: 'getOrFetch',
            key: 'first.bin',
            body: { sizeBytes: 1, seed: 1, form: 'buffer' },
          },
          {
            label: 'miss',
            op: 'getOrFetch',
            key: 'new.bin',
            body: { sizeBytes: 4 * KiB, seed: 31, form: 'buffer' },
          },
          { label: 'list', op: 'list' },
          { label: 'clear', op: 'clear' },
          { label: 'get after clear', op: 'get', key: 'second.bin' },
          extractOp('site extraction'),
        ],
        { root: userRoot, readOnlyRoots: [readOnlyRoot] },
      );
      const step = (label: string) => byLabel(fresh, label);
      expect(step('site hit')).toMatchObject({ ok: true, fetchCalls: 0, path: siteFile('first.bin') });
      expect(step('site hit').sha256).toBe(sha256(first));
      expect(step('miss')).toMatchObject({ ok: true, fetchCalls: 1, path: userFile('new.bin') });
      expect(step('list').value).toEqual(
        expect.arrayContaining([
          { key: 'new.bin', sizeBytes: 4 * KiB, expired: false, readOnly: false },
          { key: 'first.bin', sizeBytes: first.length, expired: false, readOnly: true },
          { key: 'second.bin', sizeBytes: second.length, expired: false, readOnly: true },
        ]),
      );
      // clear() empties the user's own root only; the site layer still serves.
      expect(step('clear')).toMatchObject({ ok: true });
      expect(fs.existsSync(userFile('new.bin'))).toBe(false);
      expect(step('get after clear')).toMatchObject({ ok: true, path: siteFile('second.bin') });
      // getOrExtract: the site's extraction, served from the read-only mount in place.
      expect(step('site extraction')).toMatchObject({ ok: true, fetchCalls: 0, files: archiveTree });
      expect(step('site extraction').path?.startsWith(path.join(readOnlyRoot, ARCHIVES))).toBe(true);

      // Offline, hours later: the site's expired entries are served, a key found nowhere is a typed miss.
      const offline = await onReadOnlyRoot(
        [
          { label: 'advance', op: 'advance', ms: 5 * HOUR_MS },
          {
            label: 'stale',
            op: 'getOrFetch',
            key: 'second.bin',
            body: { sizeBytes: 1, seed: 1, form: 'buffer' },
          },
          {
            label: 'absent',
            op: 'getOrFetch',
            key: 'gone.bin',
            body: { sizeBytes: 1, seed: 1, form: 'buffer' },
          },
          extractOp('stale extraction'),
        ],
        { root: userRoot, readOnlyRoots: [readOnlyRoot], offline: true },
      );
      expect(byLabel(offline, 'stale')).toMatchObject({
        ok: true,
        fetchCalls: 0,
        path: siteFile('second.bin'),
      });
      expect(byLabel(offline, 'absent')).toMatchObject({
        ok: false,
        fetchCalls: 0,
        error: { code: 'ERR_OFFLINE_MISS' },
      });
      expect(byLabel(offline, 'absent').error?.message).toContain(readOnlyRoot);
      expect(byLabel(offline, 'stale extraction')).toMatchObject({
        ok: true,
        fetchCalls: 0,
        files: archiveTree,
      });
      expect(byLabel(offline, 'stale extraction').path?.startsWith(path.join(readOnlyRoot, ARCHIVES))).toBe(
        true,
      );
      expect(changedBetween(before, snapshotTree(prepared))).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );
});
