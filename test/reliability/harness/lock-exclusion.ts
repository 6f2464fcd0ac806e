import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ChildEvent, type ChildExit, JsonLinesChild, killChildren, within } from './json-lines-child.js';

/**
 * Scenario 4, the lock-exclusion harness: K processes take ONE soft lock M times each and log their hold
 * intervals on the host's monotonic clock, each into its own file; afterwards no two intervals may
 * overlap. Optionally holders are SIGKILLed mid-hold: the lock must pass to the next holder only after
 * the kill (a dead pid on the same host is taken over at once, DESIGN.md section 5). The harness reports
 * and asserts nothing, so each lane states its own guarantee (an sshfs mount with attribute caching may
 * legitimately break a live lock; principle 1 then still protects the bytes).
 */

const FIXTURE = fileURLToPath(new URL('../fixtures/lock-exclusion-holder.mjs', import.meta.url));
// Short holds keep the run short; the spread makes hand-offs happen at varied moments of the pollers' backoff.
const MIN_HOLD_MS = 3;
const MAX_HOLD_MS = 30;
// The library's floor; a killed holder on this host is a dead pid and is taken over without waiting for it.
const DEFAULT_LOCK_STALE_MS = 2_000;
const DEFAULT_STEP_TIMEOUT_MS = 90_000;
// A victim dies within its first few holds, while the other processes still have most of theirs to make:
// every takeover is then contended by several waiters at once, the race a takeover must survive.
const KILL_WITHIN_HOLDS = 3;

export interface LockExclusionOptions {
  /** Process i uses `roots[i % roots.length]` (in the sshfs lane: one directory through several mounts). */
  roots: string[];
  processes: number;
  holdsPerProcess: number;
  /**
   * Holders SIGKILLed while they hold the lock. A killed process is replaced by a successor that makes its
   * remaining holds (and may be killed in turn: kills are spread round-robin over the processes).
   */
  kills: number;
  lockStaleMs?: number;
  /** Default: a fresh directory name per run. */
  sublayer?: string;
  /** Longest wait for any one step (all ready, everyone finished); also each holder's lock timeout. */
  stepTimeoutMs?: number;
}

/** One hold of the lock, in process.hrtime.bigint() nanoseconds. */
export interface HoldInterval {
  process: number;
  hold: number;
  /** Which incarnation of the process made it: 0 the original, 1 its first successor... */
  incarnation: number;
  start: bigint;
  /** For a killed holder: the parent's clock just before it sent SIGKILL. */
  end: bigint;
  killed: boolean;
  /** The holder found its lock compromised (lost while held) when it released it. */
  compromised: boolean;
}

export interface ExclusionResult {
  processes: number;
  holdsPerProcess: number;
  lockPaths: string[];
  /** Complete intervals recorded (with a start and an end, or a start and a kill). */
  intervals: number;
  /** processes x holdsPerProcess: a killed holder's remaining holds are made by its successor. */
  expectedIntervals: number;
  /** Holds with no complete interval on record. */
  missing: { process: number; hold: number }[];
  holdIntervals: HoldInterval[];
  overlaps: [HoldInterval, HoldInterval][];
  overlapsFound: number;
  kills: number;
  /** From each kill to the next interval's start (undefined if nobody took the lock after it). */
  handOffAfterKillMs: (number | undefined)[];
  /** Longest time the lock lay free (or held by a dead process) between consecutive intervals. */
  maxHandOffGapMs: number;
  compromised: number;
  /** A lock directory left behind at the end. */
  lockLeftBehind: boolean;
  /** Holders that failed (lock error or timeout, crash): each a description. */
  errors: string[];
  /** Every incarnation's exit, in start order (victims by SIGKILL). */
  exits: ContenderExit[];
}

export interface ContenderExit extends ChildExit {
  process: number;
  incarnation: number;
  killed: boolean;
}

interface Incarnation {
  index: number;
  incarnation: number;
  child: JsonLinesChild<HolderEvent>;
  intervalsFile: string;
  /** The hold it is to be killed in, if any. */
  hangAt: number | undefined;
  killedAt: bigint | undefined;
  /** Settles once it is killed and its successor (if any) has been sent `go`. */
  handledKill: Promise<void>;
}

interface HolderEvent extends ChildEvent {
  event: 'ready' | 'holding' | 'done' | 'error';
  index: number;
  pid: number;
  hold?: number;
  hang?: boolean;
  message?: string;
}

/** Runs the contenders and reports every interval and overlap; throws only if the harness cannot proceed. */
export async function runLockExclusion(options: LockExclusionOptions): Promise<ExclusionResult> {
  const { roots, processes, holdsPerProcess, kills } = options;
  if (roots.length === 0) throw new Error('runLockExclusion needs at least one root');
  const stepTimeoutMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  const sublayer = options.sublayer ?? `lock-exclusion-${randomUUID().slice(0, 8)}`;
  const lockPathOf = (index: number) =>
    path.join(roots[index % roots.length] as string, sublayer, 'exclusion.lock');
  // Through every root: on a network mount, another client's view of a directory made elsewhere may lag.
  for (const root of new Set(roots)) fs.mkdirSync(path.join(root, sublayer), { recursive: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-exclusion-'));
  const incarnations: Incarnation[] = [];
  const errors: string[] = [];
  // Kills still to make, per process: round-robin, so victims and survivors are spread evenly.
  const killsLeft = Array.from(
    { length: processes },
    (_, index) => Math.floor(kills / processes) + (index < kills % processes ? 1 : 0),
  );

  const start = (index: number, firstHold: number): Incarnation => {
    const incarnation = incarnations.filter((other) => other.index === index).length;
    // The victim must leave a hold for its successor, so that someone wants the lock after every kill.
    let hangAt: number | undefined;
    if ((killsLeft[index] ?? 0) > 0 && firstHold < holdsPerProcess - 1) {
      killsLeft[index] = (killsLeft[index] ?? 0) - 1;
      hangAt = Math.min(firstHold + Math.floor(Math.random() * KILL_WITHIN_HOLDS), holdsPerProcess - 2);
    }
    const intervalsFile = path.join(work, `intervals-${index}-${incarnation}.txt`);
    const child = new JsonLinesChild<HolderEvent>(FIXTURE, {
      index,
      lockPath: lockPathOf(index),
      firstHold,
      holds: holdsPerProcess,
      hangAtHold: hangAt ?? null,
      staleMs: options.lockStaleMs ?? DEFAULT_LOCK_STALE_MS,
      timeoutMs: stepTimeoutMs,
      intervalsFile,
      minHoldMs: MIN_HOLD_MS,
      maxHoldMs: MAX_HOLD_MS,
    });
    const entry: Incarnation = {
      index,
      incarnation,
      child,
      intervalsFile,
      hangAt,
      killedAt: undefined,
      handledKill: Promise.resolve(),
    };
    incarnations.push(entry);
    if (hangAt !== undefined) entry.handledKill = killAndReplace(entry, hangAt);
    return entry;
  };

  const killAndReplace = async (victim: Incarnation, hold: number): Promise<void> => {
    try {
      await victim.child.waitFor(
        (e) => e.event === 'holding' && e.hang === true,
        stepTimeoutMs,
        'its fatal hold',
      );
    } catch (error) {
      errors.push(
        `process ${victim.index} never reached the hold it was to be killed in: ${(error as Error).message}`,
      );
      return;
    }
    // Read the clock BEFORE the signal: the holder is surely alive then, so its interval ends no earlier.
    victim.killedAt = process.hrtime.bigint();
    victim.child.process.kill('SIGKILL');
    await victim.child.exited;
    const successor = start(victim.index, hold + 1);
    await successor.child.waitFor((e) => e.event === 'ready', stepTimeoutMs, 'ready');
    successor.child.send('go');
    await successor.handledKill;
  };

  try {
    for (let index = 0; index < processes; index++) start(index, 0);
    const originals = [...incarnations];
    await Promise.all(
      originals.map(({ child }) => child.waitFor((e) => e.event === 'ready', stepTimeoutMs, 'ready')),
    );
    for (const { child } of originals) child.send('go');
    // Every incarnation ends: done, error, or killed; all successors exist once every kill is handled.
    await within(
      Promise.all(originals.map((entry) => entry.handledKill)).then(() =>
        Promise.all(incarnations.map(({ child }) => child.exited)),
      ),
      stepTimeoutMs,
      () =>
        `lock contenders did not finish: ${incarnations.map(({ child }) => child.describe()).join(' | ')}`,
    );

    const exits: ContenderExit[] = [];
    const holdIntervals: HoldInterval[] = [];
    for (const entry of incarnations) {
      const { index, incarnation, child, killedAt } = entry;
      exits.push({ process: index, incarnation, killed: killedAt !== undefined, ...(await child.exited) });
      holdIntervals.push(...parseIntervals(entry, readText(entry.intervalsFile)));
      const label = `process ${index} (incarnation ${incarnation})`;
      const failed = child.events.find((e) => e.event === 'error');
      if (failed) errors.push(`${label}: ${failed.message}`);
      else if (killedAt === undefined && !child.events.some((e) => e.event === 'done')) {
        errors.push(`${label} did not finish: ${child.describe()}`);
      }
    }
    const missing: ExclusionResult['missing'] = [];
    for (let index = 0; index < processes; index++) {
      for (let hold = 0; hold < holdsPerProcess; hold++) {
        if (!holdIntervals.some((i) => i.process === index && i.hold === hold))
          missing.push({ process: index, hold });
      }
    }

    holdIntervals.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    const overlaps: [HoldInterval, HoldInterval][] = [];
    for (let i = 0; i < holdIntervals.length; i++) {
      const a = holdIntervals[i] as HoldInterval;
      for (let j = i + 1; j < holdIntervals.length; j++) {
        const b = holdIntervals[j] as HoldInterval;
        if (b.start >= a.end) break; // sorted by start: no later interval can overlap `a` either
        overlaps.push([a, b]);
      }
    }
    let maxGapNs = 0n;
    for (let i = 1; i < holdIntervals.length; i++) {
      const gap = (holdIntervals[i] as HoldInterval).start - (holdIntervals[i - 1] as HoldInterval).end;
      if (gap > maxGapNs) maxGapNs = gap;
    }
    const killTimes = incarnations.flatMap(({ killedAt }) => (killedAt === undefined ? [] : [killedAt]));
    const handOffAfterKillMs = killTimes.map((killTime) => {
      const next = holdIntervals.find((interval) => interval.start > killTime);
      return next === undefined ? undefined : nsToMs(next.start - killTime);
    });

    return {
      processes,
      holdsPerProcess,
      lockPaths: [...new Set(originals.map(({ index }) => lockPathOf(index)))],
      intervals: holdIntervals.length,
      expectedIntervals: processes * holdsPerProcess,
      missing,
      holdIntervals,
      overlaps,
      overlapsFound: overlaps.length,
      kills: killTimes.length,
      handOffAfterKillMs,
      maxHandOffGapMs: nsToMs(maxGapNs),
      compromised: holdIntervals.filter((interval) => interval.compromised).length,
      lockLeftBehind: fs.existsSync(lockPathOf(0)),
      errors,
      exits,
    };
  } finally {
    await killChildren(incarnations.map(({ child }) => child));
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function readText(file: string): string {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
}

/** Complete intervals from one incarnation's log; its killed hold ends at the kill. */
function parseIntervals(entry: Incarnation, text: string): HoldInterval[] {
  const { index, incarnation, hangAt, killedAt } = entry;
  const starts = new Map<number, bigint>();
  const intervals: HoldInterval[] = [];
  for (const line of text.split('\n').filter(Boolean)) {
    const [kind, holdText, time, flag] = line.split(' ');
    const hold = Number(holdText);
    if (kind === 'start') starts.set(hold, BigInt(time ?? '0'));
    else if (kind === 'end') {
      const start = starts.get(hold);
      if (start === undefined) continue;
      starts.delete(hold);
      const end = BigInt(time ?? '0');
      intervals.push({
        process: index,
        hold,
        incarnation,
        start,
        end,
        killed: false,
        compromised: flag === 'compromised',
      });
    }
  }
  const killedStart = hangAt === undefined ? undefined : starts.get(hangAt);
  if (hangAt !== undefined && killedStart !== undefined && killedAt !== undefined) {
    intervals.push({
      process: index,
      hold: hangAt,
      incarnation,
      start: killedStart,
      end: killedAt,
      killed: true,
      compromised: false,
    });
  }
  return intervals;
}

function nsToMs(ns: bigint): number {
  return Number(ns) / 1e6;
}
