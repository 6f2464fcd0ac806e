import type { KeySet } from './evictor.js';
import type { PruneReport } from './types.js';

/**
 * Eviction off the writer's path (issue 16): a write asks for a pass and returns; the pass scans the
 * sublayer and removes victims in the background. At 10,000 entries a pass costs a few hundred ms (every
 * payload is `lstat`ed to find the least recently used), which no caller should wait for.
 *
 * One pass per sublayer directory and process at a time: writes that arrive while a pass runs are taken
 * by one more pass after it, however many they are, so a burst of writes costs two scans, not one each.
 * When the last pass has finished, the sublayer is within `keepN`/`maxBytes` again, but for what the
 * protection rules spare (DESIGN.md section 6).
 */

/** A manager that asks for passes: what one pass does for it, and where its outcome goes. */
export interface EvictionRequester {
  /**
   * Evicts from `dir`, never a key `spared` names; fills `report` as it removes, so that a pass that fails
   * half-way still accounts for what it did.
   */
  evict(dir: string, spared: KeySet, report: PruneReport): Promise<void>;
  /** What a pass removed, reported once it ends, whether it succeeded or not. Must not throw. */
  removed(report: PruneReport): void;
  /** A pass failed: there is no caller to throw at, so this is the only place the error goes. Must not throw. */
  failed(error: unknown, dir: string, latestKey: string): void;
}

interface Request {
  /** Keys written since the last pass for this requester took its request, the latest last. */
  readonly keys: Set<string>;
}

interface SublayerQueue {
  /** Requests not yet taken by a pass. */
  waiting: Map<EvictionRequester, Request>;
  /** Settles when the pass that takes the waiting requests has finished. */
  next: Deferred;
}

const queues = new Map<string, SublayerQueue>();

/**
 * Asks for an eviction pass over `dir` after `writtenKey` was published there. Resolves (never rejects)
 * once a pass that started after this call has finished; a failed pass goes to `requester.failed`.
 */
export function requestEviction(
  dir: string,
  requester: EvictionRequester,
  writtenKey: string,
): Promise<void> {
  const running = queues.get(dir);
  const queue = running ?? { waiting: new Map(), next: deferred() };
  const request = queue.waiting.get(requester) ?? { keys: new Set<string>() };
  // Re-added so that the latest write comes last.
  request.keys.delete(writtenKey);
  request.keys.add(writtenKey);
  queue.waiting.set(requester, request);
  if (!running) {
    queues.set(dir, queue);
    void drain(dir, queue);
  }
  return queue.next.promise;
}

async function drain(dir: string, queue: SublayerQueue): Promise<void> {
  while (queue.waiting.size > 0) {
    // Asked for by a write still on its way back to its caller: a pass begins once that call has returned.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const taken = queue.waiting;
    const done = queue.next;
    queue.waiting = new Map();
    queue.next = deferred();
    for (const [requester, request] of taken) await runPass(dir, queue, requester, request);
    done.resolve();
  }
  queues.delete(dir);
}

async function runPass(
  dir: string,
  queue: SublayerQueue,
  requester: EvictionRequester,
  request: Request,
): Promise<void> {
  const latestKey = lastOf(request.keys);
  // The latest key of the writes this pass answers is spared, as a write's own key always was; so is a key
  // written meanwhile (its own pass follows and spares it). The earlier keys of a burst are not: with no
  // further writes, the last pass brings the sublayer down to keepN, as the same writes one by one would.
  const spared: KeySet = {
    has: (key) => key === latestKey || queue.waiting.get(requester)?.keys.has(key) === true,
  };
  const report: PruneReport = { removed: [], kept: [], foreign: [] };
  try {
    await requester.evict(dir, spared, report);
  } catch (error) {
    requester.failed(error, dir, latestKey);
  } finally {
    requester.removed(report);
  }
}

function lastOf(keys: Set<string>): string {
  let last = '';
  for (const key of keys) last = key;
  return last;
}

interface Deferred {
  readonly promise: Promise<void>;
  resolve(): void;
}

function deferred(): Deferred {
  let resolve = () => {};
  const promise = new Promise<void>((settle) => {
    resolve = settle;
  });
  return { promise, resolve };
}
