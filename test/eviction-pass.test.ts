import { describe, expect, it } from 'vitest';
import { type EvictionRequester, requestEviction } from '../src/eviction-pass.js';
import type { KeySet } from '../src/evictor.js';
import type { PruneReport } from '../src/types.js';

// The scheduling of background eviction passes (issue 16), with a requester that records what each pass
// was asked and holds it open until the test lets it finish: no file system, no timing.

const KEYS = ['a', 'b', 'c', 'd', 'e'];

interface Pass {
  readonly dir: string;
  readonly spared: KeySet;
  finish(removedKeys?: string[]): void;
  fail(error: unknown): void;
}

function gatedRequester() {
  const passes: Pass[] = [];
  const removed: string[] = [];
  const failures: { error: unknown; dir: string; latestKey: string }[] = [];
  let running = 0;
  let mostAtOnce = 0;
  let started: () => void = () => {};
  const requester: EvictionRequester = {
    evict: (dir, spared, report) =>
      new Promise<void>((resolve, reject) => {
        running += 1;
        mostAtOnce = Math.max(mostAtOnce, running);
        const end = () => {
          running -= 1;
        };
        passes.push({
          dir,
          spared,
          finish: (removedKeys = []) => {
            for (const key of removedKeys)
              report.removed.push({ key, path: `${dir}/${key}`, reason: 'evicted' });
            end();
            resolve();
          },
          fail: (error) => {
            report.removed.push({ key: 'half-way', path: `${dir}/half-way`, reason: 'evicted' });
            end();
            reject(error);
          },
        });
        started();
      }),
    removed: (report: PruneReport) => removed.push(...report.removed.map((item) => item.key ?? '')),
    failed: (error, dir, latestKey) => failures.push({ error, dir, latestKey }),
  };
  /** Resolves once `count` passes have started. */
  const passStarted = (count: number) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (passes.length >= count) resolve();
      };
      started = check;
      check();
    });
  return { requester, passes, removed, failures, passStarted, mostAtOnce: () => mostAtOnce };
}

const sparedOf = (spared: KeySet) => KEYS.filter((key) => spared.has(key));

describe('background eviction passes', () => {
  it('does not start a pass before the write that asked for it has returned to its caller', async () => {
    const { requester, passes, passStarted } = gatedRequester();
    void requestEviction('/cache/first', requester, 'a');
    await Promise.resolve();
    expect(passes).toHaveLength(0);
    await passStarted(1);
    passes[0]?.finish();
  });

  it('runs one pass per sublayer at a time; the writes that arrive meanwhile share exactly one more', async () => {
    const { requester, passes, removed, passStarted, mostAtOnce } = gatedRequester();
    const dir = '/cache/one-at-a-time';
    const first = requestEviction(dir, requester, 'a');
    await passStarted(1);
    const later = ['b', 'c', 'd'].map((key) => requestEviction(dir, requester, key));
    passes[0]?.finish(['x']);
    // The first request is answered by the first pass, without waiting for the one that follows it.
    await first;
    await passStarted(2);
    expect(passes).toHaveLength(2);
    expect(mostAtOnce()).toBe(1);
    passes[1]?.finish(['y', 'z']);
    await Promise.all(later);
    expect(passes).toHaveLength(2);
    expect(removed).toEqual(['x', 'y', 'z']);
  });

  it('spares the latest key a pass answers and any key written while it runs, not the earlier keys of a burst', async () => {
    const { requester, passes, passStarted } = gatedRequester();
    const dir = '/cache/spared';
    const first = requestEviction(dir, requester, 'a');
    await passStarted(1);
    expect(sparedOf(passes[0]?.spared as KeySet)).toEqual(['a']);
    const burst = ['b', 'c', 'd'].map((key) => requestEviction(dir, requester, key));
    // Written while the first pass runs: spared by it too, since the next pass will judge them.
    expect(sparedOf(passes[0]?.spared as KeySet)).toEqual(['a', 'b', 'c', 'd']);
    passes[0]?.finish();
    await first;
    await passStarted(2);
    // With no further writes, the last pass spares only the latest write, so it can reach keepN.
    expect(sparedOf(passes[1]?.spared as KeySet)).toEqual(['d']);
    passes[1]?.finish();
    await Promise.all(burst);
  });

  it('passes of different sublayers run side by side', async () => {
    const { requester, passes, passStarted } = gatedRequester();
    const one = requestEviction('/cache/left', requester, 'a');
    const other = requestEviction('/cache/right', requester, 'b');
    await passStarted(2);
    expect(passes.map((pass) => pass.dir).sort()).toEqual(['/cache/left', '/cache/right']);
    for (const pass of passes) pass.finish();
    await Promise.all([one, other]);
  });

  it('a failed pass goes to failed() with what it removed before failing, and the next request starts afresh', async () => {
    const { requester, passes, removed, failures, passStarted } = gatedRequester();
    const dir = '/cache/failing';
    const asked = requestEviction(dir, requester, 'a');
    await passStarted(1);
    const error = new Error('scan failed');
    passes[0]?.fail(error);
    await expect(asked).resolves.toBeUndefined();
    expect(failures).toEqual([{ error, dir, latestKey: 'a' }]);
    expect(removed).toEqual(['half-way']);
    const again = requestEviction(dir, requester, 'b');
    await passStarted(2);
    passes[1]?.finish();
    await again;
    expect(failures).toHaveLength(1);
  });
});
