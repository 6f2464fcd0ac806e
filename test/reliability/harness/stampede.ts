import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { patternBytes, sha256 } from '../../helpers.js';
import { type ChildEvent, type ChildExit, JsonLinesChild, killChildren, within } from './json-lines-child.js';

/**
 * Scenario 1, the stampede: N processes race on a cold key, round after round. Only the lock keeps the
 * fetch count at one per round (DESIGN.md section 5, step 4); the bytes every racer reads must be the one
 * complete payload whatever the lock does (principle 1). The harness measures and reports, it asserts
 * nothing, so that each lane (local disk, two sshfs mounts with or without attribute caching) states what
 * it guarantees.
 */

const FIXTURE = fileURLToPath(new URL('../fixtures/stampede-child.mjs', import.meta.url));
// 64 KiB pieces 5 ms apart: a 1 MiB download lasts ~80 ms, long enough for every racer to arrive during it.
const DEFAULT_CHUNK_BYTES = 64 * 1024;
const DEFAULT_CHUNK_DELAY_MS = 5;
// Starting 32 node processes on 2 busy cores takes seconds; a round that makes no progress for this long
// is stuck, and the harness kills everything rather than hang the caller.
const DEFAULT_STEP_TIMEOUT_MS = 90_000;

export interface StampedeOptions {
  /** Process i uses `roots[i % roots.length]` (in the sshfs lane: one directory through several mounts). */
  roots: string[];
  processes: number;
  rounds: number;
  payloadBytes: number;
  /** Default: a fresh name per run, so every round's key is cold even in a reused root. */
  sublayer?: string;
  chunkBytes?: number;
  chunkDelayMs?: number;
  /** Passed to every racer's CacheManager; default the library's. */
  lockStaleMs?: number;
  /** Longest wait for any one step (all ready, all done, all exited). */
  stepTimeoutMs?: number;
}

/** What one racer got in one round. */
export interface StampedeRead {
  process: number;
  pid: number;
  root: string;
  /** What getOrFetch returned. */
  path: string;
  /** `<its root>/<sublayer>/<key>`. */
  expectedPath: string;
  sha256: string;
  sizeBytes: number;
  /** This racer's fetcher ran. */
  fetched: boolean;
  /** process.hrtime.bigint() when getOrFetch was called and when it returned. */
  startedAt: bigint;
  returnedAt: bigint;
}

export interface StampedeError {
  process: number;
  round: number;
  name?: string;
  code?: string;
  message: string;
}

export interface StampedeRound {
  round: number;
  key: string;
  expectedSha256: string;
  /** Lines in the round's counter file: how many times a fetcher ran. */
  fetches: number;
  fetcherPids: number[];
  reads: StampedeRead[];
  errors: StampedeError[];
  /** Every process returned a path and read exactly the round's payload there. */
  allGotExpectedBytes: boolean;
  /** Every returned path is the entry's own path under the racer's root. */
  allPathsExpected: boolean;
  /** Racers whose getOrFetch started before the first fetcher returned: those that really raced. */
  racers: number;
  /** The committed entry afterwards, read through `roots[0]`. */
  committed: {
    manifestSha256: string | undefined;
    manifestSizeBytes: number | undefined;
    payloadSha256: string;
  };
}

export interface StampedeResult {
  sublayer: string;
  rounds: StampedeRound[];
  fetchesPerRound: number[];
  /** Every process got the expected sha256 in every round. */
  allGotExpectedBytes: boolean;
  errors: StampedeError[];
  /** Tmp files and lock directories in the sublayer after every racer exited, seen through each root. */
  leftovers: { tmpFiles: string[]; locks: string[] };
  exits: ChildExit[];
  totals: { processes: number; rounds: number; bytesVerified: number };
}

interface StampedeEvent extends ChildEvent {
  event: 'ready' | 'done' | 'error';
  index: number;
  pid: number;
  round: number;
  path?: string;
  sha256?: string;
  sizeBytes?: number;
  fetched?: boolean;
  startedAt?: string;
  returnedAt?: string;
  name?: string;
  code?: string;
  message?: string;
}

/** Runs the stampede and reports what happened; throws only if the harness itself cannot proceed. */
export async function runStampede(options: StampedeOptions): Promise<StampedeResult> {
  const { roots, processes, rounds, payloadBytes } = options;
  if (roots.length === 0) throw new Error('runStampede needs at least one root');
  const sublayer = options.sublayer ?? `stampede-${randomUUID().slice(0, 8)}`;
  const stepTimeoutMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  // Coordination files (payload sources, counters) stay on local disk even when the roots are mounts.
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-stampede-'));
  const children: JsonLinesChild<StampedeEvent>[] = [];
  try {
    const plan = Array.from({ length: rounds }, (_, round) => {
      // A different payload per round: a racer served the previous round's bytes shows up in the hash.
      const bytes = patternBytes(payloadBytes, 0x5eed + round * 7919);
      const source = path.join(work, `payload-${round}.bin`);
      fs.writeFileSync(source, bytes);
      return {
        key: `cold-${round}.bin`,
        source,
        counterFile: path.join(work, `fetches-${round}.txt`),
        expectedSha256: sha256(bytes),
      };
    });
    const rootOf = (index: number) => roots[index % roots.length] as string;
    for (let index = 0; index < processes; index++) {
      const config = {
        index,
        root: rootOf(index),
        sublayer,
        rounds: plan.map(({ key, source, counterFile }) => ({ key, source, counterFile })),
        chunkBytes: options.chunkBytes ?? DEFAULT_CHUNK_BYTES,
        chunkDelayMs: options.chunkDelayMs ?? DEFAULT_CHUNK_DELAY_MS,
        lockStaleMs: options.lockStaleMs,
        lockTimeoutMs: stepTimeoutMs,
      };
      children.push(new JsonLinesChild<StampedeEvent>(FIXTURE, config));
    }

    for (let round = 0; round < rounds; round++) {
      const isReady = (e: StampedeEvent) => e.event === 'ready' && e.round === round;
      await Promise.all(
        children.map((child) => child.waitFor(isReady, stepTimeoutMs, `ready for round ${round}`)),
      );
      // Everyone is parked on stdin: the go lines go out back to back, so the racers start within microseconds.
      for (const child of children) child.send(`go ${round}`);
      const isOver = (e: StampedeEvent) => (e.event === 'done' || e.event === 'error') && e.round === round;
      await Promise.all(
        children.map((child) => child.waitFor(isOver, stepTimeoutMs, `result for round ${round}`)),
      );
    }
    const exits = await within(
      Promise.all(children.map((child) => child.exited)),
      stepTimeoutMs,
      () => `stampede racers did not exit: ${children.map((c) => c.describe()).join(' | ')}`,
    );

    const roundResults = plan.map((planned, round): StampedeRound => {
      const outcomes = children.map((child, index) => ({
        index,
        event: child.events.find((e) => (e.event === 'done' || e.event === 'error') && e.round === round),
      }));
      const reads: StampedeRead[] = [];
      const errors: StampedeError[] = [];
      for (const { index, event } of outcomes) {
        if (event?.event === 'done') {
          reads.push({
            process: index,
            pid: event.pid,
            root: rootOf(index),
            path: event.path ?? '',
            expectedPath: path.join(rootOf(index), sublayer, planned.key),
            sha256: event.sha256 ?? '',
            sizeBytes: event.sizeBytes ?? -1,
            fetched: event.fetched === true,
            startedAt: BigInt(event.startedAt ?? '0'),
            returnedAt: BigInt(event.returnedAt ?? '0'),
          });
        } else {
          errors.push({
            process: index,
            round,
            name: event?.name,
            code: event?.code,
            message: event?.message ?? 'no result',
          });
        }
      }
      const fetcherPids = readLines(planned.counterFile).map(Number);
      const firstFetcherReturn = reads
        .filter((read) => read.fetched)
        .reduce<bigint | undefined>(
          (min, read) => (min === undefined || read.returnedAt < min ? read.returnedAt : min),
          undefined,
        );
      return {
        round,
        key: planned.key,
        expectedSha256: planned.expectedSha256,
        fetches: fetcherPids.length,
        fetcherPids,
        reads,
        errors,
        allGotExpectedBytes:
          reads.length === processes &&
          reads.every((read) => read.sha256 === planned.expectedSha256 && read.sizeBytes === payloadBytes),
        allPathsExpected: reads.every((read) => read.path === read.expectedPath),
        racers:
          firstFetcherReturn === undefined
            ? 0
            : reads.filter((read) => read.startedAt < firstFetcherReturn).length,
        committed: readCommitted(path.join(rootOf(0), sublayer, planned.key)),
      };
    });

    const bytesVerified = roundResults.reduce(
      (sum, round) =>
        sum +
        round.reads
          .filter((read) => read.sha256 === round.expectedSha256 && read.sizeBytes === payloadBytes)
          .reduce((bytes, read) => bytes + read.sizeBytes, 0),
      0,
    );
    return {
      sublayer,
      rounds: roundResults,
      fetchesPerRound: roundResults.map((round) => round.fetches),
      allGotExpectedBytes: roundResults.every((round) => round.allGotExpectedBytes),
      errors: roundResults.flatMap((round) => round.errors),
      leftovers: leftoversIn([...new Set(roots)].map((root) => path.join(root, sublayer))),
      exits,
      totals: { processes, rounds, bytesVerified },
    };
  } finally {
    await killChildren(children);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function readLines(file: string): string[] {
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
}

function readCommitted(payload: string): StampedeRound['committed'] {
  let manifest: { sha256?: string; size_bytes?: number } = {};
  try {
    manifest = JSON.parse(fs.readFileSync(`${payload}.manifest.json`, 'utf8'));
  } catch {}
  let payloadSha256 = '';
  try {
    payloadSha256 = sha256(fs.readFileSync(payload));
  } catch {}
  return { manifestSha256: manifest.sha256, manifestSizeBytes: manifest.size_bytes, payloadSha256 };
}

/** In-flight or orphaned tmp files and lock directories, as absolute paths. */
function leftoversIn(dirs: string[]): StampedeResult['leftovers'] {
  const tmpFiles: string[] = [];
  const locks: string[] = [];
  for (const dir of dirs) {
    const names = fs.existsSync(dir) ? fs.readdirSync(dir) : [];
    for (const name of names) {
      if (name.includes('.tmp.')) tmpFiles.push(path.join(dir, name));
      else if (name.endsWith('.lock')) locks.push(path.join(dir, name));
    }
  }
  return { tmpFiles, locks };
}
