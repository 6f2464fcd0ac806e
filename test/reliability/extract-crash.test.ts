import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { backgroundSweep, CacheManager } from '../../src/cache-manager.js';
import type { PublishPhase } from '../../src/crash-points.js';
import { buildZip } from '../archive-builders.js';
import { makeTempDir, patternBytes, removeTempDirs, sha256 } from '../helpers.js';

// A getOrExtract replacing an expired archive (and its extraction) is SIGKILLed at every phase of
// publication, the two extraction phases included. After each kill no directory that looks like a
// published extraction may hold anything but a whole tree of the old archive or of the new one, and a
// fresh process must be served one of the two whole trees. The children import the built library.

const FIXTURE = fileURLToPath(new URL('./fixtures/extract-crash-child.mjs', import.meta.url));
const BUILT_ENTRY = fileURLToPath(new URL('../../dist/index.js', import.meta.url));
const SUBLAYER = 'archives';
const KEY = 'release.zip';

const PHASES: readonly PublishPhase[] = [
  'locked',
  'streaming',
  'sealed',
  'extracting',
  'extracted',
  'manifest-removed',
  'renamed',
  'manifest-written',
];

/** An archive of 20 files; `release` changes every file's bytes. */
function release(version: number): { zip: Buffer; tree: Record<string, string> } {
  const files = Array.from({ length: 20 }, (_, index) => ({
    name: `data/part-${index}.bin`,
    content: patternBytes(8_000 + index, version * 100 + index),
  }));
  const tree = Object.fromEntries(files.map((file) => [file.name, sha256(file.content)]));
  return { zip: buildZip(files), tree };
}

/** `relative path -> sha256` of every file under `dir`. */
async function digestTree(dir: string): Promise<Record<string, string>> {
  const digests: Record<string, string> = {};
  const walk = async (current: string) => {
    for (const entry of await fsp.readdir(current, { withFileTypes: true })) {
      const full = path.join(current, entry.name);
      if (entry.isDirectory()) await walk(full);
      else digests[path.relative(dir, full).split(path.sep).join('/')] = sha256(await fsp.readFile(full));
    }
  };
  await walk(dir);
  return digests;
}

/** The writer in its own process (paused at `pause.phase` when given), with what it printed so far. */
function startWriter(config: Record<string, unknown>, pause?: { phase: PublishPhase; file: string }) {
  const env = pause
    ? { ...process.env, PAYLOAD_CACHE_TEST_PAUSE_AT: pause.phase, PAYLOAD_CACHE_TEST_PAUSE_FILE: pause.file }
    : process.env;
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify(config)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env,
  });
  let onReady = () => {};
  const writer = {
    child,
    output: '',
    exited: new Promise<void>((resolve) => child.on('close', () => resolve())),
    /** Resolves once the writer has loaded the library and is about to call getOrExtract. */
    ready: new Promise<void>((resolve) => {
      onReady = resolve;
    }),
  };
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    writer.output += text;
    if (writer.output.includes('"event":"ready"')) onReady();
  });
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    writer.output += text;
  });
  return writer;
}

/** Runs the writer until it pauses at `phase`, then SIGKILLs it. */
async function killAt(
  phase: PublishPhase,
  config: Record<string, unknown>,
  pauseFile: string,
): Promise<void> {
  const writer = startWriter(config, { phase, file: pauseFile });
  const deadline = Date.now() + 30_000;
  while (
    !(await fsp.access(pauseFile).then(
      () => true,
      () => false,
    ))
  ) {
    if (writer.child.exitCode !== null || Date.now() > deadline) {
      writer.child.kill('SIGKILL');
      throw new Error(`the writer never reached ${phase}: ${writer.output}`);
    }
    await delay(5);
  }
  writer.child.kill('SIGKILL');
  await writer.exited;
}

beforeAll(async () => {
  await fsp.access(BUILT_ENTRY).catch(() => {
    throw new Error('dist/ is missing: run `npm run build` first (npm test does)');
  });
});

afterEach(removeTempDirs);

/** The previous archive published and extracted, and the next one's source for the writer to stream. */
async function previousRelease(work: string) {
  const root = path.join(work, 'root');
  const old = release(1);
  const next = release(2);
  const nextSource = path.join(work, 'next.zip');
  await fsp.writeFile(nextSource, next.zip);
  const setup = new CacheManager({ sublayer: SUBLAYER, root, ttl: Number.POSITIVE_INFINITY });
  const oldDir = await setup.getOrExtract(KEY, () => old.zip);
  const writerConfig = { root, sublayer: SUBLAYER, key: KEY, source: nextSource, ttlMs: 0, chunkDelayMs: 2 };
  return { root, old, next, oldDir, setup, writerConfig };
}

/**
 * After a kill: every directory that looks like a published extraction holds a whole tree of the old archive
 * or of the new one, a fresh reader is served one of the two whole trees, and the old tree is untouched.
 */
async function expectWholeTrees(setup: Awaited<ReturnType<typeof previousRelease>>, when: string) {
  const { root, old, next, oldDir } = setup;
  const sublayer = path.join(root, SUBLAYER);
  for (const name of await fsp.readdir(sublayer)) {
    if (!/\.extracted\.[0-9a-f]{16}$/.test(name)) continue;
    const tree = await digestTree(path.join(sublayer, name, 'content'));
    expect([old.tree, next.tree], `${name} after a kill ${when}`).toContainEqual(tree);
  }
  // A fresh reader (ttl Infinity: a committed entry is a hit for it) gets one whole tree.
  const reader = new CacheManager({
    sublayer: SUBLAYER,
    root,
    ttl: Number.POSITIVE_INFINITY,
    lockStaleMs: 2_000,
  });
  const served = await reader.getOrExtract(KEY, () => next.zip);
  expect([old.tree, next.tree], `served after a kill ${when}`).toContainEqual(await digestTree(served));
  // The old tree is never touched by a writer: a reader of it still has it whole.
  expect(await digestTree(oldDir)).toEqual(old.tree);
  // Their sweeps of the dead writer's leftovers must be done before the work directory goes.
  await Promise.all([setup.setup[backgroundSweep], reader[backgroundSweep]]);
}

describe('getOrExtract killed at every phase', () => {
  it.each(PHASES)(
    'at %s: every published-looking extraction is a whole tree, and a reader gets one',
    async (phase) => {
      const work = await makeTempDir('payload-cache-extract-crash-');
      const setup = await previousRelease(work);
      await killAt(phase, setup.writerConfig, path.join(work, 'paused'));
      await expectWholeTrees(setup, `at ${phase}`);
    },
  );
});

// Kills at random moments land where no crash point is: between two files of the extraction, mid-file,
// between the archive's fsync and its rename. Each moment is a fraction of an uninterrupted writer's run.
const RANDOM_KILLS = 8;

describe('getOrExtract killed at random moments', () => {
  it(`${RANDOM_KILLS} kills between the writer's start and its end leave whole trees only`, async () => {
    const seed = Number(process.env.PAYLOAD_CACHE_TEST_SEED ?? Date.now()) >>> 0;
    let state = seed || 1;
    const random = () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state / 2 ** 32;
    };
    // Two uninterrupted writers, timed from `ready` to their exit: the shorter run bounds the kill moments,
    // so that a later writer is still at work when its kill comes.
    const runsMs: number[] = [];
    for (let run = 0; run < 2; run++) {
      const calibration = await previousRelease(await makeTempDir('payload-cache-extract-crash-'));
      const uninterrupted = startWriter(calibration.writerConfig);
      await Promise.race([uninterrupted.ready, uninterrupted.exited]);
      const readyAt = performance.now();
      await uninterrupted.exited;
      runsMs.push(performance.now() - readyAt);
      expect(uninterrupted.output, 'the uninterrupted writer').toContain('"event":"done"');
      await calibration.setup[backgroundSweep];
    }
    const runMs = 0.9 * Math.min(...runsMs);

    // A writer that finished before its kill (a quieter moment than the calibration's) is run again with
    // half the delay: every one of the kills lands while a writer is at work.
    const attemptsPerKill = 6;
    for (let kill = 0; kill < RANDOM_KILLS; kill++) {
      let killAfterMs = Math.round(random() * runMs);
      for (let attempt = 1; ; attempt++) {
        const setup = await previousRelease(await makeTempDir('payload-cache-extract-crash-'));
        const writer = startWriter(setup.writerConfig);
        await Promise.race([writer.ready, writer.exited]);
        await delay(killAfterMs);
        const running = writer.child.exitCode === null;
        if (running) writer.child.kill('SIGKILL');
        await writer.exited;
        await expectWholeTrees(setup, `${killAfterMs} ms after the writer was ready (seed ${seed})`);
        if (running) break;
        expect(attempt, `the writer kept finishing first: ${writer.output}`).toBeLessThan(attemptsPerKill);
        killAfterMs = Math.floor(killAfterMs / 2);
      }
    }
  }, 180_000);
});
