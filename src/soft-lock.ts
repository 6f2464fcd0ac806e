import { randomUUID } from 'node:crypto';
import fs, { constants } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import lockfile from 'proper-lockfile';
import { sleep } from './abort.js';
import { errorCode } from './atomic-writer.js';
import { lockFailsOpen } from './crash-points.js';
import { tmpPathFor } from './entry-paths.js';
import { LockTimeoutError } from './errors.js';

/**
 * The soft lock that keeps processes and hosts from downloading the same key twice. It is an
 * optimisation only: every writer publishes through its own tmp file and a rename, so a lock that fails
 * open (as some network file systems make it) costs a duplicate download, never a torn entry.
 *
 * proper-lockfile provides the atomic `mkdir` and the heartbeat timer; this module gives it a file-system
 * adapter that keeps the heartbeat in an owner file inside the lock directory. Network file systems cache
 * directory attributes for many seconds, so the directory's own mtime can make a live lock look stale on
 * another host; `open` + `fstat` of a regular file revalidates (DESIGN.md section 5).
 */

/** Minimum stale threshold proper-lockfile accepts; its heartbeat runs every `staleMs / 2`. */
export const MIN_LOCK_STALE_MS = 2_000;
const OWNER_FILE = 'owner.json';
const FIRST_POLL_MS = 5;
// Waiters poll at most this far apart: a hand-off costs at most one interval, and an idle waiter
// costs the file server about 20 small requests a second.
const MAX_POLL_MS = 50;
const thisHost = hostname();

export interface HeldLock {
  /** Set when the lock was lost while held (heartbeat failed, or another process broke it). */
  readonly compromised: Error | undefined;
  /** Removes the lock if it is still ours; never throws. */
  release(): Promise<void>;
}

interface LockOwner {
  host: string;
  pid: number;
  token: string;
  acquiredAt: string;
}

interface Heartbeat {
  mtime: Date;
  owner: LockOwner | undefined;
}

/** Takes the lock at once or returns `undefined` when someone else holds it; a stale lock is taken over. */
export async function tryLock(lockPath: string, staleMs: number): Promise<HeldLock | undefined> {
  if (lockFailsOpen) return { compromised: undefined, release: async () => {} };
  const owner: LockOwner = {
    host: thisHost,
    pid: process.pid,
    token: randomUUID(),
    acquiredAt: new Date().toISOString(),
  };
  const state: AdapterState = { owner, createdByUs: false, observedToken: undefined, compromised: undefined };
  try {
    const release = await lockfile.lock(lockTarget(lockPath), {
      lockfilePath: lockPath,
      realpath: false,
      stale: Math.max(staleMs, MIN_LOCK_STALE_MS),
      retries: 0,
      fs: ownerFileAdapter(state),
      // The default throws from inside a timer and kills the process; record it instead.
      onCompromised: (error: Error) => {
        state.compromised = error;
      },
    });
    return {
      get compromised() {
        return state.compromised;
      },
      release: () => release().catch(() => {}),
    };
  } catch (error) {
    if (errorCode(error) === 'ELOCKED') return undefined;
    throw error;
  }
}

export interface WaitForLockOptions {
  key: string;
  staleMs: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Waits for the lock with short polling (proper-lockfile's own retry backoff is far too slow for a
 * hand-off), bounded by `timeoutMs` ({@link LockTimeoutError}) and abortable by `signal`.
 */
export async function waitForLock(lockPath: string, options: WaitForLockOptions): Promise<HeldLock> {
  const startedAt = Date.now();
  for (let pollMs = FIRST_POLL_MS; ; pollMs = Math.min(pollMs * 1.5, MAX_POLL_MS)) {
    options.signal?.throwIfAborted();
    const held = await tryLock(lockPath, options.staleMs);
    if (held) return held;
    const waitedMs = Date.now() - startedAt;
    if (waitedMs >= options.timeoutMs) {
      throw new LockTimeoutError(options.key, waitedMs, await describeLockHolder(lockPath));
    }
    const jitteredMs = pollMs * (0.8 + Math.random() * 0.4);
    await sleep(Math.min(jitteredMs, options.timeoutMs - waitedMs), options.signal);
  }
}

/** Whether a live (not stale) lock exists at `lockPath`, without taking it. */
export async function isLockHeld(lockPath: string, staleMs: number): Promise<boolean> {
  try {
    const { mtime } = await readHeartbeat(lockPath);
    return mtime.getTime() >= Date.now() - Math.max(staleMs, MIN_LOCK_STALE_MS);
  } catch {
    return false;
  }
}

/** `host/pid` of the lock's holder, for messages; `undefined` if unknown. */
export async function describeLockHolder(lockPath: string): Promise<string | undefined> {
  try {
    const { owner } = await readHeartbeat(lockPath);
    return owner ? `${owner.host}/${owner.pid}` : undefined;
  } catch {
    return undefined;
  }
}

// proper-lockfile keys its in-process table by this path; it never touches the file itself.
function lockTarget(lockPath: string): string {
  return lockPath.slice(0, -path.extname(lockPath).length || undefined);
}

interface AdapterState {
  readonly owner: LockOwner;
  /** Our mkdir succeeded: from then on, removing the lock means removing our own. */
  createdByUs: boolean;
  /** Owner token seen by the last staleness check, so a takeover can tell it removed that very lock. */
  observedToken: string | undefined;
  compromised: Error | undefined;
}

type Callback<T = void> = (error: NodeJS.ErrnoException | null, value?: T) => void;

function ownerFileAdapter(state: AdapterState) {
  const settle =
    <T>(callback: Callback<T>) =>
    (promise: Promise<T>) =>
      promise.then(
        (value) => callback(null, value),
        (error: NodeJS.ErrnoException) => callback(error),
      );
  return {
    mkdir(lockPath: string, callback: Callback) {
      settle(callback)(createLock(lockPath, state));
    },
    stat(lockPath: string, callback: Callback<{ mtime: Date }>) {
      settle(callback)(
        readHeartbeat(lockPath).then((heartbeat) => {
          state.observedToken = heartbeat.owner?.token;
          return { mtime: heartbeat.mtime };
        }),
      );
    },
    utimes(lockPath: string, atime: Date, mtime: Date, callback: Callback) {
      fs.utimes(path.join(lockPath, OWNER_FILE), atime, mtime, callback);
    },
    rmdir(lockPath: string, callback: Callback) {
      const removal = state.createdByUs
        ? removeOwnLock(lockPath, state.owner.token)
        : breakStaleLock(lockPath, state.observedToken);
      settle(callback)(removal);
    },
    rmdirSync(lockPath: string) {
      removeOwnLockSync(lockPath, state.owner.token);
    },
  };
}

async function createLock(lockPath: string, state: AdapterState): Promise<void> {
  await fs.promises.mkdir(lockPath);
  try {
    // `wx`: if a takeover put another holder's directory back in place meanwhile, we must not overwrite
    // its owner file; EEXIST then reads as "held" to proper-lockfile.
    await fs.promises.writeFile(path.join(lockPath, OWNER_FILE), JSON.stringify(state.owner), { flag: 'wx' });
    state.createdByUs = true;
  } catch (error) {
    await fs.promises.rmdir(lockPath).catch(() => {});
    throw error;
  }
}

async function readHeartbeat(lockPath: string): Promise<Heartbeat> {
  let handle: fs.promises.FileHandle;
  try {
    handle = await fs.promises.open(
      path.join(lockPath, OWNER_FILE),
      constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0),
    );
  } catch (error) {
    // Just created, owner file not written yet (or its writer died right there): the directory's age decides.
    if (errorCode(error) !== 'ENOENT') throw error;
    const { mtime } = await fs.promises.stat(lockPath);
    return { mtime, owner: undefined };
  }
  try {
    const { mtime } = await handle.stat();
    const owner = parseOwner(await handle.readFile('utf8'));
    // On the same host a dead pid proves the holder is gone; no need to wait for the heartbeat to age.
    const holderIsDead = owner?.host === thisHost && !isProcessAlive(owner.pid);
    return { mtime: holderIsDead ? new Date(0) : mtime, owner };
  } finally {
    await handle.close().catch(() => {});
  }
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const value = JSON.parse(text) as Partial<LockOwner>;
    if (typeof value.host === 'string' && Number.isInteger(value.pid) && typeof value.token === 'string') {
      return value as LockOwner;
    }
  } catch {}
  return undefined;
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errorCode(error) === 'EPERM';
  }
}

/**
 * Removes a stale lock without the race of a plain `rmdir`: two waiters that both judged the same lock
 * stale could otherwise each remove it, the second removing the fresh lock the first had just taken.
 * The lock is first renamed aside (only one waiter can win that), then its owner token is compared with
 * the one judged stale; a different token means a live lock was moved, and it is put back.
 */
async function breakStaleLock(lockPath: string, staleToken: string | undefined): Promise<void> {
  const aside = tmpPathFor(lockPath);
  await promisify(fs.rename)(lockPath, aside); // ENOENT: another waiter won; proper-lockfile retries mkdir
  const moved = await readHeartbeat(aside).catch(() => undefined);
  if (moved?.owner?.token === staleToken) {
    await fs.promises.rm(aside, { recursive: true, force: true });
    return;
  }
  await fs.promises
    .rename(aside, lockPath)
    .catch(() => fs.promises.rm(aside, { recursive: true, force: true }));
  throw Object.assign(new Error('lock changed hands while being taken over'), { code: 'ELOCKED' });
}

async function removeOwnLock(lockPath: string, token: string): Promise<void> {
  const { owner } = await readHeartbeat(lockPath).catch(() => ({ owner: undefined }));
  if (owner && owner.token !== token) return; // taken over meanwhile: that lock is someone else's now
  await fs.promises.rm(path.join(lockPath, OWNER_FILE), { force: true });
  await fs.promises.rmdir(lockPath).catch((error: unknown) => {
    if (errorCode(error) !== 'ENOENT') throw error;
  });
}

function removeOwnLockSync(lockPath: string, token: string): void {
  try {
    const owner = parseOwner(fs.readFileSync(path.join(lockPath, OWNER_FILE), 'utf8'));
    if (owner && owner.token !== token) return;
    fs.rmSync(path.join(lockPath, OWNER_FILE), { force: true });
    fs.rmdirSync(lockPath);
  } catch {}
}
