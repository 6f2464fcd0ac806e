import { execFileSync, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheManager } from '../src/index.js';
import { REPO } from './cli-helpers.js';
import { makeTempDir, removeTempDirs } from './helpers.js';

// DESIGN.md principle 2, the durability half: the order of fsyncs and renames that makes a crash (power
// loss, not only a killed process) leave the old entry, the new one or a miss. No crash test can see a
// missing fsync (the page cache survives a SIGKILL), so this one watches the system calls of a real
// replace with strace: -f follows libuv's thread pool, -y names the file behind every descriptor.

const hasStrace = (() => {
  try {
    execFileSync('strace', ['-V'], { stdio: 'ignore' });
    return process.platform === 'linux';
  } catch {
    return false;
  }
})();

afterEach(removeTempDirs);

interface Call {
  name: string;
  /** The paths in its arguments, in order (strace -y prints a descriptor as `3</the/path>`). */
  paths: string[];
}

function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  for (const line of text.split('\n')) {
    const match = /^(?:\d+\s+)?(fsync|fdatasync|rename|renameat2?)\((.*)\)\s+=\s+0/.exec(line);
    if (!match) continue;
    const paths = [...(match[2] as string).matchAll(/"([^"]+)"|<([^>]+)>/g)].map(
      (m) => (m[1] ?? m[2]) as string,
    );
    calls.push({ name: match[1] as string, paths: paths.filter((p) => p.startsWith('/')) });
  }
  return calls;
}

describe.skipIf(!hasStrace)(
  'fsync order of a publish, seen with strace [skipped without strace on Linux]',
  () => {
    it('flushes payload and manifest before renaming them, retires the old manifest first, and fsyncs the directory last', async () => {
      const root = await makeTempDir('payload-cache-fsync-');
      const dir = path.join(root, 'data');
      await new CacheManager({ sublayer: 'data', root, ttl: 1 }).getOrFetch('k', () => 'version one');
      const traceFile = path.join(root, 'trace.txt');
      const script = `
      const { CacheManager } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});
      const cache = new CacheManager({ sublayer: 'data', root: ${JSON.stringify(root)}, ttl: 1 });
      await cache.getOrFetch('k', () => 'version two, longer', { refresh: true });`;
      const run = spawnSync(
        'strace',
        [
          '-f',
          '-y',
          '-qq',
          '-e',
          'trace=fsync,fdatasync,rename,renameat,renameat2',
          '-o',
          traceFile,
          process.execPath,
          '--input-type=module',
          '-e',
          script,
        ],
        { cwd: REPO, encoding: 'utf8' },
      );
      expect(run.status, run.stderr).toBe(0);
      const calls = parseTrace(await fsp.readFile(traceFile, 'utf8')).filter((call) =>
        call.paths.some((p) => p.startsWith(dir)),
      );
      const payload = path.join(dir, 'k');
      const manifest = `${payload}.manifest.json`;
      const index = (test: (call: Call) => boolean, what: string) => {
        const at = calls.findIndex(test);
        expect(at, `${what} in ${JSON.stringify(calls, null, 1)}`).toBeGreaterThanOrEqual(0);
        return at;
      };
      const isRename = (call: Call) => call.name.startsWith('rename');
      const syncOf = (file: string) => (call: Call) => !isRename(call) && call.paths[0] === file;
      const renameTo = (target: string) => (call: Call) => isRename(call) && call.paths[1] === target;
      const payloadRename = index(renameTo(payload), 'rename of the payload into place');
      const payloadTmp = calls[payloadRename]?.paths[0] as string;
      const manifestRename = index(renameTo(manifest), 'rename of the manifest into place');
      const manifestTmp = calls[manifestRename]?.paths[0] as string;
      const retire = index(
        (call) => isRename(call) && call.paths[0] === manifest,
        'the old manifest renamed aside',
      );
      const payloadSync = index(syncOf(payloadTmp), 'fsync of the payload tmp file');
      const manifestSync = index(syncOf(manifestTmp), 'fsync of the manifest tmp file');
      const dirSync = calls.findLastIndex(syncOf(dir));
      expect(payloadSync).toBeLessThan(payloadRename);
      expect(manifestSync).toBeLessThan(manifestRename);
      expect(retire).toBeLessThan(payloadRename);
      expect(payloadRename).toBeLessThan(manifestRename);
      expect(dirSync, 'fsync of the directory after the renames').toBeGreaterThan(manifestRename);
    });
  },
);
