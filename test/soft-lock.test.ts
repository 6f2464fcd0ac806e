import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LockTimeoutError } from '../src/errors.js';
import { describeLockHolder, type HeldLock, isLockHeld, tryLock, waitForLock } from '../src/soft-lock.js';

// The soft lock in one process against real directories; test/multiprocess.test.ts covers real holders.

const STALE_MS = 10_000;
const thisHost = os.hostname();
const me = `${thisHost}/${process.pid}`;

let dir: string;
let lockPath: string;
const held: HeldLock[] = [];

async function lock(staleMs = STALE_MS): Promise<HeldLock | undefined> {
  const result = await tryLock(lockPath, staleMs);
  if (result) held.push(result);
  return result;
}

/** Plants a lock directory as another process would leave it; `owner` undefined leaves out owner.json. */
function plantLock(
  owner: { host: string; pid: number; bootId?: string; pidNamespace?: string } | undefined,
  ages: { ownerMs?: number; dirMs?: number },
) {
  fs.mkdirSync(lockPath);
  const ownerFile = path.join(lockPath, 'owner.json');
  if (owner) {
    const record = { ...owner, token: `planted-${owner.pid}`, acquiredAt: new Date().toISOString() };
    fs.writeFileSync(ownerFile, JSON.stringify(record));
    const when = new Date(Date.now() - (ages.ownerMs ?? 0));
    fs.utimesSync(ownerFile, when, when);
  }
  const dirWhen = new Date(Date.now() - (ages.dirMs ?? 0));
  fs.utimesSync(lockPath, dirWhen, dirWhen);
}

/** The pid of a process that has exited and been reaped: no process has it (until the pid is reused). */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.on('exit', resolve));
  if (child.pid === undefined) throw new Error('could not spawn node');
  return child.pid;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-lock-'));
  lockPath = path.join(dir, 'key.bin.lock');
});

afterEach(async () => {
  await Promise.all(held.splice(0).map((h) => h.release()));
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('tryLock', () => {
  it('gives the lock to one caller; a second gets undefined until the first releases', async () => {
    const first = await lock();
    expect(first).toBeDefined();
    expect(first?.compromised).toBeUndefined();
    expect(await lock()).toBeUndefined();
    expect(await lock()).toBeUndefined();

    await first?.release();
    const second = await lock();
    expect(second).toBeDefined();
  });

  it('writes the owner file inside the lock directory and removes the directory on release', async () => {
    const first = await lock();
    const owner = JSON.parse(fs.readFileSync(path.join(lockPath, 'owner.json'), 'utf8'));
    expect(owner).toMatchObject({ host: thisHost, pid: process.pid });
    expect(typeof owner.token).toBe('string');
    expect(await isLockHeld(lockPath, STALE_MS)).toBe(true);

    await first?.release();
    expect(fs.existsSync(lockPath)).toBe(false);
    expect(await isLockHeld(lockPath, STALE_MS)).toBe(false);
  });

  it('removes its whole directory on release, a breaker left inside by a waiter included', async () => {
    const first = await lock();
    fs.mkdirSync(path.join(lockPath, 'breaker'));

    await first?.release();

    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('leaves the lock alone on release when its owner file names another holder (taken over meanwhile)', async () => {
    const first = await lock();
    const ownerFile = path.join(lockPath, 'owner.json');
    const successor = { ...JSON.parse(fs.readFileSync(ownerFile, 'utf8')), token: 'successor' };
    fs.writeFileSync(ownerFile, JSON.stringify(successor));

    await first?.release();

    expect(JSON.parse(fs.readFileSync(ownerFile, 'utf8')).token).toBe('successor');
  });

  it('keeps its heartbeat going past staleMs when its precision probe was answered from an earlier lock in the directory', async () => {
    const staleMs = 2_000;
    await (await lock(staleMs))?.release();
    const second = await lock(staleMs);
    expect(second).toBeDefined();

    // Heartbeats run every staleMs / 2; each first checks that the owner file's mtime is still the one the
    // lock recorded (here the probe's), and marks the lock compromised if not.
    await new Promise((resolve) => setTimeout(resolve, 1.75 * staleMs));

    expect(second?.compromised).toBeUndefined();
  });

  it('takes over at once a lock whose holder on this host is dead, however fresh its heartbeat', async () => {
    plantLock({ host: thisHost, pid: await deadPid(), ...sameBootAndNamespace() }, {});

    const taken = await lock(60_000);

    expect(taken).toBeDefined();
    expect(await describeLockHolder(lockPath)).toBe(me);
  });

  it.skipIf(process.platform !== 'linux')(
    'waits for the heartbeat of a dead pid recorded in another PID namespace or boot: no exact proof',
    async () => {
      for (const other of [
        { ...sameBootAndNamespace(), pidNamespace: 'pid:[1]' },
        { ...sameBootAndNamespace(), bootId: '00000000-0000-0000-0000-000000000000' },
        {}, // an owner file written without an identity (an older version): no proof either
      ]) {
        plantLock({ host: thisHost, pid: await deadPid(), ...other }, {});
        expect(await lock(), JSON.stringify(other)).toBeUndefined();
        fs.rmSync(lockPath, { recursive: true, force: true });
      }
    },
  );

  it('takes over a lock from another host whose heartbeat is older than staleMs', async () => {
    plantLock({ host: 'other-host', pid: 4242 }, { ownerMs: 3 * STALE_MS, dirMs: 3 * STALE_MS });

    const taken = await lock();

    expect(taken).toBeDefined();
    expect(await describeLockHolder(lockPath)).toBe(me);
  });

  it('leaves alone a lock from another host with a fresh heartbeat, even in an old directory', async () => {
    // The heartbeat is the owner file's mtime: directory attributes are cached for seconds on NFS.
    plantLock({ host: 'other-host', pid: 4242 }, { ownerMs: 0, dirMs: 3 * STALE_MS });

    expect(await lock()).toBeUndefined();
    expect(await describeLockHolder(lockPath)).toBe('other-host/4242');
  });

  it('does not judge a pid from another host by the processes of this host', async () => {
    plantLock({ host: 'other-host', pid: await deadPid() }, {});

    expect(await lock()).toBeUndefined();
  });

  it('takes over a lock directory without owner file whose mtime is older than staleMs', async () => {
    plantLock(undefined, { dirMs: 3 * STALE_MS });

    const taken = await lock();

    expect(taken).toBeDefined();
    expect(await describeLockHolder(lockPath)).toBe(me);
  });

  // A holder killed between creating its owner file and writing it leaves an empty one: no owner to prove
  // dead, so the file's age decides, exactly as for a missing owner file (the crash lab's rare leftover).
  it('takes over a lock whose owner file was left empty or torn, once that file is older than staleMs', async () => {
    for (const text of ['', '{"host":"h']) {
      plantLock(undefined, {});
      const ownerFile = path.join(lockPath, 'owner.json');
      fs.writeFileSync(ownerFile, text);
      const old = new Date(Date.now() - 3 * STALE_MS);
      fs.utimesSync(ownerFile, old, old);

      const taken = await lock();

      expect(taken).toBeDefined();
      expect(await describeLockHolder(lockPath)).toBe(me);
      await taken?.release();
    }
  });

  it('leaves alone a lock directory without owner file created just now (owner file not written yet)', async () => {
    plantLock(undefined, {});

    expect(await lock()).toBeUndefined();
    expect(fs.existsSync(lockPath)).toBe(true);
  });
});

describe('waitForLock', () => {
  it('rejects with LockTimeoutError naming the holder when the lock is held past timeoutMs', async () => {
    await lock();
    const timeoutMs = 300;

    const error = await waitForLock(lockPath, { key: 'key.bin', staleMs: STALE_MS, timeoutMs }).catch(
      (e: unknown) => e,
    );

    expect(error).toBeInstanceOf(LockTimeoutError);
    expect(error).toMatchObject({ code: 'ERR_LOCK_TIMEOUT', key: 'key.bin', holder: me });
    expect((error as LockTimeoutError).message).toContain(me);
    expect((error as LockTimeoutError).waitedMs).toBeGreaterThanOrEqual(timeoutMs);
  });

  it("rejects with the signal's reason when aborted while waiting", async () => {
    await lock();
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    setTimeout(() => controller.abort(reason), 100);

    await expect(
      waitForLock(lockPath, {
        key: 'key.bin',
        staleMs: STALE_MS,
        timeoutMs: 60_000,
        signal: controller.signal,
      }),
    ).rejects.toBe(reason);
  });

  it('rejects with an AbortError when aborted without a reason', async () => {
    await lock();
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);

    await expect(
      waitForLock(lockPath, {
        key: 'key.bin',
        staleMs: STALE_MS,
        timeoutMs: 60_000,
        signal: controller.signal,
      }),
    ).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('ends the wait without the lock when what it waits for is there by the time the holder releases', async () => {
    const first = await lock();
    let published = false;
    let released: Promise<void> | undefined;
    setTimeout(() => {
      published = true;
      released = first?.release();
    }, 200);

    const outcome = await waitForLock(lockPath, {
      key: 'key.bin',
      staleMs: STALE_MS,
      timeoutMs: 30_000,
      satisfied: async () => published,
    });

    // Taking the free lock only to find the work done would hold up every other waiter.
    expect(outcome).toBeUndefined();
    await released;
    expect(fs.existsSync(lockPath)).toBe(false);
  });

  it('gets the lock as soon as the holder releases it', async () => {
    const first = await lock();
    setTimeout(() => void first?.release(), 200);

    const second = await waitForLock(lockPath, { key: 'key.bin', staleMs: STALE_MS, timeoutMs: 30_000 });
    held.push(second);

    expect(await describeLockHolder(lockPath)).toBe(me);
    expect(second.compromised).toBeUndefined();
  });
});

describe('describeLockHolder', () => {
  it("returns the holder's host/pid, and undefined when there is no lock", async () => {
    expect(await describeLockHolder(lockPath)).toBeUndefined();
    await lock();
    expect(await describeLockHolder(lockPath)).toBe(me);
  });
});

describe('mtimeGranularityMs', () => {
  it('allows nothing for a fine-grained mtime, a second for whole seconds (SMB), two for even seconds (FAT)', async () => {
    const { mtimeGranularityMs } = await import('../src/soft-lock.js');
    expect(mtimeGranularityMs(new Date(Date.UTC(2026, 0, 1, 12, 0, 1, 250)))).toBe(0);
    expect(mtimeGranularityMs(new Date(Date.UTC(2026, 0, 1, 12, 0, 1)))).toBe(1_000);
    expect(mtimeGranularityMs(new Date(Date.UTC(2026, 0, 1, 12, 0, 2)))).toBe(2_000);
  });
});

/** This process's boot and PID namespace, as a lock owner on this machine records them (Linux). */
function sameBootAndNamespace(): { bootId?: string; pidNamespace?: string } {
  if (process.platform !== 'linux') return {};
  return {
    bootId: fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
    pidNamespace: fs.readlinkSync('/proc/self/ns/pid'),
  };
}
