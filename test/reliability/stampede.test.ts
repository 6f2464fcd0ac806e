import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDirs } from '../helpers.js';
import { recordFigures } from './figures.js';
import { killLeftoverChildren } from './harness/json-lines-child.js';
import { runStampede } from './harness/stampede.js';

// Scenario 1 (issue 3): N real `node` processes race on a cold key, three rounds in a row, against one local
// cache root. Per round the lock must let exactly one fetcher run (DESIGN.md section 5, step 4) and every
// racer must read that one complete payload; nothing in flight (tmp file, lock directory) may remain.
// The children import the built library from dist/.

const ROUNDS = 3;
const PAYLOAD_BYTES = 1024 * 1024;
// 32 node processes on 2 cores shared with other heavy suites: generous, and only an upper bound.
const TEST_TIMEOUT_MS = 240_000;

afterEach(async () => {
  await killLeftoverChildren();
  await removeTempDirs();
});

describe('stampede on cold keys (scenario 1)', () => {
  it.for([{ processes: 2 }, { processes: 8 }, { processes: 32 }])(
    'fetches once per round and serves every one of $processes racers the same complete bytes',
    { timeout: TEST_TIMEOUT_MS },
    async ({ processes }, { annotate }) => {
      const root = await makeTempDir('payload-cache-stampede-');
      const result = await runStampede({
        roots: [root],
        processes,
        rounds: ROUNDS,
        payloadBytes: PAYLOAD_BYTES,
      });

      expect(result.exits).toEqual(Array.from({ length: processes }, () => ({ code: 0, signal: null })));
      expect(result.errors).toEqual([]);
      expect(result.fetchesPerRound).toEqual(Array.from({ length: ROUNDS }, () => 1));
      for (const round of result.rounds) {
        expect(round.reads).toHaveLength(processes);
        // The one fetcher the counter file names is the one racer that says its fetchFn ran.
        expect(round.reads.filter((read) => read.fetched).map((read) => read.pid)).toEqual(round.fetcherPids);
        for (const read of round.reads) {
          expect(read.path).toBe(path.join(root, result.sublayer, round.key));
          expect(read.sizeBytes).toBe(PAYLOAD_BYTES);
          expect(read.sha256).toBe(round.expectedSha256);
        }
        expect(round.committed).toEqual({
          manifestSha256: round.expectedSha256,
          manifestSizeBytes: PAYLOAD_BYTES,
          payloadSha256: round.expectedSha256,
        });
      }
      // Round payloads differ, so no round could have been served an earlier round's entry.
      expect(new Set(result.rounds.map((round) => round.expectedSha256)).size).toBe(ROUNDS);
      expect(result.allGotExpectedBytes).toBe(true);
      expect(result.leftovers).toEqual({ tmpFiles: [], locks: [] });
      expect(result.totals).toEqual({
        processes,
        rounds: ROUNDS,
        bytesVerified: processes * ROUNDS * PAYLOAD_BYTES,
      });

      const entriesLost = result.rounds.filter(
        (round) => round.committed.payloadSha256 !== round.expectedSha256,
      ).length;
      recordFigures('stampede', {
        processes,
        rounds: ROUNDS,
        bytesVerified: result.totals.bytesVerified,
        entriesLost,
      });
      await annotate(
        `racers that started before the fetcher returned, per round: ${result.rounds.map((r) => r.racers).join(', ')} of ${processes}`,
      );
    },
  );
});
