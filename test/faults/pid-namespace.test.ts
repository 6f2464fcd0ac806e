import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { JsonLinesChild, killLeftoverChildren } from '../reliability/harness/json-lines-child.js';
import { type LaneProbe, laneTitle } from './lane.js';

// Containers with host networking share the host's name but not its PID namespace: a pid the waiter cannot
// see may be alive. A lock held by a live process in any PID namespace must not be taken over before its
// heartbeat is stale, and a SIGKILLed holder in another namespace must still be taken over within a
// second of its last heartbeat going stale. Holders and waiters are real node processes; one side runs under
// `unshare --pid --fork --kill-child --mount-proc` (root only).

const FIXTURE = fileURLToPath(new URL('../fixtures/get-or-fetch.mjs', import.meta.url));
const IN_NEW_PID_NAMESPACE = ['unshare', '--pid', '--fork', '--kill-child', '--mount-proc'];
const LOCK_STALE_MS = 3_000;

function probe(): LaneProbe {
  if (process.platform !== 'linux' || process.getuid?.() !== 0)
    return { canRun: false, reason: 'needs root on Linux' };
  const run = spawnSync('unshare', ['--pid', '--fork', '--kill-child', '--mount-proc', 'true'], {
    encoding: 'utf8',
  });
  return run.status === 0
    ? { canRun: true, reason: '' }
    : { canRun: false, reason: `unshare --pid failed: ${run.stderr.trim()}` };
}
const lane = probe();

let work: string;
beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-pidns-'));
});
afterEach(async () => {
  await killLeftoverChildren();
  fs.rmSync(work, { recursive: true, force: true });
});

function child(config: Record<string, unknown>, launcher: string[] = []): JsonLinesChild {
  const source = path.join(work, `${config.name}.bin`);
  fs.writeFileSync(source, Buffer.alloc(1024 * 1024, String(config.name).charCodeAt(0)));
  return new JsonLinesChild(
    FIXTURE,
    {
      root: path.join(work, 'cache'),
      sublayer: 'ns',
      key: 'k.bin',
      counterFile: path.join(work, 'fetches'),
      lockStaleMs: LOCK_STALE_MS,
      source,
      ...config,
    },
    process.env,
    launcher,
  );
}

const fetches = () => fs.readFileSync(path.join(work, 'fetches'), 'utf8').split('\n').filter(Boolean).length;

describe(laneTitle('PID namespaces: a live holder the waiter cannot see', lane), () => {
  for (const [holderSide, waiterSide] of [
    ['outside', 'inside'],
    ['inside', 'outside'],
  ] as const) {
    it.skipIf(!lane.canRun)(
      `a live holder ${holderSide} a new PID namespace is not taken over by a waiter ${waiterSide} it`,
      async () => {
        const launch = (side: string) => (side === 'inside' ? IN_NEW_PID_NAMESPACE : []);
        // 16 chunks 400 ms apart: over 6 s, twice lockStaleMs; only the heartbeat keeps the lock.
        const holder = child(
          { name: 'a', fetch: 'stream', chunkBytes: 64 * 1024, chunkDelayMs: 400 },
          launch(holderSide),
        );
        await holder.waitFor((e) => e.event === 'fetch-start', 30_000, 'fetch-start');
        const waiter = child({ name: 'b', fetch: 'stream' }, launch(waiterSide));
        const [held, waited] = await Promise.all([
          holder.waitFor((e) => e.event === 'done', 30_000, 'done'),
          waiter.waitFor((e) => e.event === 'done', 30_000, 'done'),
        ]);
        expect(waited.fetched).toBe(false);
        expect(fetches()).toBe(1);
        expect(waited.sha256).toBe(held.sha256);
      },
      60_000,
    );
  }

  it.skipIf(!lane.canRun)(
    'a SIGKILLed holder in another PID namespace is taken over within a second of its heartbeat going stale',
    async () => {
      const holder = child({ name: 'a', fetch: 'hang', chunkBytes: 64 * 1024 }, IN_NEW_PID_NAMESPACE);
      await holder.waitFor((e) => e.event === 'fetch-running', 30_000, 'fetch-running');
      holder.process.kill('SIGKILL'); // unshare dies; --kill-child takes the namespace's node with it
      await holder.exited;
      // The holder's last heartbeat is the owner file's mtime; the lock is stale lockStaleMs after it.
      const ownerFile = path.join(work, 'cache', 'ns', 'k.bin.lock', 'owner.json');
      const staleAt = fs.statSync(ownerFile).mtimeMs + LOCK_STALE_MS;
      const successor = child({ name: 'b', fetch: 'stream' });
      const ready = await successor.waitFor((e) => e.event === 'ready', 30_000, 'ready');
      // It holds the lock when its fetchFn starts. A waiter cannot take over before it runs, so on a
      // loaded machine whose node start-up outlasts the staleness the second is counted from then.
      const started = await successor.waitFor((e) => e.event === 'fetch-start', 30_000, 'fetch-start');
      const done = await successor.waitFor((e) => e.event === 'done', 30_000, 'done');
      expect(done.fetched).toBe(true);
      expect(started.at as number).toBeGreaterThanOrEqual(staleAt);
      expect((started.at as number) - Math.max(staleAt, ready.at as number)).toBeLessThan(1_000);
    },
    60_000,
  );
});
