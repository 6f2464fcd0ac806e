import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { recordFigures } from './figures.js';
import { runCrashAtEveryPhase } from './harness/crash.js';
import { killLeftoverChildren } from './harness/json-lines-child.js';

// Scenario 2 of the reliability lab on one local root: a writer replacing an expired entry is SIGKILLed at
// every phase of publication (reached through the test-only PAYLOAD_CACHE_TEST_PAUSE_AT hook of
// src/crash-points.ts, which a writer reads at start and which is no part of the public API), then at 30
// random moments. The children import the built library from dist/.

const BUILT_ENTRY = new URL('../../dist/index.js', import.meta.url);
const RANDOM_KILLS = 30;

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

describe('crash at every phase', () => {
  it('SIGKILLed writers leave the old entry, the new one or a swept miss, never a manifest over other bytes', async ({
    annotate,
  }) => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-crash-test-'));
    const result = await runCrashAtEveryPhase({
      roots: [path.join(work, 'cache')],
      randomKills: RANDOM_KILLS,
    });

    // Every check of every iteration, described: the most telling failure message comes first.
    expect(result.problems).toEqual([]);
    // Per phase, what the disk holds after the kill and what a fresh process then gets. Until the old
    // manifest is retired the previous entry stands and is served without a fetch; between its retirement
    // and the new manifest the key is a miss (old bytes beside a sealed tmp file, then the new payload
    // without manifest) and the fresh process fetches; once the new manifest is in place it is a hit. The
    // tmp files counted from 'sealed' on include the new manifest, written under a tmp name while the
    // payload is sealed, and from 'manifest-removed' on the old one renamed aside: each proves to the sweep
    // that a lone payload of its size is ours.
    const phases = result.iterations
      .filter((it) => it.kind === 'phase')
      .map((it) => {
        const { committed, payload, sealedTmp, tmpFiles, lockDir } = it.afterKill;
        return [
          it.phase,
          it.killed,
          lockDir,
          committed,
          payload,
          sealedTmp,
          tmpFiles,
          it.served,
          it.checkerFetched,
        ];
      });
    // phase, killed, lock dir left, committed, payload, sealed tmp, tmp files, served, fresh process fetched
    expect(phases).toEqual([
      ['locked', true, true, 'old', 'old', false, 0, 'old', false],
      ['streaming', true, true, 'old', 'old', false, 1, 'old', false],
      ['sealed', true, true, 'old', 'old', true, 2, 'old', false],
      ['manifest-removed', true, true, 'none', 'old', true, 3, 'new', true],
      ['renamed', true, true, 'none', 'new', false, 2, 'new', true],
      ['manifest-written', true, true, 'new', 'new', false, 1, 'new', false],
    ]);

    expect(result.mismatches).toBe(0);
    expect(result.entriesLost).toBe(0);
    expect(result.orphansLeft).toBe(0);
    // Every iteration ends with exactly the entry the fresh process got.
    for (const it of result.iterations) expect(it.orphans).toEqual([]);
    const random = result.iterations.filter((it) => it.kind === 'random');
    expect(random).toHaveLength(RANDOM_KILLS);
    expect(result.finishedBeforeKill + random.filter((it) => it.killed).length).toBe(RANDOM_KILLS);
    expect(result.killsDelivered).toBe(6 + RANDOM_KILLS - result.finishedBeforeKill);
    expect(result.killsSurvived).toBe(result.killsDelivered);
    // The delays span the writer's run time, so most kills land while it works (not a timing bound: a
    // writer that always finished first would test nothing).
    expect(result.finishedBeforeKill).toBeLessThan(RANDOM_KILLS / 2);

    recordFigures('crash at every phase', {
      processes: result.processes,
      rounds: result.iterations.length,
      killsSurvived: result.killsSurvived,
      bytesVerified: result.bytesVerified,
      entriesLost: result.entriesLost,
    });
    const states = new Map<string, number>();
    for (const it of random.filter((r) => r.killed)) {
      const state = `${it.afterKill.committed}/${it.afterKill.payload}${it.afterKill.sealedTmp ? '+sealed tmp' : ''}`;
      states.set(state, (states.get(state) ?? 0) + 1);
    }
    await annotate(
      `seed ${result.seed}; writer run ${result.expectedRunMs} ms; ${result.killsDelivered} kills, ` +
        `${result.finishedBeforeKill} writers finished first; states after random kills ` +
        `${JSON.stringify(Object.fromEntries(states))}; ${result.processes} processes; ` +
        `${result.iterations.filter((it) => it.lateSweep).length} late sweeps`,
    );
    // A hang detector, not a speed limit: 36 writers, checkers and sweeps take about 65 s on 2 idle cores,
    // 130 s with both cores busy, and longer still on a machine that is busier.
  }, 600_000);
});
