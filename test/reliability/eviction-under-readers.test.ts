import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheManager } from '../../src/index.js';
import { makeTempDir, patternBytes, removeTempDirs, sha256 } from '../helpers.js';
import { recordFigures } from './figures.js';
import {
  type ChildEvent,
  JsonLinesChild,
  killChildren,
  killLeftoverChildren,
  within,
} from './harness/json-lines-child.js';

// Scenario 11 (issue 3): with keepN = 1, every write wants to evict every other entry. Four real `node`
// processes write different keys into one sublayer at the same time, and each opens and reads the path
// getOrFetch returned right after it returns, plus another writer's entry through get(). Principle 4
// (DESIGN.md section 6): an entry used within touchIntervalMs + evictionGraceMs (defaults: 60 s + 10 s) is
// never evicted, so no returned path may vanish or change under its reader, and no entry may be lost while
// the writers run; eviction happens later, once the entries are out of that window.

const FIXTURE = fileURLToPath(new URL('./fixtures/eviction-writer.mjs', import.meta.url));
const PROCESSES = 4;
const KEYS_PER_PROCESS = 5;
const PAYLOAD_BYTES = 256 * 1024;
const KEEP_N = 1;
const SUBLAYER = 'eviction';
const STEP_TIMEOUT_MS = 90_000;
const TEST_TIMEOUT_MS = 180_000;

interface WriterEvent extends ChildEvent {
  event: 'ready' | 'read' | 'miss' | 'done' | 'error';
  index: number;
  role?: 'writer' | 'reader';
  key?: string;
  path?: string;
  sha256?: string;
  sizeBytes?: number;
  errorCode?: string;
  message?: string;
}

afterEach(async () => {
  await killLeftoverChildren();
  await removeTempDirs();
});

const keyOf = (index: number, n: number) => `writer${index}-key${n}.bin`;

describe('eviction under readers (scenario 11)', () => {
  it(
    'never pulls a just-returned path from under its reader while 4 processes write with keepN = 1',
    async ({ annotate }) => {
      const root = await makeTempDir('payload-cache-eviction-');
      const sources = await makeTempDir('payload-cache-eviction-sources-');
      const expected = new Map<string, string>();
      const keysOf = (index: number) =>
        Array.from({ length: KEYS_PER_PROCESS }, (_, n) => {
          const key = keyOf(index, n);
          const bytes = patternBytes(PAYLOAD_BYTES, 1 + index * 100 + n);
          const source = path.join(sources, key);
          writeFileSync(source, bytes);
          expected.set(key, sha256(bytes));
          // The reader side: another writer's previous key, which that writer has likely published by now.
          return { key, source, peerKey: keyOf((index + 1) % PROCESSES, Math.max(n - 1, 0)) };
        });
      const children = Array.from(
        { length: PROCESSES },
        (_, index) =>
          new JsonLinesChild<WriterEvent>(FIXTURE, {
            index,
            root,
            sublayer: SUBLAYER,
            keepN: KEEP_N,
            keys: keysOf(index),
            // 64 KiB pieces 2 ms apart: the four writers' fetches, publishes and evictions interleave.
            chunkBytes: 64 * 1024,
            chunkDelayMs: 2,
          }),
      );
      try {
        await Promise.all(
          children.map((child) => child.waitFor((e) => e.event === 'ready', STEP_TIMEOUT_MS, 'ready')),
        );
        for (const child of children) child.send('go');
        const exits = await within(
          Promise.all(children.map((child) => child.exited)),
          STEP_TIMEOUT_MS,
          () => `writers did not finish: ${children.map((c) => c.describe()).join(' | ')}`,
        );
        expect(exits).toEqual(children.map(() => ({ code: 0, signal: null })));
      } finally {
        await killChildren(children);
      }

      const events = children.flatMap((child) => child.events);
      expect(events.filter((e) => e.event === 'error')).toEqual([]);
      const reads = events.filter((e) => e.event === 'read');
      const writerReads = reads.filter((e) => e.role === 'writer');
      const readerReads = reads.filter((e) => e.role === 'reader');
      expect(writerReads).toHaveLength(PROCESSES * KEYS_PER_PROCESS);
      for (const read of reads) {
        // Opened and read whole right after it was returned: no ENOENT, the full size, the key's own bytes.
        expect(read).toMatchObject({
          path: path.join(root, SUBLAYER, read.key ?? ''),
          sizeBytes: PAYLOAD_BYTES,
          sha256: expected.get(read.key ?? ''),
        });
        expect(read.errorCode).toBeUndefined();
      }

      // Every entry was used within the in-use window when each write evicted: all must still be there.
      const janitor = new CacheManager({
        sublayer: SUBLAYER,
        ttl: Number.POSITIVE_INFINITY,
        root,
        keepN: KEEP_N,
      });
      const listed = await janitor.list();
      const entriesLost = PROCESSES * KEYS_PER_PROCESS - listed.length;
      expect(listed.map((entry) => entry.key).sort()).toEqual([...expected.keys()].sort());

      // Once the entries are out of the window (a clock an hour ahead), eviction does its job: down to keepN.
      const later = new CacheManager({
        sublayer: SUBLAYER,
        ttl: Number.POSITIVE_INFINITY,
        root,
        keepN: KEEP_N,
        now: () => Date.now() + 3_600_000,
      });
      const report = await later.prune();
      expect(report.removed.map((item) => item.reason)).toEqual(
        Array.from({ length: PROCESSES * KEYS_PER_PROCESS - KEEP_N }, () => 'evicted'),
      );
      const remaining = await janitor.list();
      expect(remaining).toHaveLength(KEEP_N);
      const survivor = remaining[0];
      expect(survivor?.sha256).toBe(expected.get(survivor?.key ?? ''));
      expect(sha256(readFileSync(survivor?.path ?? ''))).toBe(expected.get(survivor?.key ?? ''));

      recordFigures('eviction under readers', {
        processes: PROCESSES,
        rounds: KEYS_PER_PROCESS,
        bytesVerified: reads.reduce((sum, read) => sum + (read.sizeBytes ?? 0), 0),
        entriesLost,
      });
      await annotate(
        `${writerReads.length} reads by writers, ${readerReads.length} by readers of another writer's key; ` +
          `${events.filter((e) => e.event === 'miss').length} peer keys not published yet; prune evicted ${report.removed.length}`,
      );
    },
    TEST_TIMEOUT_MS,
  );
});
