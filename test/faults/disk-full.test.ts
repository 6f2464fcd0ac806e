import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
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
} from './lane.js';

// DESIGN.md principle 6 under a full disk: the cache root is a 4 MiB tmpfs mounted inside `unshare -m`, so
// the mount exists only for the child and dies with it. A payload larger than the free space must fail with
// ENOSPC, keep the previous entry for its key byte for byte, leave no tmp file (which would keep the disk
// full for everyone) and no lock, and the next write must succeed.

const probe = probeMountNamespace();
const KiB = 1024;
const MiB = 1024 * KiB;
const TMPFS_BYTES = 4 * MiB;
// Larger than the whole tmpfs: the write must run out of space part-way.
const TOO_BIG_BYTES = 6 * MiB;
const SUBLAYER = 'sub';
const TTL_MS = 60_000;
const START_MS = Date.parse('2026-01-01T00:00:00Z');
const CHILD_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = 90_000;

let work: string;
let cacheRoot: string;

beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-disk-full-'));
  cacheRoot = path.join(work, 'tmpfs-root');
  fs.mkdirSync(cacheRoot);
});

afterEach(async () => {
  await killLeftovers();
  const leaked = hostMountsUnder(work);
  // Never delete through a mount: leave the directory for a human if one leaked.
  if (leaked.length === 0) fs.rmSync(work, { recursive: true, force: true });
  expect(leaked, 'mounts leaked into the host namespace').toEqual([]);
});

/** Runs the cache-ops child with `ops` against a fresh 4 MiB tmpfs at `cacheRoot`. */
async function onFullDisk(ops: Record<string, unknown>[]): Promise<OpResult[]> {
  const config = { root: cacheRoot, sublayer: SUBLAYER, ttlMs: TTL_MS, startMs: START_MS, ops };
  const command = inPrivateMounts(
    `mount -t tmpfs -o size=${TMPFS_BYTES},mode=0755 tmpfs "$1"`,
    [cacheRoot],
    cacheOps(config),
  );
  const run = await runCaptured(command, CHILD_TIMEOUT_MS);
  // The tmpfs lived in the child's namespace only: the host still sees the empty directory underneath.
  expect(fs.readdirSync(cacheRoot)).toEqual([]);
  return opResults(run, ops.length);
}

const body = (sizeBytes: number, seed: number, form: 'stream' | 'buffer') => ({ sizeBytes, seed, form });
const inSublayer = (...names: string[]) => [
  'CACHEDIR.TAG',
  `${SUBLAYER}/`,
  ...names.map((n) => `${SUBLAYER}/${n}`),
];

describe(laneTitle('disk full: cache root on a 4 MiB tmpfs inside unshare -m', probe), () => {
  it.skipIf(!probe.canRun)(
    'a download larger than the free space fails with ENOSPC, keeps the previous entry and recovers',
    async () => {
      const key = 'weights.bin';
      const otherKey = 'other.bin';
      const old = patternBytes(64 * KiB, 1);
      const other = patternBytes(48 * KiB, 3);
      const tooBig = body(TOO_BIG_BYTES, 2, 'stream');
      const results = await onFullDisk([
        { label: 'commit old', op: 'getOrFetch', key, body: body(old.length, 1, 'stream') },
        { label: 'old files', op: 'entryFiles', key },
        { label: 'free before', op: 'statfs' },
        // Expire the old entry, so the next getOrFetch downloads over it.
        { op: 'advance', ms: 2 * TTL_MS },
        { label: 'too big', op: 'getOrFetch', key, body: tooBig },
        { label: 'files after failure', op: 'entryFiles', key },
        { label: 'tree after failure', op: 'tree' },
        { label: 'free after failure', op: 'statfs' },
        { label: 'too big, staleIfError', op: 'getOrFetch', key, body: tooBig, staleIfError: true },
        { label: 'other key', op: 'getOrFetch', key: otherKey, body: body(other.length, 3, 'buffer') },
        { label: 'other key hit', op: 'get', key: otherKey },
        { label: 'files at end', op: 'entryFiles', key },
        { label: 'tree at end', op: 'tree' },
      ]);
      const step = (label: string) => byLabel(results, label);
      const oldPath = path.join(cacheRoot, SUBLAYER, key);
      const otherPath = path.join(cacheRoot, SUBLAYER, otherKey);

      const oldFiles = step('old files');
      const afterFailure = step('files after failure');
      const atEnd = step('files at end');
      const oldIntact = (files: OpResult) =>
        files.payload?.sha256 === sha256(old) && files.manifest === oldFiles.manifest;
      const entriesLost =
        Number(!oldIntact(afterFailure)) +
        Number(!oldIntact(atEnd)) +
        Number(step('other key hit').sha256 !== sha256(other));
      const verified = [
        step('commit old'),
        oldFiles.payload,
        afterFailure.payload,
        step('too big, staleIfError'),
        step('other key'),
        step('other key hit'),
        atEnd.payload,
      ];
      recordFigures('disk full', {
        processes: 1,
        entriesLost,
        bytesVerified: verified.reduce((sum, read) => sum + (read?.sizeBytes ?? 0), 0),
      });

      expect(step('commit old')).toMatchObject({
        ok: true,
        fetchCalls: 1,
        path: oldPath,
        sha256: sha256(old),
      });
      expect(oldFiles.payload).toMatchObject({ sizeBytes: old.length, sha256: sha256(old) });
      expect(JSON.parse(oldFiles.manifest ?? 'null')).toMatchObject({
        key,
        size_bytes: old.length,
        sha256: sha256(old),
      });

      const failure = step('too big');
      expect(failure.ok, JSON.stringify(failure)).toBe(false);
      expect(failure.fetchCalls).toBe(1);
      expect(failure.error?.code).toBe('ENOSPC');
      // Same inode, mtime, bytes and manifest text: the failed download did not touch the old entry at all.
      expect(afterFailure.payload).toEqual(oldFiles.payload);
      expect(afterFailure.manifest).toBe(oldFiles.manifest);
      // No tmp file and no lock left behind, and every byte the failed download took is free again.
      expect(step('tree after failure').value).toEqual(inSublayer(key, `${key}.manifest.json`));
      expect(step('free after failure').freeBytes).toBe(step('free before').freeBytes);

      // The disk is still too small, so the retry fails the same way, and staleIfError serves the old bytes.
      expect(step('too big, staleIfError')).toMatchObject({
        ok: true,
        fetchCalls: 1,
        path: oldPath,
        sizeBytes: old.length,
        sha256: sha256(old),
      });

      // The cache recovered: another key commits and is served.
      expect(step('other key')).toMatchObject({
        ok: true,
        fetchCalls: 1,
        path: otherPath,
        sha256: sha256(other),
      });
      expect(step('other key hit')).toMatchObject({ ok: true, path: otherPath, sha256: sha256(other) });
      expect(atEnd.payload).toMatchObject({ sizeBytes: old.length, sha256: sha256(old) });
      expect(atEnd.manifest).toBe(oldFiles.manifest);
      expect(step('tree at end').value).toEqual(
        inSublayer(otherKey, `${otherKey}.manifest.json`, key, `${key}.manifest.json`),
      );
      expect(entriesLost).toBe(0);
    },
    TEST_TIMEOUT_MS,
  );

  it.skipIf(!probe.canRun)(
    'a fresh key larger than the free space leaves no payload, manifest, tmp file or lock',
    async () => {
      const key = 'fresh.bin';
      const small = patternBytes(32 * KiB, 5);
      const results = await onFullDisk([
        { label: 'too big', op: 'getOrFetch', key, body: body(TOO_BIG_BYTES, 4, 'buffer') },
        { label: 'files after failure', op: 'entryFiles', key },
        { label: 'has after failure', op: 'has', key },
        { label: 'tree after failure', op: 'tree' },
        { label: 'small retry', op: 'getOrFetch', key, body: body(small.length, 5, 'buffer') },
        { label: 'tree at end', op: 'tree' },
      ]);
      const step = (label: string) => byLabel(results, label);
      recordFigures('disk full', {
        processes: 1,
        entriesLost: Number(step('small retry').sha256 !== sha256(small)),
        bytesVerified: step('small retry').sizeBytes ?? 0,
      });

      const failure = step('too big');
      expect(failure.ok, JSON.stringify(failure)).toBe(false);
      expect(failure.fetchCalls).toBe(1);
      expect(failure.error?.code).toBe('ENOSPC');
      expect(step('files after failure')).toMatchObject({ ok: true, payload: null, manifest: null });
      expect(step('has after failure').value).toBe(false);
      expect(step('tree after failure').value).toEqual(inSublayer());
      expect(step('small retry')).toMatchObject({
        ok: true,
        fetchCalls: 1,
        path: path.join(cacheRoot, SUBLAYER, key),
        sizeBytes: small.length,
        sha256: sha256(small),
      });
      expect(step('tree at end').value).toEqual(inSublayer(key, `${key}.manifest.json`));
    },
    TEST_TIMEOUT_MS,
  );
});
