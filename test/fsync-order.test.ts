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
  /** Where in the trace the call began and where it returned: calls of two threads overlap. */
  startedAt: number;
  endedAt: number;
}

/**
 * The successful calls of a `strace -f` trace. A call that another thread's call interrupts is printed in
 * two lines, `pid name(args <unfinished ...>` and `pid <... name resumed>...) = 0`; its paths come from the
 * first, its outcome from the second.
 */
function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const unfinished = new Map<string, { name: string; args: string; startedAt: number }>();
  const pathsOf = (args: string) =>
    [...args.matchAll(/"([^"]+)"|<([^>]+)>/g)]
      .map((m) => (m[1] ?? m[2]) as string)
      .filter((p) => p.startsWith('/'));
  for (const [at, line] of text.split('\n').entries()) {
    const begun = /^(\d+)\s+(fsync|fdatasync|rename|renameat2?)\((.*) <unfinished \.\.\.>$/.exec(line);
    if (begun) {
      const [, pid, name, args] = begun as unknown as [string, string, string, string];
      unfinished.set(pid, { name, args, startedAt: at });
      continue;
    }
    const resumed = /^(\d+)\s+<\.\.\. (fsync|fdatasync|rename|renameat2?) resumed>.*\)\s+=\s+0$/.exec(line);
    if (resumed) {
      const [, pid, name] = resumed as unknown as [string, string, string];
      const start = unfinished.get(pid);
      unfinished.delete(pid);
      if (start?.name === name) {
        calls.push({ name, paths: pathsOf(start.args), startedAt: start.startedAt, endedAt: at });
      }
      continue;
    }
    const whole = /^(?:\d+\s+)?(fsync|fdatasync|rename|renameat2?)\((.*)\)\s+=\s+0$/.exec(line);
    if (whole) {
      const [, name, args] = whole as unknown as [string, string, string];
      calls.push({ name, paths: pathsOf(args), startedAt: at, endedAt: at });
    }
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
      await cache.getOrFetch('k', () => 'version two, longer: '.repeat(200_000), { refresh: true });`;
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
      const find = (test: (call: Call) => boolean, what: string): Call => {
        const call = calls.find(test);
        expect(call, `${what} in ${JSON.stringify(calls, null, 1)}`).toBeDefined();
        return call as Call;
      };
      const isRename = (call: Call) => call.name.startsWith('rename');
      const syncOf = (file: string) => (call: Call) => !isRename(call) && call.paths[0] === file;
      const renameTo = (target: string) => (call: Call) => isRename(call) && call.paths[1] === target;
      const payloadRename = find(renameTo(payload), 'rename of the payload into place');
      const manifestRename = find(renameTo(manifest), 'rename of the manifest into place');
      const retire = find(
        (call) => isRename(call) && call.paths[0] === manifest,
        'the old manifest renamed aside',
      );
      const payloadSync = find(syncOf(payloadRename.paths[0] as string), 'fsync of the payload tmp file');
      const manifestSync = find(syncOf(manifestRename.paths[0] as string), 'fsync of the manifest tmp file');
      const dirSync = find((call) => call === calls.findLast(syncOf(dir)), 'fsync of the directory');
      // "Before" means returned before the other call began: the two tmp files are flushed concurrently.
      const returnedBefore = (first: Call, second: Call) => first.endedAt < second.startedAt;
      expect(returnedBefore(payloadSync, payloadRename), 'payload flushed before its rename').toBe(true);
      expect(returnedBefore(manifestSync, manifestRename), 'manifest flushed before its rename').toBe(true);
      expect(returnedBefore(retire, payloadRename), 'old manifest retired before the payload rename').toBe(
        true,
      );
      expect(returnedBefore(payloadSync, manifestRename), 'payload flushed before the manifest rename').toBe(
        true,
      );
      expect(returnedBefore(payloadRename, manifestRename), 'payload renamed before the manifest').toBe(true);
      expect(returnedBefore(manifestRename, dirSync), 'directory fsync after the renames').toBe(true);
    });
  },
);
