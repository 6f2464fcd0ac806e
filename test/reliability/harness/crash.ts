import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { backgroundSweep } from '../../../src/cache-manager.js';
import type { PublishPhase } from '../../../src/crash-points.js';
import { CacheManager } from '../../../src/index.js';
import { mtimeGranularityMs } from '../../../src/soft-lock.js';
import { patternBytes, sha256 } from '../../helpers.js';
import { type ChildEvent, JsonLinesChild, killChildren } from './json-lines-child.js';

/**
 * Scenario 2, crash at every phase (DESIGN.md principle 2): a writer replacing an expired entry is SIGKILLed
 * at each phase of publication in turn, then at random moments. After every kill the harness reads the disk
 * directly (a valid manifest must describe exactly the bytes beside it, and the payload path holds the old
 * or the new payload whole), lets a fresh process getOrFetch the key (it must get the old entry while that
 * is still committed, the new bytes otherwise), and sweeps with `staleTmpMs: 0` (nothing but the entry's
 * payload and manifest may remain). The harness measures and reports, it asserts nothing, so that each lane
 * (local disk, two sshfs mounts) states its own expectations.
 *
 * Clocks: the writer runs with `ttl: 0`, so the previous entry is expired to it and it really replaces it,
 * while the checker runs with a ttl of an hour, so an old entry that is still committed is a hit for it:
 * "old bytes served" then proves the previous entry survived, instead of being refetched either way.
 */

const FIXTURE = fileURLToPath(new URL('../fixtures/crash-child.mjs', import.meta.url));
const KEY = 'payload.bin';
const MANIFEST = `${KEY}.manifest.json`;
const LOCK_DIR = `${KEY}.lock`;
const MiB = 1024 * 1024;

/** The phases of publication, in the order a writer reaches them (src/crash-points.ts). */
export const PUBLISH_PHASES: readonly PublishPhase[] = [
  'locked',
  'streaming',
  'sealed',
  'manifest-removed',
  'renamed',
  'manifest-written',
];

// Four chunks: a writer paused at `streaming` has a quarter of the payload in its tmp file.
const PHASE_PAYLOAD_BYTES = 256 * 1024;
const PHASE_CHUNK_BYTES = 64 * 1024;
// 3 MiB in 32 KiB pieces 4 ms apart: about half a second of streaming, so that random kills land
// mostly mid-stream and sometimes in the commit.
const DEFAULT_PAYLOAD_BYTES = 3 * MiB;
const DEFAULT_CHUNK_BYTES = 32 * 1024;
const DEFAULT_CHUNK_DELAY_MS = 4;
// The library's minimum: a lock directory whose owner file was never written can only be judged by its
// age, so the sweep for such a lock waits this long.
const LOCK_STALE_MS = 2_000;
// An hour: long enough that the previous entry stays fresh to the checker for the whole run.
const CHECKER_TTL_MS = 60 * 60_000;
// Starting node on two busy cores can take seconds; a step that takes this long is stuck.
const DEFAULT_STEP_TIMEOUT_MS = 60_000;
const PAUSE_POLL_MS = 5;

export interface CrashOptions {
  /** Iteration i writes through `roots[i % roots.length]` and checks through `roots[(i + 1) % roots.length]`. */
  roots: string[];
  /** Iterations that SIGKILL a streaming writer after a random delay. */
  randomKills: number;
  /** Payload size of the random-kill iterations (the phase iterations use 256 KiB); default 3 MiB. */
  payloadBytes?: number;
  chunkBytes?: number;
  chunkDelayMs?: number;
  /** Seeds the payload bytes and the kill moments (as fractions of the writer's run time); default random. */
  seed?: number;
  stepTimeoutMs?: number;
}

/** Whose bytes a file holds: the previous entry's, the writer's, something else, or nothing. */
export type BytesSeen = 'old' | 'new' | 'other' | 'absent';

/** The sublayer as found right after a kill. */
export interface DiskState {
  /** Which payload a valid manifest commits (manifest and payload agree), or `none`. */
  committed: 'old' | 'new' | 'none';
  manifest: 'valid' | 'invalid' | 'absent';
  payload: BytesSeen;
  tmpFiles: number;
  /** A tmp file holds the new payload whole: the writer had sealed it. */
  sealedTmp: boolean;
  lockDir: boolean;
}

export interface CrashIteration {
  label: string;
  kind: 'phase' | 'random';
  phase?: PublishPhase;
  /** Random kills: the delay after the writer said `ready`. */
  killAfterMs?: number;
  writeRoot: string;
  checkRoot: string;
  /** The writer was still running when SIGKILLed; `false` when it finished first. */
  killed: boolean;
  afterKill: DiskState;
  /** What the fresh process's getOrFetch returned. */
  served: BytesSeen | 'error';
  checkerFetched: boolean;
  /** The sweep had to wait for a lock directory without an owner file to age (see LOCK_STALE_MS). */
  lateSweep: boolean;
  /** Names left in the sublayer after the sweep besides the entry's payload and manifest. */
  orphans: string[];
  /** The previous entry was neither served nor legitimately replaced. */
  entryLost: boolean;
  /** A manifest paired with other bytes, a torn payload, or bytes served that no commit named. */
  mismatches: string[];
  /** Every failed check of this iteration, mismatches and loss included. */
  problems: string[];
  bytesVerified: number;
}

export interface CrashResult {
  seed: number;
  iterations: CrashIteration[];
  /** Node processes started. */
  processes: number;
  /** How long an uninterrupted random-kill writer took, from `ready` to `done`: the kill delays' range. */
  expectedRunMs: number;
  killsDelivered: number;
  /** Kills after which every check passed. */
  killsSurvived: number;
  /** Random iterations whose writer finished before its kill came. */
  finishedBeforeKill: number;
  bytesVerified: number;
  entriesLost: number;
  orphansLeft: number;
  mismatches: number;
  /** Every iteration's problems, prefixed with its label. */
  problems: string[];
}

interface ChildConfig {
  mode: 'write' | 'check';
  root: string;
  sublayer: string;
  key: string;
  source: string;
  chunkBytes: number;
  chunkDelayMs: number;
  ttlMs: number;
  lockStaleMs: number;
}

type KillPlan = { kind: 'phase'; phase: PublishPhase } | { kind: 'random'; killAfterMs: number; n: number };

/** What the fresh process's getOrFetch returned. */
interface FreshRead {
  served: BytesSeen | 'error';
  fetched: boolean;
  path?: string;
  bytesVerified: number;
  failure?: string;
}

interface Payloads {
  old: Buffer;
  new: Buffer;
  oldSha: string;
  newSha: string;
  oldSource: string;
  newSource: string;
}

/** Runs scenario 2 and reports what it found; kills and awaits every child it started, whatever happens. */
export async function runCrashAtEveryPhase(options: CrashOptions): Promise<CrashResult> {
  if (options.roots.length === 0) throw new Error('runCrashAtEveryPhase needs at least one root');
  const run = new CrashRun(options);
  try {
    return await run.all();
  } finally {
    await run.dispose();
  }
}

class CrashRun {
  readonly #options: CrashOptions;
  readonly #seed: number;
  readonly #random: () => number;
  readonly #runId = randomBytes(4).toString('hex');
  readonly #scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-crash-'));
  readonly #children = new Set<JsonLinesChild>();
  readonly #stepTimeoutMs: number;
  #processes = 0;

  constructor(options: CrashOptions) {
    this.#options = options;
    this.#seed = (options.seed ?? randomBytes(4).readUInt32LE()) >>> 0;
    this.#random = mulberry32(this.#seed);
    this.#stepTimeoutMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  }

  async all(): Promise<CrashResult> {
    const iterations: CrashIteration[] = [];
    let index = 0;
    for (const phase of PUBLISH_PHASES) {
      iterations.push(await this.#iteration(index++, { kind: 'phase', phase }));
    }
    const expectedRunMs = await this.#calibrate(index++);
    for (let n = 0; n < this.#options.randomKills; n++) {
      const killAfterMs = Math.round(this.#random() * expectedRunMs);
      iterations.push(await this.#iteration(index++, { kind: 'random', killAfterMs, n }));
    }
    const killed = iterations.filter((it) => it.killed);
    const problems = iterations.flatMap((it) => it.problems.map((problem) => `${it.label}: ${problem}`));
    return {
      seed: this.#seed,
      iterations,
      processes: this.#processes,
      expectedRunMs,
      killsDelivered: killed.length,
      killsSurvived: killed.filter((it) => it.problems.length === 0).length,
      finishedBeforeKill: iterations.filter((it) => it.kind === 'random' && !it.killed).length,
      bytesVerified: iterations.reduce((sum, it) => sum + it.bytesVerified, 0),
      entriesLost: iterations.filter((it) => it.entryLost).length,
      orphansLeft: iterations.reduce((sum, it) => sum + it.orphans.length, 0),
      mismatches: iterations.reduce((sum, it) => sum + it.mismatches.length, 0),
      problems,
    };
  }

  async dispose(): Promise<void> {
    await killChildren(this.#children);
    fs.rmSync(this.#scratch, { recursive: true, force: true });
  }

  /**
   * One uninterrupted random-kill writer: it proves that the writer really replaces the expired entry (else
   * every kill would test nothing), and its duration is the range of the random kill delays.
   */
  async #calibrate(index: number): Promise<number> {
    const { writeRoot, sublayer } = this.#place(index);
    const payloads = this.#payloads(index, this.#options.payloadBytes ?? DEFAULT_PAYLOAD_BYTES);
    await this.#seedEntry(writeRoot, sublayer, payloads);
    const writer = this.#start(this.#config('write', writeRoot, sublayer, payloads.newSource, true));
    const ready = await writer.waitFor(is('ready'), this.#stepTimeoutMs, 'ready');
    const done = await writer.waitFor(is('done', 'error'), this.#stepTimeoutMs, 'done');
    if (done.event !== 'done' || done.sha256 !== payloads.newSha || done.fetched !== true) {
      throw new Error(`the calibration writer did not replace the expired entry: ${writer.describe()}`);
    }
    await writer.exited;
    this.#dropSources(payloads);
    return Number(done.at) - Number(ready.at);
  }

  async #iteration(index: number, plan: KillPlan): Promise<CrashIteration> {
    const { writeRoot, checkRoot, sublayer } = this.#place(index);
    const random = plan.kind === 'random';
    const sizeBytes = random ? (this.#options.payloadBytes ?? DEFAULT_PAYLOAD_BYTES) : PHASE_PAYLOAD_BYTES;
    const payloads = this.#payloads(index, sizeBytes);
    const dir = path.join(checkRoot, sublayer);

    await this.#seedEntry(writeRoot, sublayer, payloads);
    const { killed, problems } = await this.#killWriter(index, plan, writeRoot, sublayer, payloads);
    // The disk as the kill left it, read through the other mount when there are two.
    const afterKill = inspect(dir, payloads);
    const fresh = await this.#freshRead(checkRoot, sublayer, payloads);
    const verdict = judgeFreshRead(afterKill.state, fresh, path.join(dir, KEY));
    const sweep = await this.#sweep(checkRoot, sublayer, payloads, fresh.served);
    const mismatches = [
      ...afterKill.mismatches,
      ...verdict.mismatches,
      ...sweep.mismatches.map((m) => `after the sweep: ${m}`),
    ];
    problems.push(...verdict.problems, ...sweep.problems, ...mismatches);
    this.#dropSources(payloads);
    return {
      label: plan.kind === 'phase' ? `phase ${plan.phase}` : `random kill ${plan.n + 1}`,
      kind: plan.kind,
      ...(plan.kind === 'phase' ? { phase: plan.phase } : { killAfterMs: plan.killAfterMs }),
      writeRoot,
      checkRoot,
      killed,
      afterKill: afterKill.state,
      served: fresh.served,
      checkerFetched: fresh.fetched,
      lateSweep: sweep.late,
      orphans: sweep.orphans,
      entryLost: verdict.entryLost,
      mismatches,
      problems,
      bytesVerified: afterKill.bytesVerified + fresh.bytesVerified + sweep.bytesVerified,
    };
  }

  /** Starts the writer and SIGKILLs it at its crash point, or after a random delay once it is ready. */
  async #killWriter(
    index: number,
    plan: KillPlan,
    root: string,
    sublayer: string,
    payloads: Payloads,
  ): Promise<{ killed: boolean; problems: string[] }> {
    const problems: string[] = [];
    const pauseFile = path.join(this.#scratch, `pause-${index}`);
    const config = this.#config('write', root, sublayer, payloads.newSource, plan.kind === 'random');
    if (plan.kind === 'phase') {
      const writer = this.#start(config, { at: plan.phase, file: pauseFile });
      await this.#waitForPause(writer, pauseFile, plan.phase);
      writer.process.kill('SIGKILL');
      const exit = await writer.exited;
      if (exit.signal !== 'SIGKILL') problems.push(`the writer was not killed at ${plan.phase}`);
      return { killed: exit.signal === 'SIGKILL', problems };
    }
    const writer = this.#start(config);
    await writer.waitFor(is('ready'), this.#stepTimeoutMs, 'ready');
    await delay(plan.killAfterMs);
    if (writer.running) writer.process.kill('SIGKILL');
    const exit = await writer.exited;
    if (exit.signal !== 'SIGKILL' && exit.code !== 0) {
      problems.push(`the writer failed on its own: ${writer.describe()}`);
    }
    return { killed: exit.signal === 'SIGKILL', problems };
  }

  /** A fresh process's getOrFetch; its fetcher offers the new payload, for the case of a miss. */
  async #freshRead(root: string, sublayer: string, payloads: Payloads): Promise<FreshRead> {
    const checker = this.#start(this.#config('check', root, sublayer, payloads.newSource, false));
    const answer = await checker.waitFor(is('done', 'error'), this.#stepTimeoutMs, 'done');
    await checker.exited;
    if (answer.event !== 'done') {
      return { served: 'error', fetched: false, bytesVerified: 0, failure: checker.describe() };
    }
    const served = whose(answer.sha256, payloads);
    return {
      served,
      fetched: answer.fetched === true,
      path: String(answer.path),
      bytesVerified: served === 'old' || served === 'new' ? Number(answer.sizeBytes) : 0,
    };
  }

  /**
   * prune() with `staleTmpMs: 0`, so that every orphan is old enough to go: only the entry the fresh
   * process got may remain, as a matching payload and manifest.
   */
  async #sweep(root: string, sublayer: string, payloads: Payloads, served: FreshRead['served']) {
    const dir = path.join(root, sublayer);
    const problems: string[] = [];
    let late = false;
    let failure = await this.#prune(root, sublayer);
    const ownerlessAgeMs = ownerlessLockAgeMs(dir);
    if (!failure && ownerlessAgeMs !== undefined) {
      // Killed between the lock's mkdir and its owner file (or with that file still empty): only the lock's
      // age can tell it is dead.
      late = true;
      await delay(Math.max(0, LOCK_STALE_MS + 250 - ownerlessAgeMs));
      failure = await this.#prune(root, sublayer);
    }
    if (failure) problems.push(failure);
    const orphans = readNames(dir)
      .filter((name) => name !== KEY && name !== MANIFEST)
      .sort();
    if (orphans.length > 0) {
      problems.push(
        `orphans left after the sweep: ${orphans.map((name) => describeOrphan(dir, name)).join(', ')}`,
      );
    }
    const after = inspect(dir, payloads);
    if (served !== 'error' && after.state.committed !== served) {
      problems.push(`after the sweep the entry is ${after.state.committed}, the fresh process got ${served}`);
    }
    return { late, orphans, problems, mismatches: after.mismatches, bytesVerified: after.bytesVerified };
  }

  /** Publishes the previous entry, which the writer will find expired. */
  async #seedEntry(root: string, sublayer: string, payloads: Payloads): Promise<void> {
    // In this process: only the writer and the fresh reader need processes of their own.
    const cache = new CacheManager({ sublayer, root, ttl: Number.POSITIVE_INFINITY });
    const published = await cache.getOrFetch(KEY, () => ({ body: payloads.old, sha256: payloads.oldSha }));
    // Its first-operation sweep must be over before the writer starts, so that nothing else touches the key.
    await cache[backgroundSweep];
    if (sha256(fs.readFileSync(published)) !== payloads.oldSha) {
      throw new Error(`could not publish the previous entry at ${published}`);
    }
  }

  /** One prune() with `staleTmpMs: 0`; a problem's description, or `undefined`. */
  async #prune(root: string, sublayer: string): Promise<string | undefined> {
    const cache = new CacheManager({
      sublayer,
      root,
      ttl: CHECKER_TTL_MS,
      lockStaleMs: LOCK_STALE_MS,
      staleTmpMs: 0,
    });
    return cache.prune().then(
      () => undefined,
      (error: unknown) => `prune() failed: ${String(error)}`,
    );
  }

  async #waitForPause(writer: JsonLinesChild, pauseFile: string, phase: PublishPhase): Promise<void> {
    const deadline = Date.now() + this.#stepTimeoutMs;
    while (readText(pauseFile) !== phase) {
      if (!writer.running || Date.now() > deadline) {
        throw new Error(`the writer never paused at ${phase}: ${writer.describe()}`);
      }
      await delay(PAUSE_POLL_MS);
    }
  }

  #place(index: number) {
    const { roots } = this.#options;
    return {
      writeRoot: roots[index % roots.length] as string,
      checkRoot: roots[(index + 1) % roots.length] as string,
      // A sublayer per iteration: each starts clean, and the sweep's verdict is about that kill alone.
      sublayer: `crash-${this.#runId}-${index}`,
    };
  }

  /** Old and new payloads of one size, different in every iteration, written as the fetchers' sources. */
  #payloads(index: number, sizeBytes: number): Payloads {
    const old = patternBytes(sizeBytes, (this.#seed + 2 * index + 1) >>> 0);
    const fresh = patternBytes(sizeBytes, (this.#seed + 2 * index + 2) >>> 0);
    const oldSource = path.join(this.#scratch, `old-${index}.bin`);
    const newSource = path.join(this.#scratch, `new-${index}.bin`);
    fs.writeFileSync(oldSource, old);
    fs.writeFileSync(newSource, fresh);
    return { old, new: fresh, oldSha: sha256(old), newSha: sha256(fresh), oldSource, newSource };
  }

  #dropSources(payloads: Payloads): void {
    fs.rmSync(payloads.oldSource, { force: true });
    fs.rmSync(payloads.newSource, { force: true });
  }

  #config(
    mode: ChildConfig['mode'],
    root: string,
    sublayer: string,
    source: string,
    slow: boolean,
  ): ChildConfig {
    const random = { bytes: DEFAULT_CHUNK_BYTES, delayMs: DEFAULT_CHUNK_DELAY_MS };
    return {
      mode,
      root,
      sublayer,
      key: KEY,
      source,
      chunkBytes: slow ? (this.#options.chunkBytes ?? random.bytes) : PHASE_CHUNK_BYTES,
      chunkDelayMs: slow ? (this.#options.chunkDelayMs ?? random.delayMs) : 0,
      ttlMs: mode === 'write' ? 0 : CHECKER_TTL_MS,
      lockStaleMs: LOCK_STALE_MS,
    };
  }

  #start(config: ChildConfig, pause?: { at: PublishPhase; file: string }): JsonLinesChild {
    const env: NodeJS.ProcessEnv = {};
    // Only this child's own hooks: a stray pause or fail-open setting inherited from the caller would
    // change what is being tested.
    for (const [name, value] of Object.entries(process.env)) {
      if (!name.startsWith('PAYLOAD_CACHE_TEST_')) env[name] = value;
    }
    if (pause) {
      env.PAYLOAD_CACHE_TEST_PAUSE_AT = pause.at;
      env.PAYLOAD_CACHE_TEST_PAUSE_FILE = pause.file;
    }
    const child = new JsonLinesChild(FIXTURE, config, env);
    this.#children.add(child);
    this.#processes += 1;
    void child.exited.then(() => this.#children.delete(child));
    return child;
  }
}

/**
 * Reads the sublayer as a reader on the disk would: which bytes the payload path holds, whether a valid
 * manifest describes exactly them, and what the writer left behind.
 */
function inspect(
  dir: string,
  payloads: Payloads,
): { state: DiskState; mismatches: string[]; bytesVerified: number } {
  const mismatches: string[] = [];
  let bytesVerified = 0;
  const names = readNames(dir);
  const payloadBytes = readRegularFile(path.join(dir, KEY));
  const payload: BytesSeen = payloadBytes ? whose(sha256(payloadBytes), payloads) : 'absent';
  if (payload === 'other')
    mismatches.push(`the payload holds neither payload whole (${payloadBytes?.length} bytes)`);
  else if (payloadBytes) bytesVerified += payloadBytes.length;

  let manifest: DiskState['manifest'] = 'absent';
  let committed: DiskState['committed'] = 'none';
  const manifestText = readText(path.join(dir, MANIFEST));
  if (manifestText !== undefined) {
    const parsed = parseManifest(manifestText);
    manifest = parsed ? 'valid' : 'invalid';
    if (!parsed)
      mismatches.push(`the manifest is not valid JSON of the right shape: ${manifestText.slice(0, 200)}`);
    else if (!payloadBytes) {
      // A manifest without payload is a miss to every reader (and an orphan to sweep), not a lie.
    } else if (parsed.size_bytes !== payloadBytes.length || parsed.sha256 !== sha256(payloadBytes)) {
      mismatches.push(
        `the manifest (size ${parsed.size_bytes}, ${whose(parsed.sha256, payloads)}) describes other bytes ` +
          `than the payload beside it (size ${payloadBytes.length}, ${payload})`,
      );
    } else if (payload === 'old' || payload === 'new') committed = payload;
  }

  const tmpNames = names.filter((name) => name.includes('.tmp.'));
  const sealedTmp = tmpNames.some((name) => {
    const bytes = readRegularFile(path.join(dir, name));
    return bytes !== undefined && bytes.length === payloads.new.length && sha256(bytes) === payloads.newSha;
  });
  return {
    state: {
      committed,
      manifest,
      payload,
      tmpFiles: tmpNames.length,
      sealedTmp,
      lockDir: names.includes(LOCK_DIR),
    },
    mismatches,
    bytesVerified,
  };
}

/**
 * What the fresh process must have got, given what the kill left: the old entry while it is committed
 * (fresh to that reader, so a hit without fetching), the new one when that is committed, and on a miss
 * the new bytes from its own fetch.
 */
function judgeFreshRead(
  state: DiskState,
  fresh: FreshRead,
  payloadPath: string,
): { entryLost: boolean; problems: string[]; mismatches: string[] } {
  const problems: string[] = [];
  const mismatches: string[] = [];
  let entryLost = false;
  if (fresh.served === 'error') problems.push(`the fresh process failed: ${fresh.failure}`);
  else {
    const shouldServe = state.committed === 'none' ? 'new' : state.committed;
    if (fresh.path !== payloadPath) problems.push(`the fresh process got path ${fresh.path}`);
    if (fresh.served !== shouldServe && state.committed === 'old') {
      entryLost = true;
      problems.push(`the intact previous entry was not served: the fresh process got ${fresh.served} bytes`);
    } else if (fresh.served !== shouldServe) {
      mismatches.push(`served ${fresh.served} bytes where the disk committed ${state.committed}`);
    }
    if (fresh.fetched !== (state.committed === 'none')) {
      const did = fresh.fetched ? 'fetched' : 'did not fetch';
      problems.push(`the fresh process ${did} with ${state.committed} committed`);
    }
  }
  if (!replacedLegitimately(state)) {
    entryLost = true;
    problems.push(`the previous entry is gone but the new payload is not whole: ${JSON.stringify(state)}`);
  }
  return { entryLost, problems, mismatches };
}

/**
 * The previous entry may vanish only once the writer's payload is whole: committed, renamed into place, or
 * sealed in its tmp file (the writer was killed between removing the old manifest and the rename).
 */
function replacedLegitimately(state: DiskState): boolean {
  if (state.committed !== 'none') return true;
  return state.payload === 'new' || (state.payload === 'old' && state.sealedTmp);
}

/** The age of the key's lock directory if its owner file is missing or unreadable; `undefined` otherwise. */
function ownerlessLockAgeMs(dir: string): number | undefined {
  const lockDir = path.join(dir, LOCK_DIR);
  const stats = fs.statSync(lockDir, { throwIfNoEntry: false });
  if (!stats) return undefined;
  const owner = readText(path.join(lockDir, 'owner.json'));
  try {
    if (owner !== undefined && Number.isInteger((JSON.parse(owner) as { pid?: unknown }).pid))
      return undefined;
  } catch {}
  // A whole-second mtime (sshfs, SMB) may be up to a second or two older than the real one: the janitor
  // allows for that before it calls a lock stale, and so must this wait.
  return Date.now() - stats.mtimeMs - mtimeGranularityMs(stats.mtime);
}

function parseManifest(text: string): { size_bytes: number; sha256?: string } | undefined {
  try {
    const value = JSON.parse(text) as { size_bytes?: unknown; sha256?: unknown; key?: unknown };
    if (!Number.isInteger(value.size_bytes) || (value.size_bytes as number) < 0) return undefined;
    if (value.key !== undefined && value.key !== KEY) return undefined;
    return {
      size_bytes: value.size_bytes as number,
      ...(typeof value.sha256 === 'string' ? { sha256: value.sha256 } : {}),
    };
  } catch {
    return undefined;
  }
}

function whose(sha: unknown, payloads: Payloads): BytesSeen {
  if (sha === payloads.oldSha) return 'old';
  if (sha === payloads.newSha) return 'new';
  return 'other';
}

function is(...events: string[]) {
  return (event: ChildEvent) => events.includes(event.event);
}

/** An orphan's name and, for a lock directory, what it holds and how old it is: what a flake needs told. */
function describeOrphan(dir: string, name: string): string {
  const orphan = path.join(dir, name);
  const stats = fs.lstatSync(orphan, { throwIfNoEntry: false });
  if (!stats?.isDirectory()) return name;
  const inside = readNames(orphan).map((inner) => {
    const innerStats = fs.lstatSync(path.join(orphan, inner), { throwIfNoEntry: false });
    const text = inner === 'owner.json' ? ` ${JSON.stringify(readText(path.join(orphan, inner)))}` : '';
    return `${inner} (mtime ${innerStats?.mtimeMs}, ${innerStats?.size} bytes)${text}`;
  });
  return `${name} (a directory, mtime ${stats.mtimeMs}, now ${Date.now()}, holding: ${inside.join('; ') || 'nothing'})`;
}

function readNames(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

function readRegularFile(file: string): Buffer | undefined {
  const stats = fs.lstatSync(file, { throwIfNoEntry: false });
  return stats?.isFile() ? fs.readFileSync(file) : undefined;
}

function readText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** A small seeded generator, so that a run's kill delays can be replayed from its seed. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
