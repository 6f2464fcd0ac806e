import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { recordFigures } from './figures.js';
import { runLockFailsOpen } from './harness/fail-open.js';
import { killLeftoverChildren } from './harness/json-lines-child.js';

// Scenario 3 of the reliability lab: the lock fails open (the test-only PAYLOAD_CACHE_TEST_LOCK_FAIL_OPEN=1
// of src/crash-points.ts, read by each child at start and no part of the public API), so 4 writers publish
// the same key at once, 20 rounds running, while 2 readers loop on get(). Principle 1: the worst case is a
// duplicate download, never torn or mixed bytes. The children import the built library from dist/.

const BUILT_ENTRY = new URL('../../dist/index.js', import.meta.url);
const WRITERS = 4;
const READERS = 2;
const ROUNDS = 20;

let work: string | undefined;

beforeAll(() => {
  if (!fs.existsSync(BUILT_ENTRY))
    throw new Error(`${BUILT_ENTRY.pathname} is missing: run \`npm run build\``);
});

afterEach(async () => {
  await killLeftoverChildren();
  if (work) fs.rmSync(work, { recursive: true, force: true });
  work = undefined;
});

describe('lock fails open', () => {
  it('never publishes torn or mixed bytes when 4 writers commit one key at once, round after round', async ({
    annotate,
  }) => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-fail-open-test-'));
    const result = await runLockFailsOpen({
      roots: [path.join(work, 'cache')],
      writers: WRITERS,
      readers: READERS,
      rounds: ROUNDS,
    });

    expect(result.writerErrors).toEqual([]);
    // Every path a writer or a reader got held one writer's complete payload, exactly.
    expect(result.badReads).toEqual([]);
    // On Windows a reader holding the payload open past the rename retries makes a writer fail with
    // ERR_FILE_BUSY, its previous entry kept (README, Guarantees); elsewhere no writer ever fails.
    if (process.platform !== 'win32') expect(result.busyWriters).toEqual([]);
    expect(result.writerReads + result.busyWriters.length).toBe(WRITERS * ROUNDS);
    expect(result.readerReads).toBeGreaterThan(0);
    // A writer's returned path holds a payload of its own round: never an older one.
    expect(result.staleWriterReads).toEqual([]);
    // After each round the payload is one writer's whole payload of that round, and a manifest, when
    // one is left (a writer whose payload was replaced withdraws its own), describes exactly those bytes.
    expect(result.roundMismatches).toEqual([]);
    expect(result.rounds).toHaveLength(ROUNDS);
    for (const round of result.rounds) {
      // Which round's payload it must be (this one, or the last one a writer completed) roundMismatches checks.
      expect(round.payload).toMatchObject({ ok: true });
      expect(['matches', 'withdrawn']).toContain(round.manifest);
    }
    expect(result.leftovers).toEqual([]);
    // The scenario really raced: with a working lock the writers of a round would take turns.
    expect(result.roundsWithOverlap).toBeGreaterThanOrEqual(ROUNDS / 2);

    recordFigures('lock fails open', {
      processes: result.processes,
      rounds: ROUNDS,
      bytesVerified: result.bytesVerified,
    });
    const readOthers = result.rounds.reduce((sum, round) => sum + round.writersReadOthers, 0);
    await annotate(
      `${result.roundsWithOverlap}/${ROUNDS} rounds with overlapping writers; ${readOthers} writer reads found ` +
        `another writer's payload; manifest withdrawn after ${result.roundsWithoutManifest} rounds; ` +
        `${result.readerReads} reader hits, ${result.readerMisses} misses; ${result.bytesVerified} bytes verified`,
    );
  }, 120_000);
});
