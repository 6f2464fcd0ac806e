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

/** Runs the writer until it pauses at `phase`, then SIGKILLs it. */
async function killAt(
  phase: PublishPhase,
  config: Record<string, unknown>,
  pauseFile: string,
): Promise<void> {
  const child = spawn(process.execPath, [FIXTURE, JSON.stringify(config)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PAYLOAD_CACHE_TEST_PAUSE_AT: phase, PAYLOAD_CACHE_TEST_PAUSE_FILE: pauseFile },
  });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    output += text;
  });
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    output += text;
  });
  const exited = new Promise((resolve) => child.on('close', resolve));
  const deadline = Date.now() + 30_000;
  while (
    !(await fsp.access(pauseFile).then(
      () => true,
      () => false,
    ))
  ) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the writer never reached ${phase}: ${output}`);
    }
    await delay(5);
  }
  child.kill('SIGKILL');
  await exited;
}

beforeAll(async () => {
  await fsp.access(BUILT_ENTRY).catch(() => {
    throw new Error('dist/ is missing: run `npm run build` first (npm test does)');
  });
});

afterEach(removeTempDirs);

describe('getOrExtract killed at every phase', () => {
  it.each(PHASES)(
    'at %s: every published-looking extraction is a whole tree, and a reader gets one',
    async (phase) => {
      const work = await makeTempDir('payload-cache-extract-crash-');
      const root = path.join(work, 'root');
      const old = release(1);
      const next = release(2);
      const nextSource = path.join(work, 'next.zip');
      await fsp.writeFile(nextSource, next.zip);

      // The previous archive and its extraction, published normally.
      const setup = new CacheManager({ sublayer: SUBLAYER, root, ttl: Number.POSITIVE_INFINITY });
      const oldDir = await setup.getOrExtract(KEY, () => old.zip);

      const pauseFile = path.join(work, 'paused');
      await killAt(
        phase,
        { root, sublayer: SUBLAYER, key: KEY, source: nextSource, ttlMs: 0, chunkDelayMs: 2 },
        pauseFile,
      );

      const sublayer = path.join(root, SUBLAYER);
      for (const name of await fsp.readdir(sublayer)) {
        if (!/\.extracted\.[0-9a-f]{16}$/.test(name)) continue;
        const tree = await digestTree(path.join(sublayer, name, 'content'));
        expect([old.tree, next.tree], `${name} after a kill at ${phase}`).toContainEqual(tree);
      }

      // A fresh reader (ttl Infinity: a committed entry is a hit for it) gets one whole tree.
      const reader = new CacheManager({
        sublayer: SUBLAYER,
        root,
        ttl: Number.POSITIVE_INFINITY,
        lockStaleMs: 2_000,
      });
      const served = await reader.getOrExtract(KEY, () => next.zip);
      const tree = await digestTree(served);
      expect([old.tree, next.tree]).toContainEqual(tree);
      // The old tree is never touched by a writer: a reader of it still has it whole.
      expect(await digestTree(oldDir)).toEqual(old.tree);
      // Their sweeps of the dead writer's leftovers must be done before the work directory goes.
      await Promise.all([setup[backgroundSweep], reader[backgroundSweep]]);
    },
  );
});
