import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { entryPaths } from '../src/entry-paths.js';
import { EvictionQueue, evictionOrder, evictionShield, inEvictionOrder } from '../src/evictor.js';
import type { ScannedEntry } from '../src/sublayer-scan.js';

const DIR = path.join(path.sep, 'cache', 'imf');
const entry = (key: string, lastUsedAtMs: number, sizeBytes = 1): ScannedEntry => ({
  paths: entryPaths(DIR, key),
  sizeBytes,
  lastUsedAtMs,
});
const keys = (entries: ScannedEntry[]) => entries.map((item) => item.paths.key);

describe('evictionOrder', () => {
  it('puts the least recently used entry first', () => {
    const entries = [entry('c', 3_000), entry('a', 1_000), entry('d', 4_000), entry('b', 2_000)];
    expect(keys(evictionOrder(entries))).toEqual(['a', 'b', 'c', 'd']);
  });

  it('breaks ties by key, whatever the input order', () => {
    const forward = [entry('b', 1_000), entry('a', 1_000), entry('z', 500), entry('c', 1_000)];
    const backward = [...forward].reverse();
    expect(keys(evictionOrder(forward))).toEqual(['z', 'a', 'b', 'c']);
    expect(keys(evictionOrder(backward))).toEqual(['z', 'a', 'b', 'c']);
  });

  it('does not reorder its input', () => {
    const entries = [entry('b', 2_000), entry('a', 1_000)];
    evictionOrder(entries);
    expect(keys(entries)).toEqual(['b', 'a']);
  });

  it('returns an empty list for no entries', () => {
    expect(evictionOrder([])).toEqual([]);
  });

  it('is the order of a full sort by last use, then key, for any input (the heap gives it lazily)', () => {
    const byUseThenKey = (a: ScannedEntry, b: ScannedEntry) =>
      a.lastUsedAtMs - b.lastUsedAtMs || (a.paths.key < b.paths.key ? -1 : 1);
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 3 }), fc.integer({ min: 0, max: 20 })), {
          selector: ([key]) => key,
          maxLength: 60,
        }),
        (pairs) => {
          const entries = pairs.map(([key, usedAtMs]) => entry(key, usedAtMs));
          expect(keys(evictionOrder(entries))).toEqual(keys([...entries].sort(byUseThenKey)));
          const lazily = inEvictionOrder(entries);
          const firstThree = [lazily.next(), lazily.next(), lazily.next()].flatMap((step) =>
            step.done ? [] : [step.value],
          );
          expect(keys(firstThree)).toEqual(keys([...entries].sort(byUseThenKey).slice(0, 3)));
        },
      ),
    );
  });
});

describe('EvictionQueue', () => {
  it('gives back an entry put back with a later use in its new place, for any input', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 3 }), fc.integer({ min: 0, max: 20 })), {
          selector: ([key]) => key,
          minLength: 1,
          maxLength: 60,
        }),
        fc.integer({ min: 0, max: 40 }),
        (pairs, laterBy) => {
          const queue = new EvictionQueue(pairs.map(([key, usedAtMs]) => entry(key, usedAtMs)));
          const first = queue.next() as ScannedEntry;
          const usedAgain = entry(first.paths.key, first.lastUsedAtMs + laterBy);
          queue.push(usedAgain);
          const rest: ScannedEntry[] = [];
          for (let next = queue.next(); next; next = queue.next()) rest.push(next);
          const others = pairs.filter(([key]) => key !== first.paths.key).map(([key, at]) => entry(key, at));
          expect(keys(rest)).toEqual(keys(evictionOrder([...others, usedAgain])));
        },
      ),
    );
  });
});

describe('evictionShield', () => {
  const nowMs = 1_800_000_000_000;
  const windowMs = 70_000;

  it('shields the key just written, however old its last use', () => {
    expect(evictionShield(entry('new', 0), new Set(['new']), nowMs, windowMs)).toBe('just-written');
  });

  it('shields an entry used inside the in-use window', () => {
    expect(evictionShield(entry('hot', nowMs - windowMs + 1), new Set(['other']), nowMs, windowMs)).toBe(
      'recently-used',
    );
    expect(evictionShield(entry('hot', nowMs), undefined, nowMs, windowMs)).toBe('recently-used');
  });

  it('shields an entry whose last use lies in the future (clock skew between hosts)', () => {
    expect(evictionShield(entry('ahead', nowMs + 5_000), undefined, nowMs, windowMs)).toBe('recently-used');
  });

  it('leaves an entry used before the window unshielded', () => {
    expect(
      evictionShield(entry('cold', nowMs - windowMs - 1), new Set(['other']), nowMs, windowMs),
    ).toBeUndefined();
    expect(evictionShield(entry('cold', 0), undefined, nowMs, windowMs)).toBeUndefined();
  });

  it('shields nothing by use with a zero window', () => {
    expect(evictionShield(entry('k', nowMs - 1), undefined, nowMs, 0)).toBeUndefined();
  });
});
