import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { patternBytes, sha256 } from '../helpers.js';
import {
  byLabel,
  cacheOps,
  killLeftovers,
  type LaneProbe,
  laneTitle,
  type OpResult,
  opResults,
  runCaptured,
} from './lane.js';

// A cache shared by the members of a Unix group (`shared: 'group'`), as a lab or a cluster runs one: user A
// writes under a strict umask, user B (same group) hits, refreshes, evicts, takes over A's dead lock and
// sweeps A's orphans; user C (outside the group) only reads. Real uids through `setpriv` (root only), real
// SIGKILLed holders; nothing may fail with EACCES. Without the option the same run fails: the lane can fail.

const GROUP_ID = 61_000;
const USERS = {
  a: { uid: 61_001, gid: GROUP_ID, groups: [GROUP_ID] },
  b: { uid: 61_002, gid: GROUP_ID, groups: [GROUP_ID] },
  outsider: { uid: 61_003, gid: 61_003, groups: [] as number[] },
};
type User = keyof typeof USERS;

const KiB = 1024;
const SUBLAYER = 'lab';
const MINUTE_MS = 60_000;
const TTL_MS = 30 * MINUTE_MS;
const LOCK_STALE_MS = 2_000;
const CHILD_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = 180_000;

function setprivArgs(user: User): string[] {
  const { uid, gid, groups } = USERS[user];
  const groupArgs = groups.length === 0 ? ['--clear-groups'] : [`--groups=${groups.join(',')}`];
  return ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, ...groupArgs];
}

/** `command` as `user` under `umask`; with `pauseAt`, the command is SIGKILLed once it reaches that phase. */
function asUser(user: User, umask: string, command: string[], pauseAt?: { phase: string; file: string }) {
  const script = pauseAt
    ? `umask ${umask}
PAYLOAD_CACHE_TEST_PAUSE_AT="$1" PAYLOAD_CACHE_TEST_PAUSE_FILE="$2"; export PAYLOAD_CACHE_TEST_PAUSE_AT PAYLOAD_CACHE_TEST_PAUSE_FILE
shift 2
"$@" & holder=$!
while [ ! -s "$PAYLOAD_CACHE_TEST_PAUSE_FILE" ]; do kill -0 "$holder" 2>/dev/null || exit 3; sleep 0.05; done
kill -9 "$holder"; wait "$holder" || true`
    : `umask ${umask}\nexec "$@"`;
  const operands = pauseAt ? [pauseAt.phase, pauseAt.file] : [];
  return [...setprivArgs(user), 'sh', '-euc', script, 'sh', ...operands, ...command];
}

function probe(): LaneProbe {
  if (process.platform !== 'linux') return { canRun: false, reason: `not Linux (${process.platform})` };
  if (process.getuid?.() !== 0) return { canRun: false, reason: `not root (uid ${process.getuid?.()})` };
  const [file, ...args] = asUser('a', '077', cacheOps({ probe: true }));
  const run = spawnSync(file as string, args, { encoding: 'utf8', timeout: 20_000, cwd: '/' });
  if (run.error) return { canRun: false, reason: `setpriv: ${run.error.message}` };
  if (!run.stdout.includes('"probe":"ok"'))
    return { canRun: false, reason: `uid ${USERS.a.uid} cannot run the fixture: ${run.stderr.trim()}` };
  return { canRun: true, reason: '' };
}
const lane = probe();

let work: string;
let groupDir: string;
let cacheRoot: string;
let pauseDir: string;

beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-group-'));
  fs.chmodSync(work, 0o755);
  // What an admin prepares once: a directory of the group's, setgid. The cache root inside is made by A.
  groupDir = path.join(work, 'shared');
  fs.mkdirSync(groupDir);
  fs.chownSync(groupDir, 0, GROUP_ID);
  fs.chmodSync(groupDir, 0o2775);
  cacheRoot = path.join(groupDir, 'cache');
  pauseDir = path.join(work, 'pause');
  fs.mkdirSync(pauseDir);
  fs.chmodSync(pauseDir, 0o777);
});

afterEach(async () => {
  await killLeftovers();
  fs.rmSync(work, { recursive: true, force: true });
});

const body = (sizeBytes: number, seed: number) => ({ sizeBytes, seed, form: 'stream' });

/** The cache-ops fixture's config for this lane's cache root. */
function laneConfig(ops: Record<string, unknown>[], options: object) {
  return { root: cacheRoot, sublayer: SUBLAYER, ttlMs: TTL_MS, lockStaleMs: LOCK_STALE_MS, ops, ...options };
}

async function run(
  user: User,
  umask: string,
  ops: Record<string, unknown>[],
  options: Record<string, unknown>,
): Promise<OpResult[]> {
  const command = asUser(user, umask, cacheOps(laneConfig(ops, options)));
  return opResults(await runCaptured(command, CHILD_TIMEOUT_MS), ops.length);
}

/** A's writer SIGKILLed at `phase` while fetching `key`: it leaves its lock (and, streaming, its tmp file). */
async function killedWriter(umask: string, key: string, phase: 'locked' | 'streaming', options: object) {
  const file = path.join(pauseDir, `${key}.${phase}`);
  const ops = [{ op: 'getOrFetch', key, body: body(2_048 * KiB, 5) }];
  const command = asUser('a', umask, cacheOps(laneConfig(ops, options)), { phase, file });
  const killed = await runCaptured(command, CHILD_TIMEOUT_MS);
  expect(killed.code, killed.stderr).toBe(0);
  expect(fs.readFileSync(file, 'utf8')).toBe(phase);
}

/**
 * Everything under the cache root whose mode or group a group member could not use. `ownerFilesMayBePrivate`:
 * a lock's owner file may keep the mode its umask gave it (see the caller).
 */
function unusableByGroup({ ownerFilesMayBePrivate = false } = {}): string[] {
  const problems: string[] = [];
  const visit = (at: string) => {
    const stats = fs.lstatSync(at);
    const mode = stats.mode & 0o7777;
    const wanted = stats.isDirectory() ? 0o2775 : 0o664;
    const ownerFile = path.basename(at) === 'owner.json' && path.dirname(at).endsWith('.lock');
    const tolerated = ownerFilesMayBePrivate && ownerFile;
    if ((mode !== wanted && !tolerated) || stats.gid !== GROUP_ID) {
      problems.push(`${path.relative(cacheRoot, at) || '.'} mode ${mode.toString(8)} gid ${stats.gid}`);
    }
    if (stats.isDirectory()) for (const name of fs.readdirSync(at)) visit(path.join(at, name));
  };
  visit(cacheRoot);
  return problems;
}

/** Polls `condition` every 20 ms: a wait for an event, never for a guessed time. */
async function waitUntil(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 20));
}

const first = patternBytes(256 * KiB, 1);
const second = patternBytes(128 * KiB, 2);
const secondAgain = patternBytes(96 * KiB, 22);

describe(
  laneTitle(`a cache shared by a Unix group: real users ${Object.values(USERS).map((u) => u.uid)}`, lane),
  () => {
    it.skipIf(!lane.canRun).each(['077', '022'])(
      'umask %s: B hits, refreshes, evicts, prunes, takes over A dead lock and sweeps A orphans; C only reads',
      async (umask) => {
        const shared = { shared: 'group' };
        const written = await run(
          'a',
          umask,
          [
            { op: 'getOrFetch', key: 'first.bin', body: body(first.length, 1) },
            { op: 'getOrFetch', key: 'second.bin', body: body(second.length, 2) },
            { op: 'getOrFetch', key: 'third.bin', body: body(64 * KiB, 3) },
            { label: 'first as written', op: 'entryFiles', key: 'first.bin' },
          ],
          shared,
        );
        expect(written.every((result) => result.ok)).toBe(true);
        await killedWriter(umask, 'dead-lock.bin', 'locked', shared);
        // Everything A made, its dead lock included, is the group's.
        expect(unusableByGroup()).toEqual([]);
        await killedWriter(umask, 'orphan.bin', 'streaming', shared);
        // And its half-written tmp file. This writer's background sweep may be taking the dead lock over
        // when it is killed, between creating its owner file and giving it the group's mode (a window no
        // syscall order closes under a strict umask): such an owner file may keep the umask's mode. The lock stays the
        // group's all the same (its directory is group-writable), as B's takeover below shows.
        expect(unusableByGroup({ ownerFilesMayBePrivate: true })).toEqual([]);

        const b = await run(
          'b',
          umask,
          [
            { op: 'advance', ms: 10 * MINUTE_MS },
            { label: 'hit', op: 'getOrFetch', key: 'first.bin', body: body(1, 9) },
            { label: 'first after hit', op: 'entryFiles', key: 'first.bin' },
            {
              label: 'refresh',
              op: 'getOrFetch',
              key: 'second.bin',
              body: body(secondAgain.length, 22),
              refresh: true,
            },
            { label: 'takeover', op: 'getOrFetch', key: 'dead-lock.bin', body: body(32 * KiB, 4) },
            { label: 'fourth', op: 'getOrFetch', key: 'fourth.bin', body: body(16 * KiB, 6) },
            { label: 'evicted', op: 'entryFiles', key: 'third.bin' },
          ],
          shared,
        );
        const step = (label: string) => byLabel(b, label);
        expect(b.filter((result) => !result.ok)).toEqual([]);
        expect(step('hit')).toMatchObject({ fetchCalls: 0, sha256: sha256(first) });
        // B does not own A's payload, so it cannot set its mtime; its hit is still recorded as a use.
        const writtenMtime = byLabel(written, 'first as written').payload?.mtimeMs ?? 0;
        expect(step('first after hit').payload?.mtimeMs).toBeGreaterThan(writtenMtime);
        expect(step('first after hit').payload?.sha256).toBe(sha256(first));
        expect(step('refresh')).toMatchObject({ fetchCalls: 1, sha256: sha256(secondAgain) });
        expect(step('takeover')).toMatchObject({ fetchCalls: 1, sizeBytes: 32 * KiB });
        // Five entries, keepN 4: A's least recently used one goes.
        expect(step('evicted')).toMatchObject({ payload: null, manifest: null });

        const c = await run(
          'outsider',
          umask,
          [
            { op: 'advance', ms: 10 * MINUTE_MS },
            { label: 'hit', op: 'getOrFetch', key: 'fourth.bin', body: body(1, 9) },
            { label: 'miss', op: 'getOrFetch', key: 'absent.bin', body: body(1, 9) },
          ],
          shared,
        );
        expect(byLabel(c, 'hit')).toMatchObject({
          ok: true,
          fetchCalls: 0,
          sizeBytes: 16 * KiB,
        });
        expect(byLabel(c, 'miss')).toMatchObject({
          ok: false,
          fetchCalls: 0,
          error: { code: 'ERR_CACHE_READ_ONLY', causeCode: 'EACCES' },
        });

        // A's half-written tmp file, an hour old (the janitor judges tmp files by the real clock).
        const sublayerDir = path.join(cacheRoot, SUBLAYER);
        const orphans = fs.readdirSync(sublayerDir).filter((name) => name.startsWith('orphan.bin.tmp.'));
        expect(orphans).toHaveLength(1);
        const hourAgo = new Date(Date.now() - 60 * MINUTE_MS);
        // Also a lock renamed aside by that killed writer's own sweep, should the kill have caught it
        // releasing A's dead lock (seen once in CI): an hour old too, so that the prune may judge it.
        const killedLeftovers = fs.readdirSync(sublayerDir).filter((name) => name.includes('.tmp.'));
        for (const name of killedLeftovers) fs.utimesSync(path.join(sublayerDir, name), hourAgo, hourAgo);
        const pruned = await run(
          'b',
          umask,
          [
            { op: 'advance', ms: 2 * TTL_MS },
            { label: 'prune', op: 'prune' },
            { label: 'tree', op: 'tree' },
          ],
          { ...shared, staleTmpMs: MINUTE_MS },
        );
        expect(pruned.filter((result) => !result.ok)).toEqual([]);
        const reasons = (byLabel(pruned, 'prune').value as { removed: { reason: string }[] }).removed.map(
          (item) => item.reason,
        );
        expect(reasons).toEqual(expect.arrayContaining(['expired', 'orphan-tmp']));
        // Every entry expired and every orphan of A's is gone: only the root's tag and the sublayer remain.
        expect(byLabel(pruned, 'tree').value).toEqual(['CACHEDIR.TAG', `${SUBLAYER}/`]);
      },
      TEST_TIMEOUT_MS,
    );

    it.skipIf(!lane.canRun)(
      "a live holder of another user's is alive (kill answers EPERM): its lock is waited for, not taken over",
      async () => {
        const shared = { shared: 'group' };
        const file = path.join(pauseDir, 'held');
        const ops = [{ op: 'getOrFetch', key: 'held.bin', body: body(KiB, 7) }];
        const config = laneConfig(ops, shared);
        const holder = runCaptured(
          [
            'env',
            'PAYLOAD_CACHE_TEST_PAUSE_AT=locked',
            `PAYLOAD_CACHE_TEST_PAUSE_FILE=${file}`,
            ...asUser('a', '077', cacheOps(config)),
          ],
          CHILD_TIMEOUT_MS,
        );
        await waitUntil(() => fs.existsSync(file) && fs.readFileSync(file, 'utf8') === 'locked');
        const b = await run(
          'b',
          '077',
          [{ label: 'wait', op: 'getOrFetch', key: 'held.bin', body: body(KiB, 8) }],
          { ...shared, lockTimeoutMs: 3 * LOCK_STALE_MS },
        );
        expect(byLabel(b, 'wait')).toMatchObject({
          ok: false,
          fetchCalls: 0,
          error: { code: 'ERR_LOCK_TIMEOUT' },
        });
        await killLeftovers();
        await holder;
      },
      TEST_TIMEOUT_MS,
    );

    it.skipIf(!lane.canRun)(
      'without shared: group, umask 077 locks B out (what the option is for)',
      async () => {
        await run('a', '077', [{ op: 'getOrFetch', key: 'first.bin', body: body(first.length, 1) }], {});
        const b = await run(
          'b',
          '077',
          [{ label: 'b', op: 'getOrFetch', key: 'first.bin', body: body(1, 9) }],
          {},
        );
        expect(byLabel(b, 'b')).toMatchObject({
          ok: false,
          error: { code: 'ERR_CACHE_READ_ONLY', causeCode: 'EACCES' },
        });
      },
      TEST_TIMEOUT_MS,
    );
  },
);
