import { createHash } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

/** A fresh directory under the OS tmp dir; remove it with {@link removeTempDirs}. */
const made: string[] = [];
export async function makeTempDir(prefix = 'payload-cache-test-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  made.push(dir);
  return dir;
}

export async function removeTempDirs(): Promise<void> {
  await Promise.all(made.splice(0).map((dir) => fsp.rm(dir, { recursive: true, force: true })));
}

/** Deterministic pseudo-random bytes, so a mismatch shows up in the hash. */
export function patternBytes(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    out[i] = state >>> 24;
  }
  return out;
}

export function sha256(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Names in `dir` that are tmp files (in-flight or orphaned writes). */
export async function tmpFilesIn(dir: string): Promise<string[]> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  return names.filter((name) => name.includes('.tmp.'));
}

export async function exists(filePath: string): Promise<boolean> {
  return fsp.lstat(filePath).then(
    () => true,
    () => false,
  );
}

/**
 * Collects the exceptions nobody caught (an 'error' event without a listener, for one) until `stop()`,
 * which resolves with their stacks: each one should fail the test that caused it.
 */
export function watchUncaught(): { stop(): Promise<unknown[]> } {
  const caught: unknown[] = [];
  const record = (error: unknown) => caught.push(error);
  process.on('uncaughtException', record);
  return {
    async stop() {
      try {
        // Stream errors are emitted on a later turn (undici defers them with setImmediate).
        await delay(30);
      } finally {
        process.off('uncaughtException', record);
      }
      return caught.map((error) => (error instanceof Error ? (error.stack ?? error.message) : error));
    },
  };
}

/** What `promise` rejects with; a test fails if it resolves instead. */
export async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection, got a result');
    },
    (error: unknown) => error,
  );
}

/** A controllable clock for `now`. */
export function manualClock(startMs = Date.parse('2026-01-01T00:00:00Z')) {
  let nowMs = startMs;
  return {
    now: () => nowMs,
    advance(ms: number) {
      nowMs += ms;
    },
  };
}

/**
 * Creating symlinks on Windows needs administrator rights or developer mode, which CI runners lack:
 * symlink tests are skipped there for that reason alone.
 */
export const symlinksNeedPrivilege = process.platform === 'win32';

/**
 * Wakes every reader blocked opening a FIFO under `dir` (the cache may have renamed the FIFO's directory
 * aside meanwhile) by opening and closing the write end, until `until` settles and a little after, so
 * that no thread-pool thread stays blocked once the test ends.
 */
export async function releaseFifoReaders(dir: string, until: Promise<unknown>): Promise<void> {
  let settled = false;
  void until.finally(() => {
    settled = true;
  });
  const fifosUnder = async (current: string): Promise<string[]> => {
    const found: string[] = [];
    for (const entry of await fsp.readdir(current, { withFileTypes: true }).catch(() => [])) {
      const full = path.join(current, entry.name);
      if (entry.isFIFO()) found.push(full);
      else if (entry.isDirectory()) found.push(...(await fifosUnder(full)));
    }
    return found;
  };
  for (let extraRounds = 10; extraRounds > 0; extraRounds -= settled ? 1 : 0) {
    for (const fifo of await fifosUnder(dir)) {
      const writer = await fsp.open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch(() => undefined);
      await writer?.close();
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
