import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { tryLock } from '../../src/soft-lock.js';
import { makeTempDir, removeTempDirs } from '../helpers.js';
import { recordFigures } from './figures.js';
import { killLeftoverChildren } from './harness/json-lines-child.js';
import { type ExclusionResult, runLockExclusion } from './harness/lock-exclusion.js';

// Scenario 4 (issue 3): real `node` processes take one soft lock (dist/soft-lock.js, the lock getOrFetch
// uses) many times each and log every hold on the host's monotonic clock into their own files. Two
// overlapping intervals would mean two processes held the lock at once. With holders SIGKILLed mid-hold,
// the lock must pass on (a dead pid on this host is taken over at once, by whichever of the waiters wins)
// but never while the victim was alive, and never to two waiters at once. The last test runs that takeover
// race in one process (src/soft-lock.ts), many times over, so that an unsafe takeover fails it every run.

const PROCESSES = 6;
const HOLDS_PER_PROCESS = 15;
const TEST_TIMEOUT_MS = 120_000;

afterEach(async () => {
  await killLeftoverChildren();
  await removeTempDirs();
});

/** What every run must show, kills or not: each hold on record, none overlapping, nobody failing. */
function expectExclusion(result: ExclusionResult, kills: number, holdsPerProcess = HOLDS_PER_PROCESS): void {
  expect(result.errors).toEqual([]);
  expect(result.kills).toBe(kills);
  for (const exit of result.exits) {
    expect(exit).toMatchObject(exit.killed ? { code: null, signal: 'SIGKILL' } : { code: 0, signal: null });
  }
  expect(result.exits.filter((exit) => exit.killed)).toHaveLength(kills);
  // Every hold is on record: a victim's up to the one it died in, its successor's for the rest.
  expect(result.missing).toEqual([]);
  expect(result.intervals).toBe(PROCESSES * holdsPerProcess);
  expect(result.holdIntervals.filter((interval) => interval.killed)).toHaveLength(kills);
  expect(result.overlaps).toEqual([]);
  // Someone took the lock after every kill: a dead holder's lock did not wedge the others.
  expect(result.handOffAfterKillMs.filter((ms) => ms !== undefined)).toHaveLength(kills);
  expect(result.compromised).toBe(0);
  expect(result.lockLeftBehind).toBe(false);
}

describe('lock exclusion across processes (scenario 4)', () => {
  it(
    `never lets two of ${PROCESSES} processes hold the lock at once over ${HOLDS_PER_PROCESS} holds each`,
    async ({ annotate }) => {
      const root = await makeTempDir('payload-cache-exclusion-');
      const result = await runLockExclusion({
        roots: [root],
        processes: PROCESSES,
        holdsPerProcess: HOLDS_PER_PROCESS,
        kills: 0,
        lockStaleMs: 2_000,
      });

      expectExclusion(result, 0);
      recordFigures('lock exclusion', {
        processes: PROCESSES,
        rounds: HOLDS_PER_PROCESS,
        overlapsFound: result.overlapsFound,
      });
      await annotate(
        `${result.intervals} holds; longest hand-off gap ${result.maxHandOffGapMs.toFixed(1)} ms`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  // Each kill leaves a dead holder's lock that every waiter judges stale at the same moment (dead pid):
  // all of them try to break it at once, and only one may end up holding the lock. 3 kills as the issue
  // asks, then 36 (6 per process, over 30 holds each) so that the takeover race runs often enough to
  // catch an unsafe takeover in most runs.
  it.for([
    { kills: 3, holds: HOLDS_PER_PROCESS },
    { kills: 36, holds: 30 },
  ])(
    'hands the lock to exactly one waiter after each of $kills holders is SIGKILLed mid-hold',
    { timeout: TEST_TIMEOUT_MS },
    async ({ kills, holds }, { annotate }) => {
      const root = await makeTempDir('payload-cache-exclusion-');
      const result = await runLockExclusion({
        roots: [root],
        processes: PROCESSES,
        holdsPerProcess: holds,
        kills,
        lockStaleMs: 2_000,
      });

      // Figures first: a failing run still reports the overlaps it found.
      recordFigures('lock exclusion', {
        processes: result.exits.length,
        rounds: holds,
        // A kill counts as survived only in a run where every hold was exclusive and every holder finished.
        killsSurvived: result.overlapsFound === 0 && result.errors.length === 0 ? result.kills : 0,
        overlapsFound: result.overlapsFound,
      });
      await annotate(
        `${result.intervals} holds, ${result.overlapsFound} overlaps; hand-off after each kill (ms): ${result.handOffAfterKillMs.map((ms) => ms?.toFixed(1)).join(', ')}`,
      );
      expectExclusion(result, kills, holds);
    },
  );

  // The race behind a takeover, without processes: a dead holder's lock (same host, dead pid: stale at
  // once) and six waiters of one process calling tryLock within a few milliseconds of each other, over
  // many trials. Exactly one must end up holding the lock; none may fail; the lock directory must never be
  // left without an owner file (it would then block everyone for lockStaleMs).
  it(
    "takes a dead holder's lock over for exactly one of 6 waiters racing to break it",
    async ({ annotate }) => {
      const TRIALS = 200;
      const WAITERS = 6;
      const dir = await makeTempDir('payload-cache-takeover-');
      const outcomes = { oneHolder: 0, severalHolders: 0, noHolder: 0, ownerlessLockLeft: 0 };
      const errors = new Map<string, number>();
      for (let trial = 0; trial < TRIALS; trial++) {
        const lockPath = path.join(dir, `trial-${trial}.lock`);
        fs.mkdirSync(lockPath);
        // Linux pids stay below pid_max, at most 2^22: this holder is dead on every host, and never recycled.
        const deadOwner = {
          host: os.hostname(),
          pid: 2 ** 22 + 1,
          token: `dead-${trial}`,
          acquiredAt: new Date().toISOString(),
          // Same boot and PID namespace as the waiters: only then is a gone pid proof of death on Linux.
          ...(process.platform === 'linux'
            ? {
                bootId: fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
                pidNamespace: fs.readlinkSync('/proc/self/ns/pid'),
              }
            : {}),
        };
        fs.writeFileSync(path.join(lockPath, 'owner.json'), JSON.stringify(deadOwner));
        const attempts = await Promise.allSettled(
          Array.from({ length: WAITERS }, async () => {
            // A few milliseconds apart, as real waiters' polls are: one may already hold the lock when another breaks it.
            await delay(Math.random() * 4);
            return tryLock(lockPath, 2_000);
          }),
        );
        const holders = attempts.flatMap((a) => (a.status === 'fulfilled' && a.value ? [a.value] : []));
        for (const attempt of attempts) {
          if (attempt.status === 'rejected') {
            const error = attempt.reason as NodeJS.ErrnoException;
            const what =
              `${error.code} ${error.syscall ?? ''}: ${error.message.replace(dir, '<dir>')}`.replace(
                /trial-\d+/,
                'trial-N',
              );
            errors.set(what, (errors.get(what) ?? 0) + 1);
          }
        }
        if (holders.length === 1) outcomes.oneHolder += 1;
        else if (holders.length > 1) outcomes.severalHolders += 1;
        else {
          outcomes.noHolder += 1;
          if (fs.existsSync(lockPath) && !fs.existsSync(path.join(lockPath, 'owner.json')))
            outcomes.ownerlessLockLeft += 1;
        }
        for (const holder of holders) await holder.release();
      }

      recordFigures('lock exclusion', {
        processes: 1,
        rounds: TRIALS,
        overlapsFound: outcomes.severalHolders,
      });
      await annotate(`${JSON.stringify(outcomes)}; errors ${JSON.stringify([...errors])}`);
      expect([...errors]).toEqual([]);
      expect(outcomes).toEqual({ oneHolder: TRIALS, severalHolders: 0, noHolder: 0, ownerlessLockLeft: 0 });
    },
    TEST_TIMEOUT_MS,
  );
});
