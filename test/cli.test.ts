import { promises as fsp, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LineProgress } from '../src/cli/progress.js';
import { formatBytes, formatDuration, parseDuration, parseSize } from '../src/cli/units.js';
import { buildZip } from './archive-builders.js';
import {
  buildCliIfStale,
  DAY_MS,
  hasScript,
  lines,
  onTerminal,
  REPO,
  runCli,
  seed,
  type Terminal,
} from './cli-helpers.js';
import { exists, makeTempDir, patternBytes, removeTempDirs, sha256 } from './helpers.js';
import { closeAllServers, closedPortUrl, servePayload, startServer } from './http-servers.js';

const COMMANDS = ['ls', 'info', 'verify', 'prune', 'clear', 'fetch'];
const MiB = 1024 * 1024;

/** Runs the CLI with the global root pointing at an empty directory unless `env` says otherwise. */
function run(args: string[], options: { input?: string; env?: Record<string, string> } = {}) {
  return runCli(args, { ...options, env: { PAYLOAD_CACHE_DIR: emptyRoot, ...options.env } });
}

/** A tmp file as a crashed writer leaves it, last touched `ageMs` ago. */
async function plantTmp(root: string, sublayer: string, ageMs: number): Promise<string> {
  const tmpPath = path.join(root, sublayer, 'crashed.bin.tmp.otherhost.4242.0123456789abcdef');
  await fsp.writeFile(tmpPath, 'partial');
  const at = new Date(Date.now() - ageMs);
  await fsp.utimes(tmpPath, at, at);
  return tmpPath;
}

let emptyRoot: string;
let root: string;
let oldZip: string;
let midZip: string;
let newZip: string;
let model: string;

beforeAll(buildCliIfStale, 120_000);

beforeEach(async () => {
  emptyRoot = await makeTempDir('payload-cache-cli-empty-');
  root = await makeTempDir('payload-cache-cli-');
  oldZip = await seed(root, 'imf-weo', 'old.zip', patternBytes(1536 * 1024, 1), 10 * DAY_MS);
  midZip = await seed(root, 'imf-weo', 'mid.zip', patternBytes(3000, 2), 2 * DAY_MS);
  newZip = await seed(root, 'imf-weo', 'new.zip', patternBytes(100, 3), 0);
  model = await seed(root, 'models', 'model.bin', patternBytes(2 * MiB, 4), DAY_MS);
});

afterEach(async () => {
  await closeAllServers();
  await removeTempDirs();
});

afterAll(removeTempDirs);

describe('help, usage errors and exit codes', () => {
  it('--help lists every command and the exit codes, exit 0', async () => {
    const { code, stdout } = await run(['--help']);
    expect(code).toBe(0);
    for (const name of COMMANDS) expect(stdout).toMatch(new RegExp(`^  ${name} `, 'm'));
    expect(stdout).toContain('Exit codes:');
  });

  it.each(COMMANDS)('%s --help prints its usage and the shared options, exit 0', async (name) => {
    const { code, stdout, stderr } = await run([name, '--help']);
    expect(code).toBe(0);
    expect(stdout.startsWith(`Usage: payload-cache ${name}`)).toBe(true);
    expect(stdout).toContain('--root DIR');
    expect(stderr).toBe('');
  });

  it('ls --help says that without --ttl nothing counts as expired', async () => {
    const { stdout } = await run(['ls', '--help']);
    expect(stdout).toMatch(/--ttl DURATION[\s\S]*Default Infinity, so nothing counts as expired/);
  });

  it('no command: usage on stderr, exit 2', async () => {
    const { code, stdout, stderr } = await run([]);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('Usage: payload-cache <command>');
  });

  it('an unknown command is one line on stderr, exit 2', async () => {
    const { code, stderr } = await run(['sweep']);
    expect(code).toBe(2);
    expect(lines(stderr)).toEqual([expect.stringContaining('unknown command "sweep"')]);
  });

  it('an unknown flag is one line on stderr without a stack trace, exit 2', async () => {
    const { code, stderr } = await run(['ls', '--root', root, '--bogus']);
    expect(code).toBe(2);
    expect(lines(stderr)).toEqual([
      "payload-cache ls: unknown option '--bogus' (see: payload-cache ls --help)",
    ]);
  });

  it('a missing argument and a stray argument are usage errors, exit 2', async () => {
    const missing = await run(['info', 'imf-weo', '--root', root]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('missing <key>');
    const stray = await run(['ls', 'extra', '--root', root]);
    expect(stray.code).toBe(2);
    expect(stray.stderr).toContain('unexpected argument "extra"');
  });

  it('a malformed duration or size is a usage error naming the flag, exit 2', async () => {
    const ttl = await run(['ls', '--root', root, '--ttl', '7']);
    expect(ttl.code).toBe(2);
    expect(ttl.stderr).toContain('--ttl needs a duration');
    const size = await run(['prune', '--root', root, '--max-bytes', 'lots', '--dry-run']);
    expect(size.code).toBe(2);
    expect(size.stderr).toContain('--max-bytes needs a size');
  });

  it("an invalid key or sublayer gets the library's InvalidKeyError message, exit 2", async () => {
    const key = await run(['info', 'imf-weo', 'CON', '--root', root]);
    expect(key.code).toBe(2);
    expect(lines(key.stderr)).toEqual([expect.stringContaining('invalid key "CON": must not be a Windows')]);
    const sublayer = await run(['ls', '--root', root, '--sublayer', '..']);
    expect(sublayer.code).toBe(2);
    expect(sublayer.stderr).toContain('invalid sublayer "..": must not be "." or ".."');
  });

  it('an operation error is one line, exit 1; --debug prints the stack trace', async () => {
    const plain = await run(['info', 'imf-weo', 'absent.zip', '--root', root]);
    expect(plain.code).toBe(1);
    expect(lines(plain.stderr)).toEqual([
      `payload-cache info: no entry "absent.zip" in sublayer "imf-weo" under ${root}`,
    ]);
    const debug = await run(['info', 'imf-weo', 'absent.zip', '--root', root, '--debug']);
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/\n\s+at /);
  });

  it('--version prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
      version: string;
    };
    const { code, stdout } = await run(['--version']);
    expect(code).toBe(0);
    expect(stdout).toBe(`${version}\n`);
  });
});

describe('ls', () => {
  it('shows each sublayer with its entries, human sizes and totals', async () => {
    const { code, stdout } = await run(['ls', '--root', root]);
    expect(code).toBe(0);
    const out = lines(stdout);
    expect(out).toContain('imf-weo/');
    expect(out).toContain('models/');
    expect(out.find((line) => line.includes('old.zip'))).toMatch(/old\.zip\s+1\.5 MiB\s+10d\s+10d ago\s+no$/);
    expect(out.find((line) => line.includes('mid.zip'))).toMatch(/mid\.zip\s+2\.9 KiB\s+2d\s+2d ago\s+no$/);
    expect(out).toContain('  total: 3 entries, 1.5 MiB');
    expect(out).toContain('  total: 1 entry, 2.0 MiB');
    expect(out.at(-1)).toBe('Total: 2 sublayers, 4 entries, 3.5 MiB');
  });

  it('marks entries expired only under --ttl', async () => {
    const expiredColumn = (stdout: string, key: string) =>
      lines(stdout)
        .find((line) => line.includes(key))
        ?.trim()
        .split(/\s+/)
        .at(-1);
    const withoutTtl = await run(['ls', '--root', root]);
    expect(expiredColumn(withoutTtl.stdout, 'old.zip')).toBe('no');
    const weekly = await run(['ls', '--root', root, '--ttl', '7d']);
    expect(expiredColumn(weekly.stdout, 'old.zip')).toBe('yes');
    expect(expiredColumn(weekly.stdout, 'mid.zip')).toBe('no');
    expect(expiredColumn(weekly.stdout, 'model.bin')).toBe('no');
  });

  it('--json gives every entry with sizes, dates and totals', async () => {
    const { code, stdout } = await run(['ls', '--root', root, '--json', '--ttl', '7d']);
    expect(code).toBe(0);
    const listing = JSON.parse(stdout);
    expect(listing).toMatchObject({
      root,
      ttlMs: 7 * DAY_MS,
      entryCount: 4,
      totalBytes: 1536 * 1024 + 3100 + 2 * MiB,
    });
    const weo = listing.sublayers.find((sublayer: { name: string }) => sublayer.name === 'imf-weo');
    expect(weo.entries.map((entry: { key: string }) => entry.key)).toEqual(['new.zip', 'mid.zip', 'old.zip']);
    const old = weo.entries[2];
    expect(old).toMatchObject({
      path: oldZip,
      sizeBytes: 1536 * 1024,
      expired: true,
      sha256: sha256(patternBytes(1536 * 1024, 1)),
    });
    expect(Date.now() - Date.parse(old.lastUsedAt)).toBeGreaterThan(9 * DAY_MS);
    const noTtl = JSON.parse((await run(['ls', '--root', root, '--json'])).stdout);
    expect(noTtl.ttlMs).toBeNull();
  });

  it('--sublayer lists only that sublayer', async () => {
    const { stdout } = await run(['ls', '--root', root, '--sublayer', 'models']);
    expect(stdout).toContain('model.bin');
    expect(stdout).not.toContain('imf-weo');
  });

  it('defaults to the global root (PAYLOAD_CACHE_DIR)', async () => {
    const { code, stdout } = await run(['ls', '--json'], { env: { PAYLOAD_CACHE_DIR: root } });
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ root, entryCount: 4 });
  });

  it('an empty root has no sublayers, exit 0; a missing one is an error, exit 1', async () => {
    const empty = await run(['ls', '--root', emptyRoot]);
    expect(empty.code).toBe(0);
    expect(empty.stdout).toContain('No sublayers.');
    const missing = await run(['ls', '--root', path.join(emptyRoot, 'never-created')]);
    expect(missing.code).toBe(1);
    expect(lines(missing.stderr)).toEqual([expect.stringContaining('no cache root at')]);
  });

  it('deletes nothing, not even an orphan tmp file old enough for the sweep', async () => {
    const tmpPath = await plantTmp(root, 'imf-weo', 2 * DAY_MS);
    const { code } = await run(['ls', '--root', root]);
    expect(code).toBe(0);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(await exists(tmpPath)).toBe(true);
  });
});

describe('info', () => {
  it('prints the file facts and the manifest, pretty', async () => {
    const { code, stdout } = await run(['info', 'imf-weo', 'old.zip', '--root', root, '--ttl', '7d']);
    expect(code).toBe(0);
    expect(stdout).toContain(`path:       ${oldZip}`);
    expect(stdout).toContain('size:       1.5 MiB (1572864 bytes)');
    expect(stdout).toMatch(/last used: {2}\S+ \(10d ago, payload mtime\)/);
    expect(stdout).toContain('expired:    yes (ttl 7d)');
    expect(stdout).toContain(`manifest:   ${oldZip}.manifest.json`);
    expect(stdout).toContain('\n  "size_bytes": 1572864,\n');
  });

  it('--json carries the manifest as written', async () => {
    const { code, stdout } = await run(['info', 'models', 'model.bin', '--root', root, '--json']);
    expect(code).toBe(0);
    const info = JSON.parse(stdout);
    const manifest = JSON.parse(await fsp.readFile(`${model}.manifest.json`, 'utf8'));
    expect(info).toMatchObject({
      sublayer: 'models',
      key: 'model.bin',
      path: model,
      sizeBytes: 2 * MiB,
      expired: false,
      ttlMs: null,
    });
    expect(info.manifest).toEqual(manifest);
  });

  it('a payload whose manifest is gone is reported as not committed, exit 1', async () => {
    await fsp.rm(`${midZip}.manifest.json`);
    const { code, stderr } = await run(['info', 'imf-weo', 'mid.zip', '--root', root]);
    expect(code).toBe(1);
    expect(lines(stderr)).toEqual([expect.stringContaining('is not a committed entry')]);
  });
});

describe('verify', () => {
  it('a sound cache verifies with exit 0', async () => {
    const { code, stdout } = await run(['verify', '--root', root]);
    expect(code).toBe(0);
    expect(stdout).toContain('Verified 2 sublayers: 4 ok, 0 bad, 0 removed, 0 foreign.');
  });

  it('reports a corrupted payload with its reason and exits 1, removing nothing', async () => {
    const handle = await fsp.open(model, 'r+');
    await handle.write(Buffer.from('XX'), 0, 2, 1000);
    await handle.close();
    const { code, stdout, stderr } = await run(['verify', '--root', root]);
    expect(code).toBe(1);
    expect(stdout).toMatch(
      new RegExp(`hash-mismatch\\s+model\\.bin\\s+${model.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
    );
    expect(stderr).toContain('verify --fix');
    expect(await exists(model)).toBe(true);
  });

  it('--fix removes the corrupted entry and exits 0; the next verify is clean', async () => {
    await fsp.writeFile(model, patternBytes(2 * MiB, 99));
    const fixed = await run(['verify', '--root', root, '--fix', '--json']);
    expect(fixed.code).toBe(0);
    const report = JSON.parse(fixed.stdout);
    expect(report.ok).toBe(true);
    const models = report.sublayers.find((sublayer: { name: string }) => sublayer.name === 'models');
    expect(models.bad).toEqual([{ key: 'model.bin', path: model, reason: 'hash-mismatch', removed: true }]);
    expect(await exists(model)).toBe(false);
    expect(await exists(`${model}.manifest.json`)).toBe(false);
    expect(await exists(oldZip)).toBe(true);
    expect((await run(['verify', '--root', root])).code).toBe(0);
  });

  it('--sublayer verifies only that sublayer', async () => {
    await fsp.writeFile(model, patternBytes(2 * MiB, 99));
    const { code, stdout } = await run(['verify', '--root', root, '--sublayer', 'imf-weo']);
    expect(code).toBe(0);
    expect(stdout).not.toContain('models');
  });
});

describe('prune', () => {
  const allEntries = () => [oldZip, midZip, newZip, model];
  const allPresent = async () => (await Promise.all(allEntries().map(exists))).every(Boolean);

  it('refuses without --yes when stdin is not a terminal: exit 2, nothing removed', async () => {
    const { code, stdout, stderr } = await run(['prune', '--root', root, '--ttl', '7d'], { input: 'y\n' });
    expect(code).toBe(2);
    expect(stdout).toContain('old.zip');
    expect(lines(stderr)).toEqual([expect.stringContaining('stdin is not a terminal, pass --yes')]);
    expect(await allPresent()).toBe(true);
  });

  it('--dry-run lists what would go, orphans included, and removes nothing', async () => {
    const tmpPath = await plantTmp(root, 'imf-weo', 2 * DAY_MS);
    const { code, stdout } = await run([
      ...[
        'prune',
        '--root',
        root,
        '--sublayer',
        'imf-weo',
        '--ttl',
        '7d',
        '--max-bytes',
        '50',
        '--dry-run',
        '--json',
      ],
    ]);
    expect(code).toBe(0);
    const plan = JSON.parse(stdout);
    expect(plan.dryRun).toBe(true);
    expect(plan.remove).toEqual([
      { sublayer: 'imf-weo', key: 'old.zip', path: oldZip, sizeBytes: 1536 * 1024, reason: 'expired' },
      { sublayer: 'imf-weo', key: null, path: tmpPath, sizeBytes: 7, reason: 'orphan-tmp' },
      { sublayer: 'imf-weo', key: 'mid.zip', path: midZip, sizeBytes: 3000, reason: 'evicted' },
    ]);
    // new.zip is over --max-bytes too, but was used just now: prune would spare it.
    expect(plan.keep).toEqual([expect.objectContaining({ key: 'new.zip', reason: 'recently-used' })]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(await allPresent()).toBe(true);
    expect(await exists(tmpPath)).toBe(true);
  });

  it('--yes removes expired entries and old orphans, and keeps the rest', async () => {
    const tmpPath = await plantTmp(root, 'imf-weo', 2 * DAY_MS);
    const { code, stdout } = await run(['prune', '--root', root, '--ttl', '7d', '--yes']);
    expect(code).toBe(0);
    expect(stdout).toMatch(/imf-weo\s+old\.zip\s+expired/);
    expect(stdout).toMatch(/orphan-tmp/);
    expect(await exists(oldZip)).toBe(false);
    expect(await exists(tmpPath)).toBe(false);
    expect(await Promise.all([midZip, newZip, model].map(exists))).toEqual([true, true, true]);
  });

  it('--keep-n evicts least recently used entries in each sublayer', async () => {
    const { code, stdout } = await run(['prune', '--root', root, '--keep-n', '1', '--yes', '--json']);
    expect(code).toBe(0);
    const report = JSON.parse(stdout);
    const evicted = report.removed.filter((item: { reason: string }) => item.reason === 'evicted');
    expect(evicted.map((item: { key: string }) => item.key).sort()).toEqual(['mid.zip', 'old.zip']);
    expect(await Promise.all([oldZip, midZip, newZip, model].map(exists))).toEqual([
      false,
      false,
      true,
      true,
    ]);
  });

  it('--max-bytes evicts until the sublayer fits, sparing an entry used just now', async () => {
    const args = ['prune', '--root', root, '--sublayer', 'imf-weo', '--max-bytes', '50', '-y', '--json'];
    const { code, stdout } = await run(args);
    expect(code).toBe(0);
    expect(JSON.parse(stdout).kept).toEqual([
      { sublayer: 'imf-weo', key: 'new.zip', reason: 'recently-used' },
    ]);
    expect(await Promise.all([oldZip, midZip, newZip, model].map(exists))).toEqual([
      false,
      false,
      true,
      true,
    ]);
  });
});

describe('clear', () => {
  it('refuses without --yes when stdin is not a terminal: exit 2, nothing removed', async () => {
    const { code, stderr } = await run(['clear', 'imf-weo', '--root', root], { input: 'y\n' });
    expect(code).toBe(2);
    expect(stderr).toContain('pass --yes');
    expect(await Promise.all([oldZip, midZip, newZip].map(exists))).toEqual([true, true, true]);
  });

  it('--yes removes every entry of that sublayer and no other', async () => {
    const { code, stdout } = await run(['clear', 'imf-weo', '--root', root, '--yes']);
    expect(code).toBe(0);
    expect(stdout).toContain('Will remove:');
    expect(stdout).toContain('Cleared imf-weo: 3 files, 1.5 MiB.');
    expect(await fsp.readdir(path.join(root, 'imf-weo'))).toEqual([]);
    expect(await exists(model)).toBe(true);
  });

  it('a sublayer that does not exist is an error, exit 1', async () => {
    const { code, stderr } = await run(['clear', 'nope', '--root', root, '--yes']);
    expect(code).toBe(1);
    expect(lines(stderr)).toEqual([expect.stringContaining('no sublayer "nope"')]);
  });

  it.skipIf(!hasScript)('on a terminal it asks: "n" keeps everything (exit 1), "y" clears', async () => {
    const answer = (keys: string) => async (terminal: Terminal) => {
      await terminal.waitFor('[y/N]');
      terminal.type(keys);
    };
    const declined = await onTerminal(['clear', 'imf-weo', '--root', root], answer('n\r'));
    expect(declined.stdout).toContain('Clear sublayer "imf-weo" (3 files, 1.5 MiB)? [y/N]');
    expect(declined.code).toBe(1);
    expect(await exists(oldZip)).toBe(true);
    const accepted = await onTerminal(['clear', 'imf-weo', '--root', root], answer('y\r'));
    expect(accepted.code).toBe(0);
    expect(await exists(oldZip)).toBe(false);
  });
});

describe('fetch', () => {
  const payload = patternBytes(4 * MiB, 7);
  const fetchWithoutRetries = (urls: string[]) =>
    run(['fetch', ...urls, '--sublayer', 'dl', '--retries', '0', '--root', root]);

  it('downloads with plain progress lines, prints the path, and the entry is in the cache', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"v1"' }));
    const { code, stdout, stderr } = await run([
      'fetch',
      server.url('/files/data.bin'),
      '--sublayer',
      'dl',
      '--root',
      root,
    ]);
    expect(code).toBe(0);
    const expectedPath = path.join(root, 'dl', 'data.bin');
    expect(stdout).toBe(`${expectedPath}\n`);
    expect(sha256(await fsp.readFile(expectedPath))).toBe(sha256(payload));
    const manifest = JSON.parse(await fsp.readFile(`${expectedPath}.manifest.json`, 'utf8'));
    expect(manifest).toMatchObject({ key: 'data.bin', size_bytes: payload.length, etag: '"v1"' });
    const progress = lines(stderr).filter((line) => /^data\.bin: \d+% /.test(line));
    const percents = progress.map((line) => Number(/: (\d+)%/.exec(line)?.[1]));
    expect(percents.length).toBeGreaterThanOrEqual(3);
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
    expect(percents.at(-1)).toBe(100);
    expect(progress.at(-1)).toMatch(/100% 4\.0 MiB of 4\.0 MiB, [\d.]+ \w?i?B\/s, ETA/);
    expect(stderr).toContain('data.bin: downloaded 4.0 MiB in');
  });

  it.skipIf(!hasScript)(
    'on a terminal, progress is a cli-progress bar with percentage, sizes and ETA',
    async () => {
      const server = await startServer((req, res) => servePayload(req, res, payload, { etag: '"v1"' }));
      const result = await onTerminal(
        ['fetch', server.url('/files/data.bin'), '--sublayer', 'dl', '--root', root],
        (terminal) => terminal.waitFor('downloaded 4.0 MiB'),
      );
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(
        /data\.bin \[[\u2588\u2591]{30}\] 100% \| 4\.0 MiB of 4\.0 MiB \| .+\/s \| ETA/,
      );
      expect(result.stdout).not.toMatch(/^data\.bin: \d+% /m); // not the plain lines meant for logs
    },
  );

  it('--extract prints the directory of the extracted archive; ls lists the extraction under its entry', async () => {
    const zip = buildZip([{ name: 'weo/gdp.csv', content: 'year,gdp\n2024,1.0\n' }]);
    const server = await startServer((req, res) => servePayload(req, res, zip, { etag: '"z1"' }));
    const args = ['fetch', server.url('/files/weo.zip'), '--sublayer', 'dl', '--root', root, '--extract'];
    const first = await run(args);
    expect(first.code).toBe(0);
    const dir = first.stdout.trim();
    expect(dir).toBe(path.join(root, 'dl', `weo.zip.extracted.${sha256(zip).slice(0, 16)}`, 'content'));
    expect(await fsp.readFile(path.join(dir, 'weo', 'gdp.csv'), 'utf8')).toBe('year,gdp\n2024,1.0\n');
    expect(first.stderr).toContain('weo.zip: downloaded and extracted in');
    const second = await run(args);
    expect(second.stdout).toBe(first.stdout);
    expect(second.stderr).toContain('already cached');
    expect(server.requests).toHaveLength(1);

    const listing = await run(['ls', '--sublayer', 'dl', '--root', root]);
    expect(listing.stdout).toMatch(/^ {4}extracted \(current, 1 file\) +18 B /m);
    const json = JSON.parse((await run(['ls', '--sublayer', 'dl', '--root', root, '--json'])).stdout);
    expect(json.sublayers[0].entries[0].extractions).toEqual([
      expect.objectContaining({ path: dir, current: true, fileCount: 1, sizeBytes: 18 }),
    ]);
    expect(json.totalBytes).toBe(zip.length + 18);
    const misuse = await run(['fetch', server.url('/files/weo.zip'), '--sublayer', 'dl', '--format', 'zip']);
    expect(misuse.code).toBe(2);
    expect(misuse.stderr).toContain('--format goes with --extract');
    const linksMisuse = await run([
      'fetch',
      server.url('/files/weo.zip'),
      '--sublayer',
      'dl',
      '--allow-links',
    ]);
    expect(linksMisuse.code).toBe(2);
    expect(linksMisuse.stderr).toContain('--allow-links goes with --extract');
  });

  it('a second fetch is a hit: no request, the same path', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload));
    const args = ['fetch', server.url('/data.bin'), '--sublayer', 'dl', '--root', root];
    const first = await run(args);
    const second = await run(args);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe(first.stdout);
    expect(second.stderr).toContain('already cached');
    expect(server.requests).toHaveLength(1);
  });

  it('--key names the entry; an expired one answered 304 is renewed without a download', async () => {
    const server = await startServer((req, res) => {
      if (req.headers['if-none-match'] === '"v1"') {
        res.writeHead(304).end();
        return;
      }
      servePayload(req, res, payload, { etag: '"v1"' });
    });
    const args = [
      'fetch',
      server.url('/download?id=7'),
      '--sublayer',
      'dl',
      '--key',
      'weo.zip',
      '--root',
      root,
    ];
    const first = await run(args);
    expect(first.stdout).toBe(`${path.join(root, 'dl', 'weo.zip')}\n`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const renewed = await run([...args, '--ttl', '10ms']);
    expect(renewed.code).toBe(0);
    expect(renewed.stderr).toContain('not modified on the server, entry renewed');
    expect(server.requests).toHaveLength(2);
  });

  it('an HTTP error is one line with the status, exit 1, and nothing is cached', async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(404).end('gone');
    });
    const { code, stdout, stderr } = await run([
      'fetch',
      server.url('/files/x.bin'),
      '--sublayer',
      'dl',
      '--root',
      root,
    ]);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(lines(stderr)).toEqual([
      `payload-cache fetch: HTTP 404 from ${server.url('/files/x.bin')} [ERR_HTTP_STATUS]`,
    ]);
    expect(await exists(path.join(root, 'dl', 'x.bin'))).toBe(false);
  });

  it("several URLs: past a refused one and a 503, the third is stored under the first URL's key", async () => {
    const busy = await startServer((_req, res) => {
      res.writeHead(503).end();
    });
    const mirror = await startServer((req, res) => servePayload(req, res, payload, { etag: '"m"' }));
    const urls = [
      await closedPortUrl('/files/data.bin'),
      busy.url('/busy/other.bin'),
      mirror.url('/mirror/copy.bin'),
    ];
    const { code, stdout, stderr } = await fetchWithoutRetries(urls);
    expect(code).toBe(0);
    const expectedPath = path.join(root, 'dl', 'data.bin');
    expect(stdout).toBe(`${expectedPath}\n`);
    expect(sha256(await fsp.readFile(expectedPath))).toBe(sha256(payload));
    expect(busy.requests).toHaveLength(1);
    expect(mirror.requests.map((request) => request.url)).toEqual(['/mirror/copy.bin']);
    expect(stderr).toContain('data.bin: downloaded 4.0 MiB in');
  });

  it('when every URL fails: one line with what each answered, exit 1, nothing cached', async () => {
    const missing = await startServer((_req, res) => {
      res.writeHead(404).end();
    });
    const urls = [await closedPortUrl('/a.bin'), missing.url('/b.bin')];
    const { code, stdout, stderr } = await fetchWithoutRetries(urls);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(lines(stderr)).toEqual([
      `payload-cache fetch: all 2 URLs failed: ${urls[0]} (ECONNREFUSED), ${urls[1]} (HTTP 404) [ERR_ALL_MIRRORS_FAILED]`,
    ]);
    expect(await exists(path.join(root, 'dl', 'a.bin'))).toBe(false);
  });

  it('usage errors: no URL, and a bad one among several: exit 2', async () => {
    const none = await run(['fetch', '--sublayer', 'dl', '--root', root]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('missing <url>');
    const ftp = await run(['fetch', 'http://127.0.0.1:9/a.bin', 'ftp://127.0.0.1/a.bin', '--sublayer', 'dl']);
    expect(ftp.code).toBe(2);
    expect(ftp.stderr).toContain('only http and https');
    const help = await run(['fetch', '--help']);
    expect(help.stdout).toContain('Usage: payload-cache fetch <url> [<url>...] --sublayer S');
  });

  it('usage errors: no --sublayer, no key in the URL, not http(s): exit 2', async () => {
    const noSublayer = await run(['fetch', 'http://127.0.0.1:9/a.bin', '--root', root]);
    expect(noSublayer.code).toBe(2);
    expect(noSublayer.stderr).toContain('--sublayer is required');
    const noKey = await run(['fetch', 'http://127.0.0.1:9/dir/', '--sublayer', 'dl', '--root', root]);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain('pass --key');
    const ftp = await run(['fetch', 'ftp://127.0.0.1/a.bin', '--sublayer', 'dl', '--root', root]);
    expect(ftp.code).toBe(2);
    expect(ftp.stderr).toContain('only http and https');
  });
});

describe('sharing a cache (README: Sharing a cache)', () => {
  const payload = patternBytes(256 * 1024, 9);

  it('a site layer from PAYLOAD_CACHE_READONLY_ROOTS: fetch prints its path, no request; ls shows the LAYER', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload));
    const userRoot = await makeTempDir('payload-cache-cli-user-');
    const env = { PAYLOAD_CACHE_READONLY_ROOTS: root };
    const served = await run(
      ['fetch', server.url('/model.bin'), '--sublayer', 'models', '--root', userRoot],
      { env },
    );
    expect(served.code).toBe(0);
    expect(served.stdout).toBe(`${model}\n`);
    expect(served.stderr).toContain(`already cached in the read-only root ${root}`);
    expect(server.requests).toHaveLength(0);

    const fetched = await run(
      ['fetch', server.url('/other.bin'), '--sublayer', 'models', '--root', userRoot],
      { env },
    );
    expect(fetched.stdout).toBe(`${path.join(userRoot, 'models', 'other.bin')}\n`);
    const listing = await run(['ls', '--sublayer', 'models', '--root', userRoot], { env });
    expect(listing.code).toBe(0);
    expect(listing.stdout).toContain(`Read-only roots (PAYLOAD_CACHE_READONLY_ROOTS): ${root}`);
    expect(lines(listing.stdout).find((line) => line.includes('other.bin'))).toMatch(/ own$/);
    // endsWith, not a RegExp: a Windows root's backslashes would be read as escapes.
    expect(
      lines(listing.stdout)
        .find((line) => line.includes('model.bin'))
        ?.endsWith(` ${root}`),
    ).toBe(true);
    const json = JSON.parse((await run(['ls', '--json', '--root', userRoot], { env })).stdout);
    const entries = json.sublayers.flatMap((sublayer: { entries: unknown[] }) => sublayer.entries);
    expect(entries).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ key: 'other.bin', readOnly: false, root: userRoot }),
        expect.objectContaining({ key: 'model.bin', readOnly: true, root }),
        expect.objectContaining({ key: 'old.zip', readOnly: true, root }),
      ]),
    );
    expect(json.readOnlyRoots).toEqual([root]);
  });

  it('--offline: an expired entry is served without a request; a missing one is ERR_OFFLINE_MISS, exit 1', async () => {
    const server = await startServer((req, res) => servePayload(req, res, payload));
    const stale = await run([
      'fetch',
      server.url('/old.zip'),
      '--sublayer',
      'imf-weo',
      '--ttl',
      '1d',
      '--offline',
      '--root',
      root,
    ]);
    expect(stale.code).toBe(0);
    expect(stale.stdout).toBe(`${oldZip}\n`);
    expect(stale.stderr).toContain('offline: served the cached entry although it has expired');
    const missing = await run(['fetch', server.url('/absent.zip'), '--sublayer', 'imf-weo', '--root', root], {
      env: { PAYLOAD_CACHE_OFFLINE: '1' },
    });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('offline: no entry for key "absent.zip" in sublayer "imf-weo"');
    expect(missing.stderr).toContain('[ERR_OFFLINE_MISS]');
    expect(server.requests).toHaveLength(0);
  });

  it.skipIf(process.platform === 'win32')(
    '--shared group under umask 077: the download, its manifest and its directories are usable by the group (POSIX modes: skipped on Windows, where the option is ignored)',
    async () => {
      const server = await startServer((req, res) => servePayload(req, res, payload));
      const groupRoot = path.join(await makeTempDir('payload-cache-cli-group-'), 'cache');
      const result = await runCli(
        ['fetch', server.url('/data.bin'), '--sublayer', 'dl', '--shared', 'group', '--root', groupRoot],
        { command: ['sh', '-c', 'umask 077 && exec "$0" "$@"', process.execPath] },
      );
      expect(result.code, result.stderr).toBe(0);
      const modeOf = async (file: string) => ((await fsp.stat(file)).mode & 0o7777).toString(8);
      expect(await modeOf(groupRoot)).toBe('2775');
      expect(await modeOf(path.join(groupRoot, 'dl'))).toBe('2775');
      expect(await modeOf(path.join(groupRoot, 'dl', 'data.bin'))).toBe('664');
      expect(await modeOf(path.join(groupRoot, 'dl', 'data.bin.manifest.json'))).toBe('664');
      expect(await modeOf(path.join(groupRoot, 'CACHEDIR.TAG'))).toBe('664');
      const bad = await run(['ls', '--shared', 'world', '--root', groupRoot]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('--shared takes only "group"');
    },
  );
});

describe('argument and display helpers', () => {
  it('parses durations and sizes, and refuses bare numbers of time', () => {
    expect(parseDuration('1h30m', '--ttl')).toBe(5_400_000);
    expect(parseDuration('500ms', '--ttl')).toBe(500);
    expect(parseDuration('7d', '--ttl')).toBe(7 * DAY_MS);
    expect(parseDuration('Infinity', '--ttl')).toBe(Infinity);
    expect(() => parseDuration('7', '--ttl')).toThrow(/--ttl needs a duration/);
    expect(() => parseDuration('7d junk', '--ttl')).toThrow(/--ttl/);
    expect(parseSize('2GiB', '--max-bytes')).toBe(2 * 1024 ** 3);
    expect(parseSize('10GB', '--max-bytes')).toBe(10 * 1000 ** 3);
    expect(parseSize('1.5M', '--max-bytes')).toBe(1.5 * MiB);
    expect(parseSize('4096', '--max-bytes')).toBe(4096);
  });

  it('formats sizes in binary units and durations with two units', () => {
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(MiB - 1)).toBe('1.0 MiB');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5.0 GiB');
    expect(formatDuration(2 * DAY_MS + 3 * 3_600_000 + 60_000)).toBe('2d 3h');
    expect(formatDuration(2 * DAY_MS + 60_000)).toBe('2d');
    expect(formatDuration(45_000)).toBe('45s');
  });

  it('plain progress: a line per 10 %, per 10 MiB without a size, and a note when a download restarts', () => {
    const written: string[] = [];
    let nowMs = 0;
    const progress = new LineProgress(
      'f.bin',
      (line) => written.push(line),
      () => nowMs,
    );
    for (let received = 0; received <= 100; received += 4) {
      nowMs += 100;
      progress.update({ receivedBytes: received, totalBytes: 100 });
    }
    expect(written.map((line) => /: (\d+)%/.exec(line)?.[1])).toEqual([
      '12',
      '20',
      '32',
      '40',
      '52',
      '60',
      '72',
      '80',
      '92',
      '100',
    ]);
    expect(written.at(-1)).toBe('f.bin: 100% 100 B of 100 B, 38 B/s, ETA 0ms');
    written.length = 0;
    progress.update({ receivedBytes: 0, totalBytes: undefined });
    progress.update({ receivedBytes: 9 * MiB, totalBytes: undefined });
    progress.update({ receivedBytes: 21 * MiB, totalBytes: undefined });
    expect(written).toEqual(['f.bin: restarting from byte 0', expect.stringMatching(/^f\.bin: 21\.0 MiB, /)]);
  });
});
