import { randomUUID } from 'node:crypto';
import fs, { constants } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { sleep } from './abort.js';
import { lockFailsOpen } from './crash-points.js';
import { tmpPathFor } from './entry-paths.js';
import { ForeignFileError, LockTimeoutError } from './errors.js';
import { type CreateModes, describeKind, errorCode, renameWithRetry } from './file-system.js';

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
const BREAKER_DIR = 'breaker';
const READ_NO_FOLLOW_NO_BLOCK =
  constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);
const FIRST_POLL_MS = 5;
// Waiters poll at most this far apart: a hand-off costs at most one interval, and an idle waiter
// costs the file server about 20 small requests a second.
const MAX_POLL_MS = 50;
const thisHost = hostname();
const thisProcess: ProcessIdentity = readProcessIdentity();
/**
 * Tokens of the locks this process holds now. Such a lock is alive by definition: its heartbeat may be
 * late only because this process's event loop stalled, and another manager in this process must not take
 * it over for that.
 */
const heldByThisProcess = new Set<string>();

export interface HeldLock {
  /** Set when the lock was lost while held (heartbeat failed, or another process broke it). */
  readonly compromised: Error | undefined;
  /** Whether taking it meant breaking a stale lock (a dead or silent holder's) first. */
  readonly tookOver: boolean;
  /** How long {@link waitForLock} waited for another holder; 0 when the lock was free. */
  waitedMs: number;
  /** Removes the lock if it is still ours; never throws. */
  release(): Promise<void>;
}

interface LockOwner extends ProcessIdentity {
  host: string;
  pid: number;
  token: string;
  acquiredAt: string;
  /** Present when the holder took the lock to remove the entry it guards (a janitor or an eviction pass). */
  intent?: LockIntent;
}

/** Why a lock was taken, when that matters to others: its holder is removing the entry it guards. */
export type LockIntent = 'remove-entry';

/**
 * What tells one process from every other, on Linux: the boot (pids restart at each boot), the PID
 * namespace (containers, even with the host's name, number their processes apart) and the process's start
 * time (a pid is reused once its process is gone). Empty elsewhere.
 */
interface ProcessIdentity {
  bootId?: string;
  pidNamespace?: string;
  startTime?: string;
}

interface Heartbeat {
  mtime: Date;
  owner: LockOwner | undefined;
  /**
   * For a lock without a readable owner: its directory's inode, which tells one such lock from the next
   * (compared only between two reads a moment apart, never across a rename).
   */
  dirInode?: number;
}

/**
 * Takes the lock at once or returns `undefined` when someone else holds it; a stale lock is taken over.
 * `modes` (a group-shared cache) lets every member of the group take over the lock should this process die.
 */
export async function tryLock(
  lockPath: string,
  staleMs: number,
  modes?: CreateModes,
  intent?: LockIntent,
): Promise<HeldLock | undefined> {
  if (lockFailsOpen) return { compromised: undefined, tookOver: false, waitedMs: 0, release: async () => {} };
  const owner: LockOwner = {
    host: thisHost,
    pid: process.pid,
    token: randomUUID(),
    acquiredAt: new Date().toISOString(),
    ...thisProcess,
    ...(intent ? { intent } : {}),
  };
  const state: AdapterState = {
    owner,
    staleMs,
    modes,
    madeDir: false,
    createdByUs: false,
    brokeStale: false,
    observed: undefined,
    compromised: undefined,
    locked: false,
    probeMtime: undefined,
  };
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
    state.locked = true;
    heldByThisProcess.add(owner.token);
    return {
      get compromised() {
        return state.compromised;
      },
      tookOver: state.brokeStale,
      waitedMs: 0,
      release: () =>
        release()
          .catch(() => {})
          .finally(() => heldByThisProcess.delete(owner.token)),
    };
  } catch (error) {
    if (errorCode(error) === 'ELOCKED') return undefined;
    // Our fresh directory vanished under us (a takeover judged it stale): we simply did not get the lock.
    if (errorCode(error) === 'ENOENT' && state.madeDir) return undefined;
    throw error;
  }
}

/**
 * Runs `action` holding the lock; `undefined` (and nothing run) when someone else holds it. `intent` goes
 * into the owner file for other processes to read (see {@link lockHolder}).
 */
export async function whileLocked<T>(
  lockPath: string,
  staleMs: number,
  action: () => Promise<T>,
  modes?: CreateModes,
  intent?: LockIntent,
): Promise<T | undefined> {
  const held = await tryLock(lockPath, staleMs, modes, intent);
  if (!held) return undefined;
  try {
    return await action();
  } finally {
    await held.release();
  }
}

export interface WaitForLockOptions {
  key: string;
  staleMs: number;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Called every `reportEveryMs` of waiting, with the holder's `host/pid` when known. */
  onStillWaiting?: (waitedMs: number, holder: string | undefined) => void;
  /** Default {@link STILL_WAITING_INTERVAL_MS}. */
  reportEveryMs?: number;
  /**
   * Checked after the first failed attempt and then before every further one: `true` ends the wait
   * WITHOUT the lock (resolves `undefined`). Waiters that only need what the holder is producing can then
   * read it as soon as it is published, all at once, instead of taking the lock one after another.
   */
  satisfied?: () => Promise<boolean>;
  /**
   * Names in the lock's directory whose change ends a sleep at once, as the lock's own name does: where
   * the holder publishes what `satisfied` looks for (it does so before it releases the lock).
   */
  wakeOn?: readonly string[];
  /** Called when the lock's directory has vanished (someone removed it); the wait then goes on. */
  recreateDir?: () => Promise<void>;
  /** Modes for the lock directory and owner file (a group-shared cache). */
  modes?: CreateModes;
}

/** How often a long wait reports itself through `onStillWaiting`. */
export const STILL_WAITING_INTERVAL_MS = 10_000;

/**
 * Waits for the lock with short polling (proper-lockfile's own retry backoff is far too slow for a
 * hand-off), bounded by `timeoutMs` ({@link LockTimeoutError}) and abortable by `signal`.
 */
export async function waitForLock(
  lockPath: string,
  options: WaitForLockOptions & { satisfied: () => Promise<boolean> },
): Promise<HeldLock | undefined>;
export async function waitForLock(lockPath: string, options: WaitForLockOptions): Promise<HeldLock>;
export async function waitForLock(
  lockPath: string,
  options: WaitForLockOptions,
): Promise<HeldLock | undefined> {
  const startedAt = Date.now();
  const reportEveryMs = options.reportEveryMs ?? STILL_WAITING_INTERVAL_MS;
  let nextReportMs = reportEveryMs;
  const attempt = () =>
    tryLock(lockPath, options.staleMs, options.modes).catch(async (error: unknown) => {
      if (errorCode(error) !== 'ENOENT' || !options.recreateDir) throw error;
      await options.recreateDir();
      return tryLock(lockPath, options.staleMs, options.modes);
    });
  options.signal?.throwIfAborted();
  // A free lock (the common case) is taken without setting up a watch.
  const free = await attempt();
  if (free) return free;
  const released = watchForRelease(lockPath, options.wakeOn);
  try {
    if (await options.satisfied?.()) return undefined;
    for (let pollMs = FIRST_POLL_MS; ; pollMs = Math.min(pollMs * 1.5, MAX_POLL_MS)) {
      const waitedMs = Date.now() - startedAt;
      if (options.onStillWaiting && waitedMs >= nextReportMs) {
        nextReportMs += reportEveryMs;
        options.onStillWaiting(waitedMs, await describeLockHolder(lockPath));
      }
      if (waitedMs >= options.timeoutMs) {
        throw new LockTimeoutError(options.key, waitedMs, await describeLockHolder(lockPath));
      }
      const jitteredMs = pollMs * (0.8 + Math.random() * 0.4);
      await released.sleep(Math.min(jitteredMs, options.timeoutMs - waitedMs), options.signal);
      options.signal?.throwIfAborted();
      // What the holder published is read before the lock is tried again: a waiter that took the lock
      // only to find the entry there would keep the others waiting until it let go.
      if (await options.satisfied?.()) return undefined;
      const held = await attempt();
      if (held) {
        held.waitedMs = Date.now() - startedAt;
        return held;
      }
    }
  } finally {
    released.close();
  }
}

/**
 * A sleep that ends early when the lock's name changes in its directory (the holder renamed it away), or
 * one of `alsoNames` does: on a local file system the hand-off then costs no polling delay. Network file systems deliver no such
 * events, and a watch that cannot be set up (inotify limits) is simply absent: polling still bounds the wait.
 */
function watchForRelease(lockPath: string, alsoNames: readonly string[] = []) {
  const names = new Set([path.basename(lockPath), ...alsoNames]);
  let wake: (() => void) | undefined;
  // An event that arrives while the waiter is busy trying the lock must not be lost: it ends the next sleep.
  let missed = false;
  let watcher: fs.FSWatcher | undefined;
  try {
    watcher = fs.watch(path.dirname(lockPath), { persistent: false }, (_event, name) => {
      if (name !== null && !names.has(name.toString())) return;
      if (wake) wake();
      else missed = true;
    });
    watcher.on('error', () => watcher?.close());
  } catch {}
  return {
    async sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
      if (missed) {
        missed = false;
        return;
      }
      await sleep(ms, signal, (wakeNow) => {
        wake = wakeNow;
      });
      wake = undefined;
    },
    close() {
      watcher?.close();
    },
  };
}

/** Whether a live (not stale) lock exists at `lockPath`, without taking it. */
export async function isLockHeld(lockPath: string, staleMs: number): Promise<boolean> {
  try {
    const heartbeat = await readHeartbeat(lockPath);
    return isHeldHere(heartbeat) || !isStale(heartbeat.mtime, staleMs);
  } catch {
    return false;
  }
}

/**
 * Who holds an entry's lock now: nobody (`free`), a janitor or eviction pass removing the entry (`removing`),
 * someone else (`other`: a writer, a reader of an old owner file's version), or a holder whose owner file is
 * not written yet (`unknown`: its mkdir has just succeeded, or it died right there).
 */
export async function lockHolder(lockPath: string): Promise<'free' | 'removing' | 'other' | 'unknown'> {
  try {
    const { owner } = await readHeartbeat(lockPath);
    if (!owner) return 'unknown';
    return owner.intent === 'remove-entry' ? 'removing' : 'other';
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return 'free';
    throw error;
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
  readonly staleMs: number;
  readonly modes: CreateModes | undefined;
  /** Our mkdir of the lock directory succeeded (the owner file may not be written yet). */
  madeDir: boolean;
  /** Our mkdir succeeded: from then on, removing the lock means removing our own. */
  createdByUs: boolean;
  /** We broke a stale lock before taking this one. */
  brokeStale: boolean;
  /** What the last staleness check saw, so that a takeover removes that very lock and no other. */
  observed: Heartbeat | undefined;
  compromised: Error | undefined;
  /** proper-lockfile has handed us the lock: every `utimes` from then on is a heartbeat. */
  locked: boolean;
  /** The mtime proper-lockfile's precision probe has just set on our new owner file, until its `stat`. */
  probeMtime: Date | undefined;
}

/**
 * Lock directories (by parent) whose file system was seen keeping an owner file's mtime to the millisecond.
 * proper-lockfile probes the precision after every mkdir that wins (a `utimes`, then a `stat`), caching
 * the answer on the `fs` adapter, which is ours per lock. Where a probe has already seen milliseconds kept,
 * the next probe's `stat` is answered with the mtime its `utimes` just set: what a read would return.
 */
const keepsMilliseconds = new Set<string>();

/**
 * The answer to the `stat` of proper-lockfile's precision probe, which follows its `utimes` of the owner
 * file of a lock we have just created: only that file's mtime matters (whose lock it is, the mkdir told).
 */
async function readProbedMtime(lockPath: string, probed: Date): Promise<{ mtime: Date }> {
  const dir = path.dirname(lockPath);
  if (keepsMilliseconds.has(dir)) return { mtime: probed };
  const { mtime } = await fs.promises.lstat(path.join(lockPath, OWNER_FILE));
  if (mtime.getTime() === probed.getTime()) keepsMilliseconds.add(dir);
  return { mtime };
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
      const probed = state.probeMtime;
      state.probeMtime = undefined;
      if (probed) {
        settle(callback)(readProbedMtime(lockPath, probed));
        return;
      }
      settle(callback)(
        readHeartbeat(lockPath).then((heartbeat) => {
          state.observed = heartbeat;
          // The holder's own heartbeat check must see the real mtime; anyone else in this process must
          // never judge a lock this process holds stale.
          const ours = heartbeat.owner?.token === state.owner.token;
          return { mtime: !ours && isHeldHere(heartbeat) ? new Date() : heartbeat.mtime };
        }),
      );
    },
    utimes(lockPath: string, atime: Date, mtime: Date, callback: Callback) {
      if (!state.locked) state.probeMtime = mtime;
      fs.utimes(path.join(lockPath, OWNER_FILE), atime, mtime, callback);
    },
    rmdir(lockPath: string, callback: Callback) {
      const removal = state.createdByUs
        ? removeOwnLock(lockPath, state.owner.token)
        : breakStaleLock(lockPath, state.observed, state.staleMs, state.modes).then(() => {
            state.brokeStale = true;
          });
      settle(callback)(removal);
    },
    rmdirSync(lockPath: string) {
      removeOwnLockSync(lockPath, state.owner.token);
    },
  };
}

async function createLock(lockPath: string, state: AdapterState): Promise<void> {
  await fs.promises.mkdir(lockPath);
  state.madeDir = true;
  try {
    if (state.modes) await fs.promises.chmod(lockPath, state.modes.dir);
    // `wx`: if a takeover put another holder's directory back in place meanwhile, we must not overwrite
    // its owner file; EEXIST then reads as "held" to proper-lockfile.
    const ownerFile = path.join(lockPath, OWNER_FILE);
    await fs.promises.writeFile(ownerFile, JSON.stringify(state.owner), { flag: 'wx' });
    state.createdByUs = true;
    // Our own new file: should it vanish first (a takeover), the heartbeat reports the lock compromised.
    if (state.modes) await fs.promises.chmod(ownerFile, state.modes.file).catch(() => {});
  } catch (error) {
    await fs.promises.rmdir(lockPath).catch(() => {});
    throw error;
  }
}

async function readHeartbeat(lockPath: string): Promise<Heartbeat> {
  const lockStats = await fs.promises.lstat(lockPath);
  // Not a directory: nobody's lock, only an obstacle (see breakStaleLock).
  if (!lockStats.isDirectory()) return { mtime: new Date(0), owner: undefined, dirInode: lockStats.ino };
  let handle: fs.promises.FileHandle;
  try {
    // O_NONBLOCK: a FIFO planted as the owner file must not hang the waiter.
    handle = await fs.promises.open(path.join(lockPath, OWNER_FILE), READ_NO_FOLLOW_NO_BLOCK);
  } catch (error) {
    // Just created, owner file not written yet (or its writer died right there): the directory's age decides.
    if (errorCode(error) !== 'ENOENT') throw error;
    return { mtime: lockStats.mtime, owner: undefined, dirInode: lockStats.ino };
  }
  try {
    const stats = await handle.stat();
    const mtime = stats.mtime;
    const owner = stats.isFile() ? parseOwner(await readOwnerText(handle)) : undefined;
    // An owner file left empty or torn (its writer killed between creating and writing it) names nobody:
    // like a missing one, its age decides and the directory's inode tells this lock from the next.
    if (!owner) return { mtime, owner, dirInode: lockStats.ino };
    // Exact proof that the holder is gone ends the wait at once; anything less, the heartbeat's age decides.
    return { mtime: isProvablyDead(owner) ? new Date(0) : mtime, owner };
  } finally {
    await handle.close().catch(() => {});
  }
}

/** Whether this very process holds the lock (its heartbeat may lag only because our event loop stalled). */
function isHeldHere(heartbeat: Heartbeat): boolean {
  return heartbeat.owner !== undefined && heldByThisProcess.has(heartbeat.owner.token);
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

/**
 * Whether the holder is certainly gone (DESIGN.md principle 8). On Linux that takes the same boot and the
 * same PID namespace as ours (a pid means nothing across either: a container with the host's name cannot
 * see the host's processes), and then a pid that no longer runs, or runs a process started at another
 * time. Elsewhere (no namespaces) the same host name and a pid that no longer runs. A live process of
 * another user answers EPERM: alive.
 */
function isProvablyDead(owner: LockOwner): boolean {
  if (owner.host !== thisHost) return false;
  if (thisProcess.bootId !== undefined) {
    if (owner.bootId !== thisProcess.bootId || owner.pidNamespace !== thisProcess.pidNamespace) return false;
    if (!isProcessAlive(owner.pid)) return true;
    const startTime = processStartTime(owner.pid);
    return owner.startTime !== undefined && startTime !== undefined && startTime !== owner.startTime;
  }
  return !isProcessAlive(owner.pid);
}

function readProcessIdentity(): ProcessIdentity {
  if (process.platform !== 'linux') return {};
  try {
    return {
      bootId: fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
      pidNamespace: fs.readlinkSync('/proc/self/ns/pid'),
      startTime: processStartTime(process.pid),
    };
  } catch {
    return {};
  }
}

/** Field 22 of /proc/<pid>/stat (clock ticks after boot); the name before it may hold spaces and ')'. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
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
 * Removes a stale lock without racing other waiters that judged it stale too. The right to break one
 * lock instance is itself a `mkdir`: of a breaker directory INSIDE that instance, which exactly one
 * waiter wins. The winner re-reads the lock: only if the same owner is still there and still stale does it
 * move the instance aside and delete it. A waiter that lost, or that finds the lock changed (released,
 * re-taken, or being created), leaves it alone and keeps waiting.
 */
async function breakStaleLock(
  lockPath: string,
  judged: Heartbeat | undefined,
  staleMs: number,
  modes: CreateModes | undefined,
): Promise<void> {
  // Something at the lock's name that the cache did not make (a file, a symlink, a directory of someone
  // else's files) is nobody's lock: it is never entered, never removed, and the caller hears why.
  const stats = await fs.promises.lstat(lockPath);
  if (!stats.isDirectory()) throw new ForeignFileError(lockPath, describeKind(stats));
  if (!(await isOwnLockDir(lockPath))) throw new ForeignFileError(lockPath, 'a directory of other files');
  const breaker = path.join(lockPath, BREAKER_DIR);
  if (!(await claimBreaker(breaker, staleMs, modes)))
    throw lockedError('another waiter is taking this lock over');
  const current = await readHeartbeat(lockPath).catch(() => undefined);
  if (!judged || !current || !isSameStaleLock(judged, current, staleMs)) {
    await fs.promises.rmdir(breaker).catch(() => {});
    throw lockedError('the lock changed hands while being taken over');
  }
  await discardLockDir(lockPath);
}

/**
 * Creates the breaker directory; `false` if another waiter holds it. A breaker only lives for the few
 * milliseconds of a takeover, so one older than the stale threshold belongs to a waiter that died there.
 * (ENOENT, the lock already gone, propagates: proper-lockfile then simply retries its mkdir.)
 */
async function claimBreaker(
  breaker: string,
  staleMs: number,
  modes: CreateModes | undefined,
): Promise<boolean> {
  // A breaker left by a waiter that died mid-takeover must be removable by the next, whoever runs it.
  const shareBreaker = () => (modes ? fs.promises.chmod(breaker, modes.dir).catch(() => {}) : undefined);
  try {
    await fs.promises.mkdir(breaker);
    await shareBreaker();
    return true;
  } catch (error) {
    if (errorCode(error) !== 'EEXIST') throw error;
  }
  const { mtime } = await fs.promises.stat(breaker);
  if (!isStale(mtime, staleMs)) return false;
  await fs.promises.rmdir(breaker).catch(() => {});
  return fs.promises.mkdir(breaker).then(
    async () => {
      await shareBreaker();
      return true;
    },
    () => false,
  );
}

/**
 * Whether the lock found now is the one judged stale before, still stale. A lock with an owner is known by
 * its token (our breaker directory does not touch the owner file's mtime); one without, by its
 * directory's inode (its mtime just changed when we created the breaker inside).
 */
function isSameStaleLock(judged: Heartbeat, current: Heartbeat, staleMs: number): boolean {
  if (judged.owner || current.owner) {
    return current.owner?.token === judged.owner?.token && isStale(current.mtime, staleMs);
  }
  return current.dirInode !== undefined && current.dirInode === judged.dirInode;
}

function isStale(heartbeat: Date, staleMs: number): boolean {
  return (
    heartbeat.getTime() + mtimeGranularityMs(heartbeat) < Date.now() - Math.max(staleMs, MIN_LOCK_STALE_MS)
  );
}

/**
 * How much older than the real heartbeat a stored mtime may read: SMB keeps whole seconds, FAT and exFAT
 * even seconds, so a heartbeat written at 12:00:00.9 reads as 12:00:00. An mtime with a fraction came from
 * a fine-grained file system and is exact. (A whole-second mtime from ext4 happens once in a thousand: it
 * costs a second of extra patience, never a wrong takeover.)
 */
export function mtimeGranularityMs(mtime: Date): number {
  const ms = mtime.getTime();
  if (ms % 1_000 !== 0) return 0;
  return ms % 2_000 === 0 ? 2_000 : 1_000;
}

function lockedError(message: string): Error {
  return Object.assign(new Error(message), { code: 'ELOCKED' });
}

/** Removes our own lock, and only ours: if it was taken over meanwhile, the lock there is someone else's. */
async function removeOwnLock(lockPath: string, token: string): Promise<void> {
  if ((await readOwnerToken(lockPath)) !== token) return;
  await discardLockDir(lockPath, { ownOwnerFile: true });
}

// An owner file is a few hundred bytes; Buffer.allocUnsafe serves up to 4 KiB from its shared pool.
const OWNER_READ_BYTES = 4095;

/**
 * The token in the lock's owner file, read with one `read`: all a release needs to know is whether the lock
 * is still ours, not how old its heartbeat is or whether its holder lives. `undefined` for anything else.
 */
async function readOwnerToken(lockPath: string): Promise<string | undefined> {
  let handle: fs.promises.FileHandle | undefined;
  try {
    handle = await fs.promises.open(path.join(lockPath, OWNER_FILE), READ_NO_FOLLOW_NO_BLOCK);
    return parseOwner(await readOwnerText(handle))?.token;
  } catch {
    return undefined;
  } finally {
    await handle?.close().catch(() => {});
  }
}

/** An owner file's text, normally with one `read` (`readFile` would fstat first: waiters poll this). */
async function readOwnerText(handle: fs.promises.FileHandle): Promise<string> {
  const buffer = Buffer.allocUnsafe(OWNER_READ_BYTES);
  const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
  return bytesRead < buffer.length ? buffer.toString('utf8', 0, bytesRead) : handle.readFile('utf8');
}

/**
 * Frees the lock's name at once by renaming the directory aside, then deletes it. Deleting can fail for a
 * while: a network or FUSE client keeps a file another process has open (a waiter reading the owner file)
 * as `.nfsXXXX` / `.fuse_hidden*`, and Windows keeps a deleted file's name until its last handle closes,
 * so the directory is not empty yet. The lock is free either way; the deletion goes on in the background
 * until the waiter lets go, and whatever is still left (the process ended first) carries `.tmp.` in its
 * name and is swept as an orphan.
 */
async function discardLockDir(lockPath: string, { ownOwnerFile = false } = {}): Promise<void> {
  const aside = tmpPathFor(lockPath);
  // SMB refuses to rename a directory while a waiter has the owner file open, for the moment of its read.
  await renameWithRetry(lockPath, aside, { retryCodes: LOCK_RENAME_RETRY_CODES });
  // Our own lock holds just the owner file we wrote, unless a waiter left a breaker or a silly rename:
  // removed by name at once, and only if that leaves something, listed and removed name by name.
  if (ownOwnerFile && (await removeOwnerFileAndDir(aside))) return;
  if (!(await removeLockDir(aside).catch(() => false))) void removeLockDirLater(aside);
}

/** Unlinks the owner file of a lock directory renamed aside, then the directory; `false` if it is not empty. */
async function removeOwnerFileAndDir(dir: string): Promise<boolean> {
  await fs.promises.unlink(path.join(dir, OWNER_FILE)).catch(() => {});
  return fs.promises.rmdir(dir).then(
    () => true,
    () => false,
  );
}

const LATE_REMOVAL_DELAYS_MS = [100, 200, 400, 800, 1_600, 3_200, 6_400];

/** Further attempts at a lock directory a reader kept, on timers that never keep the process alive. */
async function removeLockDirLater(dir: string): Promise<void> {
  for (const delayMs of LATE_REMOVAL_DELAYS_MS) {
    await new Promise((resolve) => setTimeout(resolve, delayMs).unref());
    if (await removeLockDir(dir).catch(() => false)) return;
  }
}

const LOCK_RENAME_RETRY_CODES = new Set(['EACCES', 'EBUSY', 'EPERM', 'EEXIST']);

// A client of a network or FUSE file system renames a removed file that is still open to one of these.
const SILLY_RENAME = /^\.(nfs|fuse_hidden)[0-9A-Za-z]+$/;

/** Whether every name in a lock directory is one the cache puts there (so it may remove the directory). */
function isOwnLockContent(names: readonly string[]): boolean {
  return names.every((name) => name === OWNER_FILE || name === BREAKER_DIR || SILLY_RENAME.test(name));
}

/** Whether `dir` holds only what a lock of the cache holds: its owner file, a breaker, silly renames. */
export async function isOwnLockDir(dir: string): Promise<boolean> {
  return isOwnLockContent(await fs.promises.readdir(dir));
}

/**
 * Removes a lock directory of the cache's (in place or renamed aside) name by name, never recursively: only
 * the owner file, the breaker directory and silly renames of the owner file. Anything else inside means
 * it is not ours, and it stays. `false` when it could not be removed (yet): a silly rename goes away only
 * once its last reader closes it, and the sweep tries again later.
 */
export async function removeLockDir(dir: string): Promise<boolean> {
  // A waiter reads the owner file for a moment; while it has it open, a FUSE or NFS client keeps it as a
  // silly rename and the directory is not empty. A few short retries outlast such a read.
  for (let attempt = 0; attempt < SILLY_RENAME_RETRIES; attempt++) {
    let names: string[];
    try {
      names = await fs.promises.readdir(dir);
    } catch (error) {
      return errorCode(error) === 'ENOENT'; // gone: removed by someone else meanwhile
    }
    if (!isOwnLockContent(names)) return false;
    for (const name of names) {
      const inside = path.join(dir, name);
      await (name === BREAKER_DIR ? fs.promises.rmdir(inside) : fs.promises.unlink(inside)).catch(() => {});
    }
    if (
      await fs.promises.rmdir(dir).then(
        () => true,
        () => false,
      )
    )
      return true;
    await sleep(SILLY_RENAME_RETRY_MS);
  }
  return false;
}

const SILLY_RENAME_RETRIES = 10;
const SILLY_RENAME_RETRY_MS = 50;

function removeOwnLockSync(lockPath: string, token: string): void {
  try {
    const owner = parseOwner(fs.readFileSync(path.join(lockPath, OWNER_FILE), 'utf8'));
    if (owner?.token !== token) return;
    const aside = tmpPathFor(lockPath);
    fs.renameSync(lockPath, aside);
    const names = fs.readdirSync(aside);
    if (!isOwnLockContent(names)) return;
    for (const name of names) {
      const inside = path.join(aside, name);
      if (name === BREAKER_DIR) fs.rmdirSync(inside);
      else fs.unlinkSync(inside);
    }
    fs.rmdirSync(aside);
  } catch {}
}
