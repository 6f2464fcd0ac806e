import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { tryLock } from '../src/soft-lock.js';
import {
  buildCliIfStale,
  CLI,
  DAY_MS,
  hasScript,
  lines,
  onTerminal,
  REPO,
  runCli,
  seed,
  type Terminal,
  treeSnapshot,
} from './cli-helpers.js';
import { exists, makeTempDir, patternBytes, removeTempDirs } from './helpers.js';
import { closeAllServers, servePayload, startServer } from './http-servers.js';

// Issue 7 (janitor safety): each test reproduces one way the CLI used to delete, or mislead about, files
// it never wrote, and is named for that failure.

let root: string;
let sublayer: string;

beforeAll(buildCliIfStale, 120_000);

beforeEach(async () => {
  root = await makeTempDir('payload-cache-janitor-');
  sublayer = path.join(root, 'data');
  await seed(root, 'data', 'kept.zip', 'old bytes', 10 * DAY_MS);
});

afterEach(async () => {
  await closeAllServers();
  await removeTempDirs();
});

const run = (args: string[], input?: string) =>
  runCli(args, { env: { PAYLOAD_CACHE_DIR: root }, ...(input === undefined ? {} : { input }) });

/** Things a user (or another program) may keep in a sublayer, at every name shape the cache uses. */
async function plantForeignThings(): Promise<void> {
  await fsp.mkdir(path.join(sublayer, 'photos.manifest.json'));
  await fsp.writeFile(path.join(sublayer, 'photos.manifest.json', 'holiday.jpg'), 'jpeg');
  await fsp.mkdir(path.join(sublayer, 'backup.lock'));
  await fsp.writeFile(path.join(sublayer, 'backup.lock', 'db.dump'), 'dump');
  await fsp.writeFile(path.join(sublayer, 'stray.manifest.json'), '{"not":"ours"}');
  await fsp.mkdir(path.join(sublayer, 'datasets', '2024'), { recursive: true });
  await fsp.writeFile(path.join(sublayer, 'datasets', '2024', 'big.bin'), patternBytes(5 * 1024 * 1024));
  await fsp.writeFile(path.join(sublayer, 'notes.txt'), 'my notes');
  await fsp.writeFile(path.join(sublayer, 'data.tmp.csv'), 'a,b\n');
  await fsp.mkdir(path.join(sublayer, 'x.tmp.host.1.0123456789abcdef'));
  await fsp.writeFile(path.join(sublayer, 'x.tmp.host.1.0123456789abcdef', 'inside.txt'), 'mine');
  const old = new Date(Date.now() - 3 * DAY_MS);
  for (const name of await fsp.readdir(sublayer)) await fsp.utimes(path.join(sublayer, name), old, old);
}

/** Orphans the cache itself leaves, old enough for any sweep. */
async function plantOwnOrphans(): Promise<void> {
  const old = new Date(Date.now() - 3 * DAY_MS);
  const tmp = path.join(sublayer, 'gone.zip.tmp.otherhost.4242.0123456789abcdef');
  await fsp.writeFile(tmp, 'partial');
  await fsp.utimes(tmp, old, old);
  await fsp.mkdir(path.join(sublayer, 'dead.zip.lock'));
  await fsp.writeFile(
    path.join(sublayer, 'dead.zip.lock', 'owner.json'),
    JSON.stringify({ host: 'otherhost', pid: 1, token: 't', acquiredAt: old.toISOString() }),
  );
  await fsp.utimes(path.join(sublayer, 'dead.zip.lock', 'owner.json'), old, old);
}

describe('commands that only look change nothing on disk', () => {
  it('ls, info, verify, prune --dry-run and refused or declined prune/clear leave every file as it was', async () => {
    await plantForeignThings();
    await plantOwnOrphans();
    const before = await treeSnapshot(root);
    const looks: string[][] = [
      ['ls'],
      ['ls', '--json', '--ttl', '1s'],
      ['info', 'data', 'kept.zip'],
      ['verify'],
      ['prune', '--dry-run', '--ttl', '1s', '--keep-n', '1'],
      ['prune', '--dry-run', '--json'],
      ['prune', '--ttl', '1s'], // refused: stdin is not a terminal
      ['clear', 'data'], // refused likewise
    ];
    for (const args of looks) {
      const result = await run(args, 'y\n');
      expect(result.stderr, args.join(' ')).not.toMatch(/at .*\.js:\d+/);
      expect(await treeSnapshot(root), `${args.join(' ')} changed the disk`).toEqual(before);
    }
  });

  it.skipIf(!hasScript)('a prune and a clear declined at the prompt leave every file as it was', async () => {
    await plantForeignThings();
    await plantOwnOrphans();
    const before = await treeSnapshot(root);
    const decline = async (terminal: Terminal) => {
      await terminal.waitFor('[y/N]');
      terminal.type('n\r');
    };
    const prune = await onTerminal(['prune', '--root', root, '--ttl', '1s'], decline);
    expect(prune.code).toBe(1);
    expect(prune.stdout).toContain('Declined: nothing was removed.');
    const clear = await onTerminal(['clear', 'data', '--root', root], decline);
    expect(clear.code).toBe(1);
    expect(await treeSnapshot(root)).toEqual(before);
  });
});

describe('clear and prune never delete what the cache did not write', () => {
  it("clear --yes removes the cache's entries and orphans and leaves a user's directories and files", async () => {
    await plantForeignThings();
    await plantOwnOrphans();
    const foreignBefore = (await treeSnapshot(sublayer)).filter(
      (line) => !/^(kept\.zip|gone\.zip|dead\.zip)/.test(line),
    );
    const { code, stdout } = await run(['clear', 'data', '--yes']);
    expect(code).toBe(0);
    expect(stdout).toMatch(/Left alone: .*datasets/);
    expect(stdout).toMatch(/Left alone: .*notes\.txt/);
    expect(await treeSnapshot(sublayer)).toEqual(foreignBefore);
    expect(await exists(path.join(sublayer, 'kept.zip'))).toBe(false);
  });

  it('prune --yes on a root of user files that is not a cache refuses with exit 2 and changes nothing, dry run too', async () => {
    const home = await makeTempDir('payload-cache-home-');
    await fsp.mkdir(path.join(home, 'Documents', 'thesis'), { recursive: true });
    await fsp.mkdir(path.join(home, 'Pictures'));
    await fsp.writeFile(path.join(home, 'Documents', 'thesis', 'chapter1.tex'), '\\chapter{One}');
    await fsp.writeFile(path.join(home, 'Documents', 'cv.pdf'), '%PDF');
    await fsp.writeFile(path.join(home, 'Pictures', 'cat.jpg'), 'jpeg');
    const old = new Date(Date.now() - 3 * DAY_MS);
    for (const file of [
      'Documents/thesis/chapter1.tex',
      'Documents/cv.pdf',
      'Pictures/cat.jpg',
      'Documents/thesis',
    ]) {
      await fsp.utimes(path.join(home, file), old, old);
    }
    const before = await treeSnapshot(home);
    for (const args of [
      ['prune', '--root', home, '--ttl', '1d', '--yes'],
      ['prune', '--root', home, '--dry-run'],
      ['clear', 'Documents', '--root', home, '--yes'],
      ['verify', '--fix', '--root', home],
    ]) {
      const { code, stderr } = await run(args);
      expect(code, args.join(' ')).toBe(2);
      expect(lines(stderr)).toEqual([expect.stringContaining('is not a payload-cache root')]);
    }
    expect(await treeSnapshot(home)).toEqual(before);
  });

  it('prune --yes removes stale locks and old tmp files of its own, and none of the look-alikes', async () => {
    await plantForeignThings();
    await plantOwnOrphans();
    const { code, stdout } = await run(['prune', '--yes', '--json']);
    expect(code).toBe(0);
    const report = JSON.parse(stdout);
    expect(report.removed.map((item: { path: string }) => path.basename(item.path)).sort()).toEqual([
      'dead.zip.lock',
      'gone.zip.tmp.otherhost.4242.0123456789abcdef',
    ]);
    expect(report.foreign.map((item: { path: string }) => path.basename(item.path)).sort()).toEqual([
      'backup.lock',
      'data.tmp.csv',
      'datasets',
      'notes.txt',
      'photos.manifest.json',
      'stray.manifest.json',
      'x.tmp.host.1.0123456789abcdef',
    ]);
    expect(await exists(path.join(sublayer, 'backup.lock', 'db.dump'))).toBe(true);
    expect(await exists(path.join(sublayer, 'photos.manifest.json', 'holiday.jpg'))).toBe(true);
  });
});

describe('limits given on the command line are exact, and the plan is what is done', () => {
  it('--keep-n 100 of 150 entries forecasts 50, removes exactly those 50 and leaves 100', async () => {
    for (let index = 0; index < 149; index += 1) {
      await seed(root, 'data', `k${String(index).padStart(3, '0')}`, 'x', 5 * DAY_MS - index * 60_000);
    }
    const dry = JSON.parse((await run(['prune', '--keep-n', '100', '--dry-run', '--json'])).stdout);
    expect(dry.remove).toHaveLength(50);
    const { code, stdout } = await run(['prune', '--keep-n', '100', '--yes', '--json']);
    expect(code).toBe(0);
    const done = JSON.parse(stdout);
    expect(done.removed.map((item: { path: string }) => item.path)).toEqual(
      dry.remove.map((item: { path: string }) => item.path),
    );
    const manifests = (await fsp.readdir(sublayer)).filter((name) => name.endsWith('.manifest.json'));
    expect(manifests).toHaveLength(100);
  });

  it('fetch --keep-n 100 leaves exactly 100 entries, not 99', async () => {
    for (let index = 0; index < 100; index += 1) {
      await seed(root, 'data', `k${String(index).padStart(3, '0')}`, 'x', 5 * DAY_MS - index * 60_000);
    }
    const server = await startServer((req, res) => servePayload(req, res, patternBytes(1000)));
    const { code } = await run(['fetch', server.url('/new.bin'), '--sublayer', 'data', '--keep-n', '100']);
    expect(code).toBe(0);
    const manifests = (await fsp.readdir(sublayer)).filter((name) => name.endsWith('.manifest.json'));
    expect(manifests).toHaveLength(100);
    expect(manifests).toContain('new.bin.manifest.json');
  });

  it('a corrupt entry the plan cannot count does not make prune evict a valid one', async () => {
    await seed(root, 'data', 'a', 'aaaa', 4 * DAY_MS);
    await seed(root, 'data', 'b', 'bbbb', 3 * DAY_MS);
    const corrupt = await seed(root, 'data', 'c', 'cccc', 2 * DAY_MS);
    await fsp.writeFile(corrupt, 'a payload of the wrong size');
    await fsp.utimes(corrupt, new Date(Date.now() - 2 * DAY_MS), new Date(Date.now() - 2 * DAY_MS));
    await fsp.rm(path.join(sublayer, 'kept.zip'));
    await fsp.rm(path.join(sublayer, 'kept.zip.manifest.json'));
    const dry = JSON.parse((await run(['prune', '--keep-n', '2', '--dry-run', '--json'])).stdout);
    const real = JSON.parse((await run(['prune', '--keep-n', '2', '--yes', '--json'])).stdout);
    expect(dry.remove.filter((item: { reason: string }) => item.reason === 'evicted')).toEqual([]);
    expect(real.removed.filter((item: { reason: string }) => item.reason === 'evicted')).toEqual([]);
    expect(await exists(path.join(sublayer, 'a'))).toBe(true);
    expect(await exists(path.join(sublayer, 'b'))).toBe(true);
  });

  it.skipIf(!hasScript)(
    'an entry that leaves the in-use window while the prompt waits is not removed: the plan said it stays',
    async () => {
      const usedAtMs = Date.now() - 128_000;
      const entry = await seed(root, 'data', 'in-use.zip', 'bytes', 128_000);
      // Both are expired under --ttl 1s; in-use.zip is spared by the plan as used within the last 130 s.
      const result = await onTerminal(['prune', '--root', root, '--ttl', '1s'], async (terminal) => {
        await terminal.waitFor('[y/N]');
        // The in-use window is 130 s: answer only once the entry has left it.
        while (Date.now() < usedAtMs + 132_000) await new Promise((resolve) => setTimeout(resolve, 250));
        terminal.type('y\r');
      });
      expect(result.code).toBe(0);
      expect(result.stdout).toContain('Keeping data/in-use.zip: used in the last 130 s');
      expect(result.stdout).toMatch(/kept\.zip\s+expired/);
      expect(result.stdout).not.toMatch(/in-use\.zip\s+(expired|evicted)/);
      expect(await exists(entry)).toBe(true);
    },
    30_000,
  );
});

describe('output and exit codes say what happened', () => {
  it('prune --dry-run --json uses the keys remove/keep/foreign, with sublayers or without', async () => {
    const empty = await makeTempDir('payload-cache-empty-root-');
    await seed(empty, 'gone', 'k', 'x', 0);
    await fsp.rm(path.join(empty, 'gone'), { recursive: true });
    const none = JSON.parse((await run(['prune', '--root', empty, '--dry-run', '--json'])).stdout);
    const some = JSON.parse((await run(['prune', '--dry-run', '--json'])).stdout);
    for (const plan of [none, some])
      expect(Object.keys(plan).sort()).toEqual(['dryRun', 'foreign', 'keep', 'remove', 'root']);
  });

  it('verify, ls and prune exit 1 for a mistyped --sublayer or a missing --root', async () => {
    for (const command of [['verify'], ['ls'], ['prune', '--dry-run']]) {
      const typo = await run([...command, '--sublayer', 'dta']);
      expect(typo.code, command.join(' ')).toBe(1);
      expect(lines(typo.stderr)).toEqual([expect.stringContaining('no sublayer "dta"')]);
      const missing = await run([...command, '--root', path.join(root, 'nope')]);
      expect(missing.code, command.join(' ')).toBe(1);
      expect(lines(missing.stderr)).toEqual([expect.stringContaining('no cache root at')]);
    }
  });

  it('without --ttl an entry created ahead of the clock is not expired: ls says no, prune keeps it', async () => {
    const ahead = await seed(root, 'data', 'ahead.zip', 'bytes', -DAY_MS);
    const listing = JSON.parse((await run(['ls', '--json'])).stdout);
    const entry = listing.sublayers[0].entries.find((item: { key: string }) => item.key === 'ahead.zip');
    expect(entry.expired).toBe(false);
    const { code } = await run(['prune', '--yes']);
    expect(code).toBe(0);
    expect(await exists(ahead)).toBe(true);
  });

  it('output into a closed pipe ends quietly: no EPIPE stack trace', async () => {
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, 'ls', '--json'], {
        cwd: REPO,
        env: { ...process.env, PAYLOAD_CACHE_DIR: root },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout.destroy(); // the reader is gone before the first line is written
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stderr }));
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
  });

  it('verify names a manifest it cannot read as invalid-manifest, and reports a young payload without manifest', async () => {
    await seed(root, 'data', 'broken.zip', 'bytes', 0);
    await fsp.writeFile(path.join(sublayer, 'broken.zip.manifest.json'), '{ torn');
    await fsp.writeFile(path.join(sublayer, 'young-lone.bin'), 'no manifest');
    const info = await run(['info', 'data', 'young-lone.bin']);
    expect(info.stderr).toContain('payload-cache verify reports it');
    const { code, stdout } = await run(['verify', '--json']);
    expect(code).toBe(1);
    const [verdict] = JSON.parse(stdout).sublayers;
    expect(verdict.bad).toEqual([]);
    expect(verdict.foreign).toEqual(
      expect.arrayContaining([
        { path: path.join(sublayer, 'broken.zip.manifest.json'), reason: 'invalid-manifest' },
        { path: path.join(sublayer, 'young-lone.bin'), reason: 'unproven-payload' },
      ]),
    );
  });

  it('a flag given twice, a zero limit and a URL whose query the default key would drop are usage errors (exit 2)', async () => {
    const server = await startServer((req, res) => servePayload(req, res, patternBytes(10)));
    for (const args of [
      ['prune', '--keep-n', '5', '--keep-n', '50', '--dry-run'],
      ['ls', '--ttl', '1d', '--ttl', '2d'],
      ['prune', '--keep-n', '0', '--dry-run'],
      ['prune', '--max-bytes', '0', '--dry-run'],
      ['fetch', server.url('/file.bin?version=2'), '--sublayer', 'data'],
    ]) {
      const { code, stderr } = await run(args);
      expect(code, args.join(' ')).toBe(2);
      expect(lines(stderr)).toHaveLength(1);
    }
    expect(server.requests).toHaveLength(0);
  });

  it.skipIf(!hasScript)('Ctrl-C at the prompt exits 130 and removes nothing', async () => {
    const before = await treeSnapshot(root);
    const result = await onTerminal(['clear', 'data', '--root', root], async (terminal) => {
      await terminal.waitFor('[y/N]');
      terminal.type('\x03');
    });
    expect(result.code).toBe(130);
    expect(result.stdout).toContain('interrupted: nothing was removed');
    expect(await treeSnapshot(root)).toEqual(before);
  });

  it('clear --json reports what was removed, not the forecast: a key a writer holds loses only its manifest', async () => {
    const held = await seed(root, 'data', 'held.zip', 'bytes', DAY_MS);
    const lock = await tryLock(`${held}.lock`, 10_000);
    try {
      const { code, stdout } = await run(['clear', 'data', '--yes', '--json']);
      expect(code).toBe(0);
      const report = JSON.parse(stdout);
      expect(report.removed).toEqual(
        expect.arrayContaining([
          { key: 'kept.zip', path: path.join(sublayer, 'kept.zip'), reason: 'cleared', sizeBytes: 9 },
          { key: 'held.zip', path: `${held}.manifest.json`, reason: 'cleared', sizeBytes: 0 },
        ]),
      );
      expect(report.removed).toHaveLength(2);
      expect(report.totalBytes).toBe(9);
      expect(await exists(held)).toBe(true);
    } finally {
      await lock?.release();
    }
  });
});
